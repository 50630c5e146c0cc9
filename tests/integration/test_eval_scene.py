"""`veil eval` on scene-mode outputs (issue 14 item 4): the output keeps its input's geometry, so
the probe is the face found where the row's face was (faces matched by box), not whichever face
is biggest in the output. Real MTCNN and dlib weights on ../shared/faces/couple.jpg."""

from __future__ import annotations

import json

import numpy as np
import torch

from orchestrator.evaluation.data import read_pairs
from orchestrator.evaluation.faces import FaceReader
from shared.imageio import decode_image
from shared.settings import EmbedderName, Settings
from workers.cpu.detection import detect_downscaled


def test_a_scene_probe_is_the_face_at_the_rows_box(faces_dir, tmp_path):
    settings = Settings.from_env({}, models_dir=tmp_path / "none", device="cpu")
    reader = FaceReader(settings, [EmbedderName.DLIB], attributes=False, device=torch.device("cpu"))
    photo = faces_dir / "couple.jpg"
    rgb = decode_image(photo.read_bytes(), max_pixels=settings.max_image_pixels)
    boxes = detect_downscaled(reader.detector, rgb, settings.detect_max_side, settings.min_face_size).boxes
    assert len(boxes) >= 2
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    small = boxes[int(np.argmin(areas))]
    biggest = reader.read(photo)
    matched = reader.read(photo, match_box=[float(v) for v in small[:4]])
    assert biggest.found and matched.found
    # another face than the biggest, and the one at that box (dlib: same person < 0.1, others > 0.1)
    embedder = reader.embedders["dlib"]
    at_small = embedder.embed(rgb, small)
    assert embedder.distance(matched.embeddings["dlib"], at_small) < 0.02
    assert embedder.distance(matched.embeddings["dlib"], biggest.embeddings["dlib"]) > 0.05
    # a box where no face is: not found (counted in no_face_rate), never another face
    h, w = rgb.shape[:2]
    assert not reader.read(photo, match_box=[0.0, 0.0, w * 0.05, h * 0.05]).found


def test_scene_rows_carry_their_box_into_the_pairs(faces_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    rows = [
        {"input": str(faces_dir / "couple.jpg"), "output": str(out / "couple.jpg"), "status": "done",
         "mode": "scene", "face_box": [10.0, 20.0, 110.0, 140.0, 0.99]},
        {"input": str(faces_dir / "fr_biden.jpg"), "output": str(out / "fr_biden.jpg"), "status": "done",
         "face_box": [1.0, 2.0, 3.0, 4.0, 0.9]},
    ]  # fmt: skip
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, _ = read_pairs(faces_dir, out, {"couple.jpg": "a", "fr_biden.jpg": "b"})
    by_file = {p.file: p for p in pairs}
    assert by_file["couple.jpg"].match_box == (10.0, 20.0, 110.0, 140.0)
    assert by_file["fr_biden.jpg"].match_box is None  # a portrait: a new image, its face is detected
