"""Issue 23: tiny files that decode to gigabytes are judged from their header, before decoding,
by VEIL_MAX_DECODED_PIXELS, on the path that decodes in full (a classical method) too.

The hostile set is made here: a lossless WebP of 10900x10900 (38 bytes) and a 16-bit PNG of
9400x9400 (0.8 MB), with one real photo beside them. ``veil run --method blur`` runs as a child
process; its peak RSS (its own VmHWM at the end) must stay under 1.5 GB. Measured the same way on
the 2-core build machine (load ~13, shared): 3,743 MB before issue 23 (both bombs decoded in
full), 832 MB after, 826 MB for the real photo alone (the process's floor: torch, MTCNN)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.services import ROOT, worker_env

pytestmark = pytest.mark.slow

PEAK_RSS_BOUND_MB = 1536


def test_decompression_bombs_stay_within_the_rss_bound(faces_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (10900, 10900), (128, 128, 128)).save(src / "bomb.webp", lossless=True, quality=0, method=0)
    Image.new("I;16", (9400, 9400)).save(src / "bomb16.png", compress_level=1)
    (src / "face.jpg").write_bytes((faces_dir / "id02_12.jpg").read_bytes())
    assert (src / "bomb.webp").stat().st_size < 100
    # veil run's own process reports its peak: VmHWM counts only since exec (ru_maxrss would
    # carry the forking parent's size across fork and exec; see test_hostile_inputs.py)
    script = ("import sys; from orchestrator.cli import main; rc = main(sys.argv[1:]); print(next(int(line.split()[1])"
              " for line in open('/proc/self/status') if line.startswith('VmHWM'))); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", script, "run", str(src), str(out), "--method", "blur", "--quiet"],
                         env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    peak_mb = int(run.stdout.strip().splitlines()[-1]) / 1024
    print(f"veil run --method blur on the hostile set: peak RSS {peak_mb:.0f} MB")
    assert run.returncode == 1, run.stderr  # 1: some keys failed
    rows = {json.loads(line)["input"].rsplit("/", 1)[-1]: json.loads(line) for line in open(out / "manifest.jsonl")}
    assert rows["face.jpg"]["status"] == "done"
    for name in ("bomb.webp", "bomb16.png"):
        assert rows[name]["status"] == "failed" and rows[name]["reason"].startswith("too_large"), rows[name]
        assert "VEIL_MAX_DECODED_PIXELS" in rows[name]["reason"]
    assert peak_mb < PEAK_RSS_BOUND_MB, f"veil run peaked at {peak_mb:.0f} MB"
