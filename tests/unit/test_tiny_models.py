"""The tiny random test models (models/tiny.py) and the real loaders that read them
(workers/gpu/loading.py, models/farl.py). No network: every outgoing
connection attempt made while this module runs is recorded and fails the module."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import tiny as tm
from shared.errors import MissingWeightsError
from models.weights import (
    DEEPFACE_HOME,
    FACER_ATTR,
    FACER_RETINAFACE,
    RV_FOLDER,
    RV_SINGLE_FILE,
    SD15_CONFIG,
    SD15_CONFIG_FILES,
    VAE_FOLDER,
    missing_files,
)

CPU = torch.device("cpu")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[list[Any]]:
    """HF_HUB_OFFLINE=1 and every internet socket connection refused (and recorded, so a
    library that swallows the error still fails the test run)."""
    attempts: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(real: Any) -> Any:
        def connect(self: socket.socket, address: Any) -> Any:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                attempts.append(address)
                raise OSError(f"network access in a test: {address}")
            return real(self, address)

        return connect

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[:2])
        raise socket.gaierror(f"DNS lookup in a test: {args[:2]}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", guard(real_connect))
        mp.setattr(socket.socket, "connect_ex", guard(real_connect_ex))
        mp.setattr(socket, "getaddrinfo", no_dns)
        yield attempts
    assert attempts == [], f"tests tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models with the generator as the original-format single file only."""
    dest = tmp_path_factory.mktemp("tiny-single")
    start = time.perf_counter()
    tm.write_tiny_models(dest)
    print(f"\nwrite_tiny_models: {time.perf_counter() - start:.2f}s")
    return dest


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models with the diffusers folder as well."""
    dest = tmp_path_factory.mktemp("tiny-folder")
    tm.write_tiny_models(dest, diffusers_folder=True)
    return dest


@pytest.fixture(scope="module")
def reference() -> tm.TinySD15:
    """The in-memory models the files were written from (seed 0)."""
    return tm.build_tiny_sd15(seed=0)


def assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    got, want = actual.state_dict(), expected.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert not got[key].is_meta, key
        assert torch.equal(got[key].float().cpu(), value.float()), key


# -- the files ---------------------------------------------------------------------------------


def test_writes_every_required_file(single_dir: Path, folder_dir: Path) -> None:
    assert missing_files(single_dir) == []
    assert missing_files(folder_dir) == []
    assert (folder_dir / RV_FOLDER / "model_index.json").is_file()
    assert not (single_dir / RV_FOLDER / "model_index.json").exists()
    for name in SD15_CONFIG_FILES:
        assert (single_dir / SD15_CONFIG / name).is_file(), name
    assert (single_dir / FACER_RETINAFACE).is_file()


def test_files_are_small_and_labelled(single_dir: Path, folder_dir: Path) -> None:
    total = sum(p.stat().st_size for p in folder_dir.rglob("*") if p.is_file())
    assert total < 20 * 2**20, total
    note = (single_dir / tm.NOTE_FILE).read_text()
    assert "RANDOM" in note and "noise" in note
    assert "RANDOM" in (tm.__doc__ or "") and "noise" in (tm.__doc__ or "")


def test_returns_the_files_it_wrote(tmp_path: Path) -> None:
    written = tm.write_tiny_models(tmp_path, diffusers_folder=True)
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert set(written) == on_disk
    assert len(written) == len(set(written))


def test_same_seed_same_files_and_caller_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    tm.write_tiny_models(tmp_path / "a", seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    tm.write_tiny_models(tmp_path / "b", seed=0)
    tm.write_tiny_models(tmp_path / "c", seed=1)
    read = lambda d: (d / RV_SINGLE_FILE).read_bytes()  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert read(tmp_path / "a") != read(tmp_path / "c")


def test_tokenizer_is_clip_style(single_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(single_dir / SD15_CONFIG / "tokenizer"), local_files_only=True)
    assert tok.model_max_length == 77
    assert tok.pad_token == tm.EOS_TOKEN
    ids = tok("A photo of a Face!", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.convert_tokens_to_ids(tm.BOS_TOKEN)
    assert tok.convert_ids_to_tokens(ids[1:5]) == ["a</w>", "photo</w>", "of</w>", "a</w>"]
    assert max(ids) < len(tok)


# -- the single file ---------------------------------------------------------------------------


def test_single_file_is_original_fp16_format(single_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(single_dir / RV_SINGLE_FILE), "pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    prefixes = (tm.LDM_UNET_PREFIX, tm.LDM_VAE_PREFIX, tm.LDM_TEXT_PREFIX)
    assert all(k.startswith(prefixes) for k in keys)
    assert dtypes == {torch.float16}
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",  # downsampler of block 0
        "model.diffusion_model.input_blocks.3.1.proj_in.weight",  # attention of block 1
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",  # upsampler after an attention
        "model.diffusion_model.out.2.bias",
        "first_stage_model.encoder.down.0.block.0.conv1.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.decoder.mid.block_2.norm1.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in keys, key


def test_single_file_round_trips(single_dir: Path, reference: tm.TinySD15) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(single_dir / RV_SINGLE_FILE), config=str(single_dir / SD15_CONFIG), local_files_only=True
    )
    assert_same_weights(pipe.unet, reference.unet)
    assert_same_weights(pipe.vae, reference.vae)
    assert_same_weights(pipe.text_encoder, reference.text_encoder)
    assert pipe.safety_checker is None


def test_vae_conversion_with_mid_attention_round_trips() -> None:
    """SD's real VAE has a mid-block attention (the tiny one does not): convert one that has,
    and read it back with diffusers' own LDM converter."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = AutoencoderKL(**{**tm.VAE_CONFIG, "mid_block_add_attention": True})
    ldm = tm._prefixed(tm.LDM_VAE_PREFIX, tm.vae_to_ldm(vae.state_dict(), vae.config))
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    back = convert_ldm_vae_checkpoint(ldm, vae.config)
    assert set(back) == set(vae.state_dict())
    for key, value in vae.state_dict().items():
        assert torch.equal(back[key], value), key


