"""Face embedders: each loads through its real code path (dlib with its real weights; FaceNet
and CLIP from random weights written in the real formats), gives unit vectors, and a missing
file names the command that fetches it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.weights import CLIP_FOLDER, FACENET_CASIA, FACENET_VGGFACE2, Component, missing_files, required_files
from shared.errors import MissingWeightsError
from shared.settings import EmbedderName
from workers.embedders import EMBEDDERS, load_embedder


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (200, 180, 3), dtype=np.uint8)


BOX = [40.0, 50.0, 140.0, 170.0, 0.99]


def _check(embedder, dim: int) -> None:
    rgb = _image()
    a, again = embedder.embed(rgb, BOX), embedder.embed(rgb, BOX)
    b = embedder.embed(_image(1), BOX)
    assert a.shape == (dim,) and a.dtype == np.float32 and embedder.dim == dim
    assert abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert np.allclose(a, again)  # deterministic
    assert embedder.distance(a, a) == pytest.approx(0, abs=1e-6)
    assert embedder.distance(a, b) == pytest.approx(embedder.distance(b, a))
    assert 0 < embedder.distance(a, b) <= 2
    assert len(embedder.sha256) == 64


def test_every_embedder_has_a_loader():
    assert set(EMBEDDERS) == set(EmbedderName)
    assert [e.value for e in EmbedderName] == ["dlib", "facenet-vggface2", "facenet-casia", "clip-face", "clip-image"]
    assert EmbedderName("clip") is EmbedderName.CLIP_FACE  # the face-crop one's earlier name


def test_dlib_with_its_real_weights(tmp_path):
    _check(load_embedder("dlib", tmp_path), 128)


def test_facenet_loads_a_state_dict_with_its_classifier(tmp_path):
    """One random state dict (as released: with the training classifier's ``logits``) under both
    names; the CASIA one is exercised in full, the VGGFace2 path only for its file (~20 s each)."""
    from facenet_pytorch import InceptionResnetV1

    from workers.embedders import FaceNetEmbedder

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=True, num_classes=7)
    (tmp_path / FACENET_CASIA).parent.mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / FACENET_CASIA)
    embedder = load_embedder("facenet-casia", tmp_path)
    assert isinstance(embedder, FaceNetEmbedder) and embedder.name == "facenet-casia"
    _check(embedder, 512)
    with pytest.raises(MissingWeightsError, match=FACENET_VGGFACE2):
        load_embedder("facenet-vggface2", tmp_path)


def test_clip_loads_a_transformers_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16
        ),
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(tmp_path / CLIP_FOLDER)
    face, image = load_embedder("clip-face", tmp_path), load_embedder("clip-image", tmp_path)
    _check(face, 24)
    _check(image, 24)
    assert (face.name, face.whole_image, image.name, image.whole_image) == ("clip-face", False, "clip-image", True)
    # the image-level one ignores the box: the whole image is its input; the face one sees the crop
    rgb = _image()
    assert np.allclose(image.embed(rgb, BOX), image.embed(rgb, [0, 0, 10, 10]))
    assert not np.allclose(face.embed(rgb, BOX), face.embed(rgb, [0, 0, 10, 10]))


@pytest.mark.parametrize("name", ["facenet-vggface2", "facenet-casia", "clip-face", "clip-image"])
def test_missing_weights_name_the_fetch_command(tmp_path, name):
    with pytest.raises(MissingWeightsError, match="veil models fetch --eval"):
        load_embedder(name, tmp_path)


def test_eval_weights_are_never_required_by_veil_run(tmp_path):
    assert not any(wf.component in (Component.EMBEDDER, Component.QUALITY) for wf in required_files(tmp_path))
    assert not any("facenet" in str(p) or "clip" in str(p) for p in missing_files(tmp_path))
