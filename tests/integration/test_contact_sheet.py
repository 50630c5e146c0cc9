"""The demo's contact sheet (issue 25): real `veil run --method blur|mask` runs (the real MTCNN
detector) over two real photos and a no-face picture, the sheet written from their manifests, and
headless Chromium loading it with every image found."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from orchestrator.contact_sheet import main as sheet_main
from tests.services import ROOT, worker_env


def test_sheet_of_real_runs_opens_in_chromium_with_no_broken_image(faces_dir, tmp_path):
    originals = tmp_path / "demo" / "originals"
    originals.mkdir(parents=True)
    for name in ("fr_biden.jpg", "id02_12.jpg"):
        shutil.copy(faces_dir / name, originals / name)
    sky = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(sky).save(originals / "no_face.png")
    env = worker_env()
    for method in ("blur", "mask"):
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(originals),
                               str(tmp_path / "demo" / method), "--method", method, "--device", "cpu", "-q"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    sheet = tmp_path / "demo" / "index.html"
    assert sheet_main([str(sheet), f"blur={tmp_path / 'demo' / 'blur'}", f"mask={tmp_path / 'demo' / 'mask'}",
                       "--note", "a note"]) == 0
    text = sheet.read_text()
    assert text.count("<tr>") == 1 + 3 and "<th>original</th><th>blur</th><th>mask</th>" in text
    assert text.count("<div class=no_face>no_face: no face found") == 2 and "a note" in text and str(tmp_path) not in text  # relative links

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: scripts/install.sh installs it (apt-get install chromium)"
    check = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;"
             "document.body.setAttribute('data-check', `images=${imgs.length} broken=${broken}`); });</script>")
    page = sheet.with_name("check.html")  # beside the sheet: the same relative links
    page.write_text(text.replace("</body>", check + "</body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--allow-file-access-from-files", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert 'data-check="images=' in dom.stdout, dom.stderr[-2000:]
    # 3 originals + 2 faces x 2 methods; the no-face picture has no output
    assert 'data-check="images=7 broken=0"' in dom.stdout, dom.stdout[-500:]


def test_refuses_a_run_without_a_manifest(tmp_path, capsys):
    assert sheet_main([str(tmp_path / "s.html"), f"blur={tmp_path}"]) == 2
    assert "expected LABEL=RUN_DIR with a manifest.jsonl" in capsys.readouterr().err