def test_diffusers_folder_holds_the_same_weights(folder_dir: Path, reference: tm.TinySD15) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder_dir / RV_FOLDER), local_files_only=True)
    assert_same_weights(pipe.unet, reference.unet)
    assert_same_weights(pipe.vae, reference.vae)
    assert_same_weights(pipe.text_encoder, reference.text_encoder)


# -- workers.gpu.loading ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "folder"])
def test_load_sd_components(layout: str, single_dir: Path, folder_dir: Path, reference: tm.TinySD15) -> None:
    from workers.gpu.loading import load_sd_components

    models_dir = single_dir if layout == "single" else folder_dir
    parts = load_sd_components(models_dir, CPU, torch.float32)
    assert_same_weights(parts.unet, reference.unet)
    assert_same_weights(parts.text_encoder, reference.text_encoder)
    assert_same_weights(parts.vae, reference.ft_mse_vae)  # sd-vae-ft-mse, not the embedded VAE
    for module in (parts.unet, parts.vae, parts.text_encoder):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear"
    assert parts.tokenizer.model_max_length == 77
    assert set(parts.model_sha256) >= {RV_FOLDER, VAE_FOLDER}
    assert all(len(sha) == 64 for sha in parts.model_sha256.values())


def test_load_sd_components_casts_to_dtype(single_dir: Path) -> None:
    from workers.gpu.loading import load_sd_components

    parts = load_sd_components(single_dir, CPU, torch.float16)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.float16}


def test_hub_is_offline_while_loading_and_restored_after() -> None:
    import huggingface_hub.constants as hub_constants

    from workers.gpu.loading import hub_offline

    before = hub_constants.HF_HUB_OFFLINE
    with hub_offline():
        assert hub_constants.is_offline_mode()
        assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert hub_constants.HF_HUB_OFFLINE == before


