"""The FULL-SIZE random CPU-tier models (``veil models tiny --full-size``, issue 10 item 7) have the
real architectures: FaRL ViT-B/16 as facer builds it, and the DeepFace graph
computes exactly what deepface's own pytorch ``VggFaceClassifier`` computes with the same weights,
loaded through Veil's DeepFace loading code. One graph (gender) is written at full size (~540 MB);
age and race share its trunk and differ only in the last layer's width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import tiny as tm
from models.farl import FarlShape, infer_farl_shape
from models.weights import DEEPFACE_WEIGHTS, FACER_ATTR

CPU = torch.device("cpu")


def test_full_size_facer_is_farl_vit_b16() -> None:
    """facer's celeba/224 network; the loader infers this shape from the file's state dict
    (``load_facer_attribute_model``, tested on the tiny file, which takes the same path)."""
    state = tm.build_tiny_farl_classifier(full_size=True).state_dict()
    assert infer_farl_shape(state) == FarlShape(224, 16, 768, 12, 12, 40)
    assert sum(v.numel() for v in state.values()) == 85_833_259


def test_full_size_deepface_graph_is_deepfaces_vgg_classifier(tmp_path: Path) -> None:
    import onnx
    from deepface.models.demography.pytorch.TorchDemography import VggFaceClassifier
    from onnx import numpy_helper

    from workers.cpu.attributes import AttributeModels

    # 1. Tiny FACER and DeepFace, then the gender graph at full size in its place
    tm.write_facer_attribute(tmp_path)
    tm.write_deepface(tmp_path)
    path = tmp_path / DEEPFACE_WEIGHTS / "gender_model_weights.onnx"
    with tm._seeded(0, "gender-full"):
        tm.write_vgg_face_graph(path, 2)
    assert (tmp_path / FACER_ATTR).is_file()
    # 2. deepface's own network (built without initialising it), given the graph's weights in its layer order
    weights = [numpy_helper.to_array(t).copy() for t in onnx.load(str(path)).graph.initializer]
    with torch.device("meta"):
        net = VggFaceClassifier(2).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(weights) == 2 * len(convs)
    assert sum(w.size for w in weights) == tm.vgg_face_parameter_count(2)
    for i, conv in enumerate(convs):
        assert weights[2 * i].shape == conv.weight.shape and weights[2 * i + 1].shape == conv.bias.shape
        conv.weight = torch.nn.Parameter(torch.from_numpy(weights[2 * i]), requires_grad=False)
        conv.bias = torch.nn.Parameter(torch.from_numpy(weights[2 * i + 1]), requires_grad=False)
    # 3. The graph through Veil's loader (deepface's onnx client) against deepface's torch network
    attributes = AttributeModels.load(tmp_path, CPU, onnx_threads=1)
    batch = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    got = attributes.demography.clients["gender"].predict(batch)
    with torch.inference_mode():
        want = net(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert not np.allclose(got[0], got[1])  # two inputs, two answers: the weights are not degenerate


@pytest.mark.parametrize("threads", [None, 1])
def test_onnx_threads_keep_deepfaces_client(tmp_path: Path, threads: int | None) -> None:
    """With ``onnx_threads`` the clients are deepface's classes with sessions of that many threads."""
    from deepface.models.demography.onnx import Age

    from workers.cpu.attributes import DeepFaceDemography

    tm.write_deepface(tmp_path)
    demography = DeepFaceDemography(tmp_path, threads)
    age = demography.clients["age"]
    assert isinstance(age, Age.ApparentAgeClient)
    if threads is not None:
        assert age.model.get_session_options().intra_op_num_threads == threads
    assert np.asarray(age.predict(np.zeros((224, 224, 3), np.float32))).shape == ()


def test_cli_models_tiny_full_size_flag() -> None:
    from orchestrator.cli import build_parser, cmd_models_tiny

    args = build_parser().parse_args(["models", "tiny", "/tmp/x", "--full-size"])
    assert args.func is cmd_models_tiny and args.full_size is True
    assert build_parser().parse_args(["models", "tiny", "/tmp/x"]).full_size is False


def test_cpu_worker_models_use_veil_cpu_threads(tmp_path: Path) -> None:
    """``veil worker cpu`` runs one pool process per core: each one's torch and onnxruntime use
    VEIL_CPU_THREADS threads (BENCHMARKS.md: 2.7x the throughput of one process using every core)."""
    from shared.settings import Settings
    from workers.cpu.stage import CpuModels

    tm.write_tiny_models(tmp_path)
    before = torch.get_num_threads()
    try:
        cpu = CpuModels.for_worker(Settings.from_env({}, models_dir=tmp_path, cpu_threads=1), CPU)
        assert torch.get_num_threads() == 1
        assert cpu.attributes is not None
        for client in cpu.attributes.demography.clients.values():
            assert client.model.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)
