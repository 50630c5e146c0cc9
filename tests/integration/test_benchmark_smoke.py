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
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["kind"] for r in rows[:1]] == ["naive"]
    generated = {(r["scheduler"], r["batch"]) for r in rows if r["kind"] == "generate"}
    assert generated == {(s, b) for s in ("faithful", "fast") for b in (1, 2)}
    stage = [r for r in rows if r["kind"] == "stage"]
    assert len(stage) == 1 and stage[0]["generate_s"] > 0 and stage[0]["encode_s"] > 0
    assert all(r["images_s"] > 0 and r["util"] > 0 for r in rows)
    # where the time goes: the parts are measured, and the profile names real operators
    parts = report["info"]["breakdown"]
    assert parts["unet_s"] > 0 and parts["vae_s"] > 0 and parts["unet_evals"] == 3
    assert "aten::" in out.with_suffix(".profile.txt").read_text()