def test_tiny_generation_512(single_dir: Path) -> None:
    from diffusers import DPMSolverSDEScheduler, StableDiffusionPipeline

    from workers.gpu.loading import load_sd_components

    parts = load_sd_components(single_dir, CPU, torch.float32)
    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=DPMSolverSDEScheduler.from_config(parts.scheduler_config, use_karras_sigmas=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    out = pipe(
        ["a photo of a face"] * 2,
        num_inference_steps=2,
        guidance_scale=7.0,
        height=512,
        width=512,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    print(f"\ntiny 512x512 generation, batch 2, 2 steps: {time.perf_counter() - start:.2f}s")
    images = out.images
    assert images.shape == (2, 512, 512, 3)
    assert np.isfinite(images).all()
    assert images.std() > 0


# -- missing weights ----------------------------------------------------------------------------


def test_missing_file_raises_and_names_it(single_dir: Path, tmp_path: Path) -> None:
    from workers.gpu.loading import load_sd_components

    models_dir = tmp_path / "models"
    shutil.copytree(single_dir, models_dir)
    gone = models_dir / VAE_FOLDER / "diffusion_pytorch_model.safetensors"
    gone.unlink()
    with pytest.raises(MissingWeightsError) as err:
        load_sd_components(models_dir, CPU, torch.float32)
    assert err.value.missing == [str(gone)]
    assert err.value.models_dir == str(models_dir)
    assert str(gone) in str(err.value)


def test_incomplete_diffusers_folder_raises(folder_dir: Path, tmp_path: Path) -> None:
    from workers.gpu.loading import load_sd_components

    models_dir = tmp_path / "models"
    shutil.copytree(folder_dir, models_dir)
    shutil.rmtree(models_dir / RV_FOLDER / "unet")
    with pytest.raises(MissingWeightsError) as err:
        load_sd_components(models_dir, CPU, torch.float32)
    assert err.value.missing == [str(models_dir / RV_FOLDER / "unet")]


# -- FACER ---------------------------------------------------------------------------------------


def test_facer_attribute_model(single_dir: Path) -> None:
    from models.farl import load_facer_attribute_model

    model = load_facer_attribute_model(single_dir / FACER_ATTR, CPU)
    assert not model.training
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.rand(1, 3, 224, 224)))
    assert probs.shape == (1, tm.FARL_NUM_CLASSES)
    assert ((probs >= 0) & (probs <= 1)).all()


def test_facer_state_dict_has_the_real_key_names(single_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build facer's own full-size network (its ``.cuda()`` made a no-op) and check the tiny
    state dict uses its parameter names, and the loader infers the real shape from it."""
    from facer.farl.classification import farl_classification

    from models.farl import FarlShape, infer_farl_shape

    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    real = farl_classification(num_classes=40, layers=[11]).state_dict()
    tiny = torch.load(single_dir / FACER_ATTR, weights_only=True)
    kept_layers = (".resblocks.0.", ".resblocks.1.")
    real_keys = {k for k in real if ".resblocks." not in k or any(s in k for s in kept_layers)}
    assert set(tiny) == real_keys
    assert infer_farl_shape(real) == FarlShape(224, 16, 768, 12, 12, 40)
    assert infer_farl_shape(real).feature_layers == [11]


def test_retinaface_weights_load_in_facer(single_dir: Path) -> None:
    from facer.face_detection.retinaface import RetinaFace, cfg_mnet, load_net

    raw = torch.load(single_dir / FACER_RETINAFACE, weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    expected = RetinaFace(cfg=cfg_mnet, phase="test").state_dict()
    assert {k.removeprefix("module.") for k in raw} == set(expected)
    net = load_net(str(single_dir / FACER_RETINAFACE), "mobilenet")
    with torch.no_grad():
        loc, conf, landmarks = net(torch.rand(1, 3, 64, 64))
    assert loc.shape[-1] == 4 and conf.shape[-1] == 2 and landmarks.shape[-1] == 10


# -- DeepFace ------------------------------------------------------------------------------------


@pytest.fixture
def deepface_onnx(single_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """deepface's model builder on the onnx backend, reading the tiny graphs."""
    from deepface.commons import backend_utils
    from deepface.modules import modeling

    monkeypatch.setenv("DEEPFACE_HOME", str(single_dir / DEEPFACE_HOME))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "onnx")
    monkeypatch.setattr(backend_utils, "_backend_engine", None)  # deepface caches its choice
    fresh = {task: {} for task in modeling.AVAILABLE_MODELS}
    monkeypatch.setattr(modeling, "cached_models", fresh, raising=False)
    return modeling


@pytest.mark.parametrize(("name", "classes"), [("Race", 6), ("Gender", 2)])
def test_deepface_demography_graphs(deepface_onnx: Any, name: str, classes: int) -> None:
    model = deepface_onnx.build_model(task="facial_attribute", model_name=name)
    one = model.predict(np.zeros((224, 224, 3), np.float32))
    assert one.shape == (classes,)
    assert one.sum() == pytest.approx(1.0, abs=1e-5)
    batch = model.predict(np.random.default_rng(0).random((3, 224, 224, 3), dtype=np.float32))
    assert batch.shape == (3, classes)


def test_deepface_age_graph(deepface_onnx: Any) -> None:
    model = deepface_onnx.build_model(task="facial_attribute", model_name="Age")
    age = model.predict(np.zeros((224, 224, 3), np.float32))
    assert 0.0 <= float(age) <= 100.0
    ages = model.predict(np.random.default_rng(0).random((3, 224, 224, 3), dtype=np.float32))
    assert ages.shape == (3,)
