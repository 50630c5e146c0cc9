"""Issue 25 item 5: a classical method covers every face the detector finds, by default, in
``veil run`` (the command, in this process) with the real MTCNN on real photos; ``--faces biggest``
keeps the earlier behaviour. Each row lists the faces it changed with their boxes, inside the
image, and the summary line counts faces per image. ``--method mask`` because its pixels are
unmistakable: each listed box is black in the written image."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main

#: faces MTCNN finds with the default settings: 2, 4 (of 7 a person counts) and 1
PHOTOS = {"couple.jpg": 2, "selfie-many-people.jpg": 4, "id07_25.jpg": 1}


def _veil_run(capsys, monkeypatch, src, out, *flags: str) -> tuple[str, dict[str, dict]]:
    for name in list(os.environ):
        if name.startswith("VEIL_") and name != "VEIL_FACES_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("VEIL_MODELS_DIR", str(out.parent / "no-models"))  # a classical method needs none
    code = main(["run", str(src), str(out), "--method", "mask", "--device", "cpu", "-q", *flags])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = {
        r["input"].rsplit("/", 1)[-1]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }
    return printed, rows


@pytest.fixture(scope="module")
def photos(faces_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("in")
    for name in PHOTOS:
        shutil.copy(faces_dir / name, src / name)
    return src


def test_every_face_is_masked_and_listed_by_default(photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    printed, rows = _veil_run(capsys, monkeypatch, photos, out)
    for name, at_least in PHOTOS.items():
        row = rows[name]
        assert row["status"] == "done" and row["method"] == "mask", row
        faces = row["faces"]
        assert len(faces) >= at_least, (name, faces)
        after = np.asarray(Image.open(out / name).convert("RGB"))
        h, w = after.shape[:2]
        areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in faces]
        assert areas == sorted(areas, reverse=True) and row["face_box"] == faces[0]["box"]  # biggest first
        for f in faces:
            x1, y1, x2, y2 = f["box"][:4]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (name, f["box"])  # clamped to the image
            assert f["guard"] is None
            inner = after[int(y1) + 2 : int(y2) - 2, int(x1) + 2 : int(x2) - 2]
            assert inner.max() <= 8, (name, f["box"])  # masked (JPEG noise), as the row says
    # the summary line: faces changed, and how many images had how many
    per_image = sorted(len(r["faces"]) for r in rows.values())
    total = sum(per_image)
    assert f"faces: {total} changed in {len(rows)} images (" in printed, printed
    for n in set(per_image):
        k = per_image.count(n)
        assert re.search(rf"\b{n} faces?: {k} images?\b", printed), printed


def test_faces_biggest_masks_the_biggest_face_only(photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    printed, rows = _veil_run(capsys, monkeypatch, photos, out, "--faces", "biggest")
    everyone = _veil_run(capsys, monkeypatch, photos, tmp_path / "all")[1]
    for name in PHOTOS:
        (face,) = rows[name]["faces"]
        assert face["box"] == everyone[name]["faces"][0]["box"]  # the biggest of all
        after = np.asarray(Image.open(out / name).convert("RGB"))
        for other in everyone[name]["faces"][1:]:  # the others are untouched: not black
            x1, y1, x2, y2 = (int(v) for v in other["box"][:4])
            assert after[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].mean() > 30, (name, other["box"])
    assert f"faces: {len(PHOTOS)} changed in {len(PHOTOS)} images (1 face: {len(PHOTOS)} images)" in printed
