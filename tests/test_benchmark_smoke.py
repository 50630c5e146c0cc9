"""The GPU benchmark's --tiny mode runs end to end on the CPU (a smoke test, not a timing)."""

import json
import subprocess
import sys

from tests.services import ROOT


def test_gpu_throughput_tiny_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_throughput.py", "--tiny", "--steps", "2",
                           "--batch-sizes", "1,2", "--variants", "eager", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| naive diffusers, batch 1 |" in proc.stdout and "TINY random models" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {(r["scheduler"], r["batch"]) for r in rows[1:]} == {(s, b) for s in ("faithful", "fast") for b in (1, 2)}
    assert all(r["images_s"] > 0 and r["util"] > 0 for r in rows)
