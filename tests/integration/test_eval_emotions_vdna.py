"""Emotions / valence-arousal (HSEmotion) and Visual DNA (vdna, Mugs ViT-B/16) on real photos,
through random-weight models written in the real files' formats, checked against the packages'
own code paths with the same files: hsemotion-onnx's ``HSEmotionRecognizer`` and vdna's
``MugsViTFeatExtractor`` + ``VDNAHist`` + ``EMD`` (their hub/GitHub downloads pointed at the local
files). Random weights give numbers that mean nothing; what is tested is that ours are the
packages'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from models.tiny import write_emotion_model, write_mugs_vit
from models.weights import EMOTION_MODEL, VDNA_MUGS_RANGES, VDNA_MUGS_WEIGHTS
from orchestrator.evaluation.emotions import EMOTIONS, EmotionModel
from orchestrator.evaluation.visual_dna import MugsVisualDna, Tally, emd

PHOTOS = ["id01_5.jpg", "id02_12.jpg", "id03_16.jpg"]


def _rgb(faces_dir, name: str) -> np.ndarray:
    return np.asarray(Image.open(faces_dir / name).convert("RGB"))


def test_emotions_equal_hsemotion_onnx_own_recognizer_on_real_faces(faces_dir, tmp_path, monkeypatch):
    from hsemotion_onnx import facial_emotions

    from shared.settings import DetectorName
    from workers.cpu.detection import biggest_face, build_detector, detect_downscaled

    write_emotion_model(tmp_path)
    ours = EmotionModel.load(tmp_path)
    assert ours is not None
    # the package's own recognizer, its download pointed at the same file
    monkeypatch.setattr(facial_emotions, "get_model_path", lambda name: str(tmp_path / EMOTION_MODEL))
    theirs = facial_emotions.HSEmotionRecognizer("enet_b0_8_va_mtl")
    assert theirs.idx_to_class == dict(enumerate(EMOTIONS)) and theirs.is_mtl and theirs.img_size == 224
    detector = build_detector(DetectorName.MTCNN, torch.device("cpu"), tmp_path, 20)
    for name in PHOTOS:
        rgb = _rgb(faces_dir, name)
        found = detect_downscaled(detector, rgb, 1024, 20)
        box = found.boxes[biggest_face(found)]
        reading = ours.read(rgb, box)
        assert reading is not None and reading.shape == (10,)
        assert reading[:8].sum() == pytest.approx(1.0, abs=1e-5) and (reading[:8] >= 0).all()
        x1, y1, x2, y2 = (int(v) for v in box[:4])
        _, scores = theirs.predict_emotions(rgb[max(0, y1) : y2, max(0, x1) : x2], logits=False)
        assert np.allclose(reading, scores, atol=1e-6)
    assert ours.read(rgb, [10, 10, 10, 50]) is None  # an empty box


@pytest.fixture(scope="module")
def full_size_mugs(tmp_path_factory):
    """Visual DNA's Mugs ViT-B/16 at its real shape (random weights), as the package's files."""
    models = tmp_path_factory.mktemp("vdna-models")
    write_mugs_vit(models, full_size=True)
    return models


def test_the_random_mugs_file_loads_into_the_packages_own_vit_base(full_size_mugs):
    from vdna.networks.mugs_vit import vit_base

    net = vit_base(num_relation_blocks=1)
    state = torch.load(full_size_mugs / VDNA_MUGS_WEIGHTS, weights_only=True)["state_dict"]
    net.load_state_dict(state, strict=True)  # as MugsViTFeatExtractor("base") loads the real file
    assert sum(p.numel() for p in net.parameters()) > 85_000_000


def test_visual_dna_equals_the_vdna_packages_own_on_real_photos(full_size_mugs, faces_dir, monkeypatch):
    import vdna
    from vdna.networks import mugs_vit
    from vdna.utils.settings import DataSettings, ExtractionSettings
    from vdna.vdnas.vdna_hist import VDNAHist

    originals = [_rgb(faces_dir, name) for name in PHOTOS[:2]]  # ViT-B/16 on 2 cores: a few s an image
    blurred = [np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(6))) for x in originals]
    ours = MugsVisualDna.load(full_size_mugs)
    assert ours is not None
    tally, same = Tally(), Tally()
    for a, b in zip(originals, blurred, strict=True):
        ha, hb = ours.histograms(a), ours.histograms(b)
        assert ha.shape == (13 * 768, 1000) and set(ha.sum(1).tolist()) == {197}  # every token, every neuron
        tally.add(ha, hb)
        same.add(ha, ha)
    assert same.result()["vdna_dataset"] == 0.0 and same.result()["vdna_image"] == 0.0
    result = tally.result()
    assert result["vdna_image"] > 0 and result["vdna_dataset"] > 0
    # the package's own pipeline on the same files: MugsViTFeatExtractor (its hub download pointed
    # at them), make_vdna's "histogram-1000", EMD over every neuron
    files = {
        "Mugs/mugs_vit_base/weights.pth": VDNA_MUGS_WEIGHTS,
        "Mugs/mugs_vit_base/activation_ranges.json": VDNA_MUGS_RANGES,
    }
    monkeypatch.setattr(mugs_vit, "hf_hub_download", lambda repo_id, filename: str(full_size_mugs / files[filename]))
    settings = ExtractionSettings(device="cpu", num_workers=0, verbose=False, batch_size=len(originals))
    extractor = mugs_vit.MugsViTFeatExtractor("base", extraction_settings=settings).eval()
    extractor.name = "mugs_vit_base"
    dnas = []
    for images in (originals, blurred):
        dna = VDNAHist(1000)
        dna.fill_vdna(extractor, DataSettings(source=images, shuffle_files=False))
        dnas.append(dna)
    reference = float(vdna.EMD(dnas[0], dnas[1]))
    assert result["vdna_dataset"] == pytest.approx(reference, rel=1e-3)
    # image level: one image each side (the first pair)
    one = []
    for image in (originals[0], blurred[0]):
        dna = VDNAHist(1000)
        dna.fill_vdna(extractor, DataSettings(source=[image], shuffle_files=False))
        one.append(dna)
    assert tally.per_pair[0] == pytest.approx(float(vdna.EMD(one[0], one[1])), rel=1e-3)
    assert emd(ours.histograms(originals[0]), ours.histograms(originals[0])) == 0.0
