"""The re-identification guard with real dlib weights on real photos (issue 14 item 3): a classical
method too weak to hide the person (issue 13's blur at sigma 0.02 of the box width) is caught by
the guard, every face is reported with its distance and masked."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import torch

from shared.imageio import decode_image
from shared.settings import GuardName, Settings
from workers.cpu.classical import blur, mask
from workers.cpu.detection import MTCNNDetector, detect_downscaled
from workers.guard import DEFAULT_THRESHOLD, guard_classical, load_guard

PHOTOS = ["fr_biden.jpg", "id01_5.jpg", "couple.jpg"]


def test_weak_blur_is_caught_reported_and_masked(faces_dir):
    settings = Settings.from_env({"VEIL_MODE": "scene", "VEIL_GUARD": "dlib"})
    guard = load_guard(settings, GuardName.DLIB, torch.device("cpu"))
    assert guard is not None and guard.threshold == DEFAULT_THRESHOLD[GuardName.DLIB]
    detector = MTCNNDetector(torch.device("cpu"), 20)
    caught = 0
    for name in PHOTOS:
        rgb = decode_image((faces_dir / name).read_bytes(), max_pixels=120_000_000)
        boxes = [list(map(float, b)) for b in detect_downscaled(detector, rgb, 1024, 20).boxes]
        assert boxes, name
        out, results = guard_classical(rgb, boxes, partial(blur, sigma=0.02), guard, mask)
        assert len(results) == len(boxes)
        for box, r in zip(boxes, results, strict=True):
            assert r.embedder == "dlib" and r.tries == 1 and len(r.distances) == 1
            if r.fallback == "mask":
                caught += 1
                assert not r.passed and r.distances[0] < guard.threshold
                x1, y1, x2, y2 = (int(v) for v in box[:4])
                assert out[max(y1, 0) + 1 : y2 - 1, max(x1, 0) + 1 : x2 - 1].max() == 0  # masked, as the row says
        assert not np.array_equal(out, rgb)
    assert caught >= len(PHOTOS)  # every photo's person at least: weak blur still re-identifies


def test_veil_run_with_a_weak_blur_and_the_guard_reports_and_masks(faces_dir, tmp_path):
    """The same through `veil run --method blur --guard dlib` (the function the CLI and the CPU
    task call), plus the group photo of issue 25: each row lists every face (not only the
    biggest) with the guard's distance, a face the weak blur left re-identifiable is masked in the
    written image, as its row says, and the summary line counts the faces judged and masked."""
    from orchestrator.embedded import run
    from shared.storage import open_storage

    listing = tmp_path / "in.txt"
    listing.write_text("".join(f"{faces_dir / p}\n" for p in [*PHOTOS, "selfie-many-people.jpg"]))
    settings = Settings.from_env(  # portrait mode: the classical methods cover every face in any mode
        {}, method="blur", blur_sigma=0.02, guard="dlib", models_dir=tmp_path / "none", device="cpu"
    )
    summary = run(str(listing), str(tmp_path / "out"), settings, open_storage(settings), progress=False)
    assert summary.ok, summary.text()
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len(PHOTOS) + 1 and all(r["status"] == "done" for r in rows)
    assert len(rows[-1]["faces"]) >= 4  # the group photo: every face MTCNN finds, each judged
    masked, judged = 0, sum(len(r["faces"]) for r in rows)
    for row in rows:
        assert row["method"] == "blur" and row["faces"], row
        out = decode_image(open(row["output"], "rb").read(), max_pixels=120_000_000)
        for face in row["faces"]:
            g = face["guard"]
            assert g["embedder"] == "dlib" and g["tries"] == 1 and len(g["distances"]) == 1
            if g["fallback"] == "mask":
                masked += 1
                assert not g["passed"] and g["distances"][0] < g["threshold"]
                x1, y1, x2, y2 = (int(v) for v in face["box"][:4])
                assert out[max(y1, 0) + 2 : y2 - 2, max(x1, 0) + 2 : x2 - 2].max() <= 8  # masked (JPEG noise)
        assert any(k.startswith("guard-dlib") for k in row["model_sha256"])
    assert masked >= len(PHOTOS)  # every photo's person at least
    in_images = sum(any(f["guard"]["fallback"] for f in r["faces"]) for r in rows)
    assert f"guard: {judged} faces judged, {masked} still re-identified and masked (in {in_images} image" in (
        summary.text()
    )
