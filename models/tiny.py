"""Tiny RANDOM-WEIGHT test models in the exact layout and file formats of the real weights.

``write_tiny_models(dest)`` fills ``dest`` with randomly initialised stand-ins for every file
listed in ``models.weights`` (FACER attributes and RetinaFace, DeepFace age/race/gender onnx
graphs, Realistic Vision v5.1 as one original-format SD 1.5 safetensors file plus its diffusers
configs and CLIP tokenizer, and sd-vae-ft-mse). They exist so the whole pipeline can run end to
end on a laptop CPU in seconds, in tests and demos, without downloading gigabytes.

THESE ARE NOT USABLE MODELS: the generated images are noise and the predicted attributes, ages,
genders and races are random. Never use them to anonymize real data.

Nothing here reaches the network: every model is built from an in-code config and saved locally.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.weights import (
    DEEPFACE_WEIGHTS,
    EMOTION_MODEL,
    FACER_ATTR,
    FACER_RETINAFACE,
    RV_FOLDER,
    RV_SINGLE_FILE,
    SD15_CONFIG,
    TINY_NOTE,
    VAE_FOLDER,
    VDNA_MUGS_RANGES,
    VDNA_MUGS_WEIGHTS,
)

NOTE_FILE = TINY_NOTE
NOTE_TEXT = """\
TINY RANDOM-WEIGHT TEST MODELS (written by `veil models tiny`, models/tiny.py)

Every model in this folder has the file layout and format of the real weights but tiny,
randomly initialised parameters. Images generated with them are noise; face attributes,
ages, genders and races predicted with them are random. They exist for tests and demos
only. Never use them to anonymize real data: fetch the real weights with `veil models fetch`.
"""
FULL_SIZE_NOTE = """
Written with --full-size: FACER (FaRL ViT-B/16) and DeepFace (three VGG-Face graphs) have their
REAL architectures and parameter counts, with random weights, for timing the CPU tier only.
"""

# -- FACER -------------------------------------------------------------------------------------

#: FaRL ViT shape of the tiny attribute model (the real one: patch 16, width 768, 12 layers).
FARL_TINY = {"input_resolution": 224, "patch_size": 32, "width": 64, "layers": 2, "heads": 1}
FARL_NUM_CLASSES = 40

# -- full-size random CPU-tier models (timing the CPU tier: benchmarks/cpu_tier.py) -------------

#: facer's ``farl/celeba/224``: FaRL ViT-B/16 at 224 (width 768, 12 layers, 12 heads).
FARL_FULL = {"input_resolution": 224, "patch_size": 16, "width": 768, "layers": 12, "heads": 12}

#: The VGG-Face trunk deepface builds its age, gender and race models on
#: (deepface/models/facial_recognition/pytorch/VGGFace.py ``VggFaceBaseModel(include_top=False)``):
#: 3x3 convolutions per block, each block closed by a 2x2 max-pool, then fc6 (a 7x7 convolution to
#: 4096) and fc7 (1x1, 4096), then the model's own 1x1 convolution to its classes and a softmax
#: (``VggFaceClassifier``). The onnx graphs take channels-last input, as the tensorflow models did.
VGG_FACE_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_FACE_FC = 4096

# -- DeepFace ----------------------------------------------------------------------------------

#: onnx file name -> number of softmax outputs (see deepface/models/demography/onnx/*.py).
DEEPFACE_GRAPHS = {
    "age_model_weights.onnx": 101,
    "race_model_single_batch.onnx": 6,
    "gender_model_weights.onnx": 2,
}
DEEPFACE_INPUT_SIZE = 224
ONNX_OPSET = 17

# -- veil eval: HSEmotion (Table II) and Visual DNA's Mugs ViT (Table III) ---------------------

#: hsemotion-onnx's enet_b0_8_va_mtl: NCHW float input named "input" at 224 px, 10 outputs
#: (8 emotion logits, valence, arousal)
EMOTION_INPUT_SIZE = 224
EMOTION_OUTPUTS = 10
#: the tiny Mugs ViT (the real one, ``models.mugs.MUGS_BASE``: ViT-B/16, width 768, 12 layers)
MUGS_TINY = {"embed_dim": 64, "depth": 2, "patch_size": 16}

# -- Stable Diffusion 1.5 ----------------------------------------------------------------------

#: ``sd15-config/scheduler/scheduler_config.json`` of stable-diffusion-v1-5 (PNDM), key for key:
#: no ``timestep_spacing`` and no ``prediction_type``, so the samplers see the same config in
#: tests as with the real file (``build_sampler`` sets the spacing explicitly).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

#: SD 1.5's UNet shape, shrunk; no attention at the full latent resolution, so that a
#: 512x512 generation takes seconds on a CPU.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}

#: SD 1.5's VAE shape, shrunk: 4 blocks, so the latent is 8x smaller than the image, and no
#: attention in the mid block (SD's has one; at 64x64 latents it would triple the decode time).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "mid_block_add_attention": False,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
}

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
#: words the tiny BPE has merges for (any other text still tokenizes, byte by byte)
TOKENIZER_WORDS = ("a", "photo", "of", "the", "face", "person", "portrait", "man", "woman", "high", "quality")

# LDM (CompVis) key prefixes of a single-file SD 1.x checkpoint.
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."


# ==============================================================================================
# public entry point
# ==============================================================================================


def write_tiny_models(
    dest: Path, *, diffusers_folder: bool = False, seed: int = 0, full_size: bool = False
) -> list[Path]:
    """Write every tiny random model under ``dest`` and return the files written.

    With ``full_size`` the CPU tier's models are written at their REAL sizes, still with random
    weights: FACER's FaRL ViT-B/16 (``FARL_FULL``) and DeepFace's three VGG-Face graphs
    (``VGG_FACE_BLOCKS``, ~135M parameters and ~540 MB each), so the CPU tier can be timed
    (``benchmarks/cpu_tier.py``); ~2.0 GB on disk. The generator stays tiny (the GPU tier's
    full-size timing builds its models in memory: ``benchmarks/gpu_throughput.py``).

    After it runs ``models.weights.missing_files(dest)`` is empty. With ``diffusers_folder`` the
    generator is also written as a diffusers folder (``realistic-vision-v5.1/model_index.json``
    and subfolders, the same weights as the single file), which loaders then prefer.
    Each model is seeded from ``seed`` and its own name, so the same ``seed`` gives the same
    files; the caller's torch RNG state is left as it was.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = [write_facer_attribute(dest, seed, full_size=full_size), write_retinaface(dest, seed)]
    written += write_deepface(dest, seed, full_size=full_size)
    written += write_sd15(dest, build_tiny_sd15(seed), diffusers_folder=diffusers_folder)
    written.append(write_emotion_model(dest, seed))
    extra = ""
    try:  # Visual DNA's network is the vdna package's class (veil[eval])
        written += write_mugs_vit(dest, seed)
    except ImportError:
        extra = "\nNo Visual DNA network written: the vdna package (veil[eval]) is not installed.\n"
    note = dest / NOTE_FILE
    note.write_text(NOTE_TEXT + (FULL_SIZE_NOTE if full_size else "") + extra)
    return [*written, note]


@contextmanager
def _seeded(seed: int, name: str) -> Iterator[None]:
    """Seed torch from ``seed`` and ``name`` for the model built inside, restoring the caller's
    RNG state afterwards (so models do not depend on which others were built before)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        yield


def _save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone().contiguous() for k, v in state_dict.items()}, path)
    return path


# ==============================================================================================
# FACER
# ==============================================================================================


def build_tiny_farl_classifier(seed: int = 0, *, full_size: bool = False) -> nn.Module:
    """FaRL ``farl_classification`` with a tiny ViT (``full_size``: ViT-B/16, the real shape),
    built like facer builds it minus ``.cuda()``.

    Same parameter names as facer's ``FACTransformer``: ``backbone.*`` (a VisualTransformer
    without ``proj`` and ``ln_post``) and ``head.*`` (VITClassificationHeadV0 over one layer).
    """
    from models.farl import FarlShape, build_farl_classifier

    shape = FarlShape(num_classes=FARL_NUM_CLASSES, **(FARL_FULL if full_size else FARL_TINY))
    with _seeded(seed, "facer-attribute"):
        return build_farl_classifier(shape)


def write_facer_attribute(dest: Path, seed: int = 0, *, full_size: bool = False) -> Path:
    """``facer/face_attribute.farl.celeba.pt``: a plain ``torch.save``d state dict."""
    model = build_tiny_farl_classifier(seed, full_size=full_size)
    return _save_state_dict(model.state_dict(), dest / FACER_ATTR)


def write_retinaface(dest: Path, seed: int = 0) -> Path:
    """``facer/mobilenet0.25_Final.pth``: RetinaFace mobilenet0.25 (real size, random weights).

    Keys carry the ``module.`` prefix of the original DataParallel-trained file; facer's
    ``load_model`` strips it.
    """
    from facer.face_detection.retinaface import RetinaFace, cfg_mnet

    with _seeded(seed, "retinaface"):
        net = RetinaFace(cfg=cfg_mnet, phase="test")
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    return _save_state_dict(state, dest / FACER_RETINAFACE)


# ==============================================================================================
# DeepFace
# ==============================================================================================


def write_deepface(dest: Path, seed: int = 0, *, full_size: bool = False) -> list[Path]:
    """DeepFace's onnx demography graphs: (n,224,224,3) float32 in, (n,k) softmax out;
    ``full_size``: the real VGG-Face classifiers (``write_vgg_face_graph``)."""
    folder = dest / DEEPFACE_WEIGHTS
    folder.mkdir(parents=True, exist_ok=True)
    write = write_vgg_face_graph if full_size else _write_demography_graph
    written = []
    for name, classes in DEEPFACE_GRAPHS.items():
        with _seeded(seed, name):
            written.append(write(folder / name, classes))
    return written


def vgg_face_parameter_count(num_classes: int) -> int:
    """Parameters of deepface's ``VggFaceClassifier(num_classes)``: 134,674,341 for age's 101."""
    count, channels = 0, 3
    for block in VGG_FACE_BLOCKS:
        for width in block:
            count += channels * width * 9 + width
            channels = width
    count += channels * 7 * 7 * VGG_FACE_FC + VGG_FACE_FC  # fc6
    count += VGG_FACE_FC * VGG_FACE_FC + VGG_FACE_FC  # fc7
    return count + VGG_FACE_FC * num_classes + num_classes


def write_vgg_face_graph(path: Path, num_classes: int) -> Path:
    """deepface's ``VggFaceClassifier`` as an onnx graph with random (He-normal) weights: the
    real architecture and parameter count, channels-last (n,224,224,3) input, dynamic batch.

    Built with ``onnx.helper`` (no exporter); one ~540 MB file, as the real ones are.
    """
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    initializers = []
    layer = 0

    def conv(x: str, c_in: int, c_out: int, k: int, pad: int, relu: bool) -> str:
        nonlocal layer
        layer += 1
        w, b, y = f"conv{layer}.weight", f"conv{layer}.bias", f"conv{layer}"
        std = (2.0 / (c_in * k * k)) ** 0.5
        initializers.append(numpy_helper.from_array((torch.randn(c_out, c_in, k, k) * std).numpy(), w))
        initializers.append(numpy_helper.from_array((torch.randn(c_out) * 0.01).numpy(), b))
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], pads=[pad] * 4))
        if not relu:
            return y
        nodes.append(helper.make_node("Relu", [y], [f"{y}.relu"]))
        return f"{y}.relu"

    x, channels = "x0", 3
    for i, block in enumerate(VGG_FACE_BLOCKS):
        for width in block:
            x, channels = conv(x, channels, width, 3, 1, relu=True), width
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{i + 1}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{i + 1}"
    x = conv(x, channels, VGG_FACE_FC, 7, 0, relu=True)  # fc6
    x = conv(x, VGG_FACE_FC, VGG_FACE_FC, 1, 0, relu=True)  # fc7
    x = conv(x, VGG_FACE_FC, num_classes, 1, 0, relu=False)  # the model's predictions
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    nodes.append(helper.make_node("Softmax", ["flat"], ["output"], axis=-1))
    size = DEEPFACE_INPUT_SIZE
    return _save_onnx_graph(
        path, f"full_size_random_{path.stem}", nodes, initializers, [size, size, 3], num_classes,
        "FULL-SIZE RANDOM-WEIGHT TEST MODEL (VGG-Face classifier): outputs are random.", check=False,
    )  # fmt: skip


def _write_demography_graph(path: Path, num_classes: int, pool: int = 56) -> Path:
    """A tiny onnx graph: channels-last image -> means over a 4x4 grid -> linear -> softmax.

    Built with ``onnx.helper`` directly (no torch exporter), with a dynamic batch axis.
    """
    from onnx import helper, numpy_helper

    cells = (DEEPFACE_INPUT_SIZE // pool) ** 2 * 3
    weight = (torch.randn(cells, num_classes) * 0.5).numpy().astype(np.float32)
    bias = (torch.randn(num_classes) * 0.1).numpy().astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
    ]
    size = DEEPFACE_INPUT_SIZE
    initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    return _save_onnx_graph(
        path, f"tiny_random_{path.stem}", nodes, initializers, [size, size, 3], num_classes,
        "TINY RANDOM-WEIGHT TEST MODEL: outputs are random.",
    )  # fmt: skip


def _save_onnx_graph(
    path: Path,
    name: str,
    nodes: list,
    initializers: list,
    input_shape: list[int],
    n_outputs: int,
    doc: str,
    *,
    check: bool = True,
) -> Path:
    """Saves ``nodes`` as a float32 onnx model with one ``input`` (a dynamic batch of
    ``input_shape``) and one ``output`` (batch, ``n_outputs``), at the opset the loaders expect."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n_outputs])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=8)
    model.doc_string = doc
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ==============================================================================================
# veil eval: HSEmotion and Visual DNA
# ==============================================================================================


def write_emotion_model(dest: Path, seed: int = 0, pool: int = 56) -> Path:
    """``hsemotion/enet_b0_8_va_mtl.onnx``: a tiny onnx graph with the real file's interface
    (NCHW float32 ``input`` at 224 px, dynamic batch; ``output`` (n, 10): 8 emotion logits, then
    valence and arousal): means over a 4x4 grid -> linear."""
    from onnx import helper, numpy_helper

    path = dest / EMOTION_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = (EMOTION_INPUT_SIZE // pool) ** 2 * 3
    with _seeded(seed, "hsemotion"):
        weight = (torch.randn(cells, EMOTION_OUTPUTS) * 2.0).numpy().astype(np.float32)
        bias = (torch.randn(EMOTION_OUTPUTS) * 0.1).numpy().astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight", "bias"], ["output"]),
    ]
    size = EMOTION_INPUT_SIZE
    initializers = [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    return _save_onnx_graph(
        path, "tiny_random_enet_b0_8_va_mtl", nodes, initializers, [3, size, size], EMOTION_OUTPUTS,
        "TINY RANDOM-WEIGHT TEST MODEL: emotions and valence-arousal are random.",
    )  # fmt: skip


def write_mugs_vit(dest: Path, seed: int = 0, *, full_size: bool = False) -> list[Path]:
    """Visual DNA's network as the vdna package's files: ``vdna/mugs_vit_base/weights.pth``
    (``{"state_dict": ...}`` of the Mugs ViT, random; ``full_size``: the real ViT-B/16 shape,
    ~345 MB) and ``activation_ranges.json`` (``{"mins_per_neuron"|"maxs_per_neuron": {layer:
    {neuron: value}}}``, measured here on two random images)."""
    from models.mugs import MUGS_BASE, MugsShape, build_mugs_vit

    with _seeded(seed, "mugs-vit"):
        net = build_mugs_vit(MugsShape(**(MUGS_BASE if full_size else MUGS_TINY))).eval()
        images = torch.rand(2, 3, 224, 224) * 4 - 2  # about the span of ImageNet-normalised pixels
    weights = dest / VDNA_MUGS_WEIGHTS
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}}, weights)
    with torch.inference_mode():
        layers = net(images)  # every block's tokens, then the final norm's: (n, tokens, width)
    names = [f"block_{i}" for i in range(len(layers) - 1)] + ["last_norm"]
    ranges: dict[str, dict[str, dict[str, float]]] = {"mins_per_neuron": {}, "maxs_per_neuron": {}}
    for name, x in zip(names, layers, strict=True):
        flat = x.reshape(-1, x.shape[-1])
        ranges["mins_per_neuron"][name] = {str(i): float(v) for i, v in enumerate(flat.min(0).values)}
        ranges["maxs_per_neuron"][name] = {str(i): float(v) for i, v in enumerate(flat.max(0).values)}
    path = dest / VDNA_MUGS_RANGES
    path.write_text(json.dumps(ranges))
    return [weights, path]


# ==============================================================================================
# Stable Diffusion 1.5: tokenizer
# ==============================================================================================


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def tiny_bpe(words: tuple[str, ...] = TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
    """A small CLIP-style byte-level BPE vocabulary and its merges.

    Vocabulary order follows CLIP's: the 256 byte symbols, the same with ``</w>``, the merged
    tokens, then ``<|startoftext|>`` and ``<|endoftext|>`` (so end-of-text has the highest id).
    Merges join each word left to right, e.g. ``p h``, ``ph o``, ..., ``phot o</w>``.
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merge = f"{left} {right}"
            left += right
            if merge not in merges:
                merges.append(merge)
                tokens.append(left)
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*tokens, BOS_TOKEN, EOS_TOKEN]))}
    return vocab, merges


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[str]) -> list[Path]:
    """CLIPTokenizer files laid out as in stable-diffusion-v1-5/tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    special = {"content": "", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    bos, eos = {**special, "content": BOS_TOKEN}, {**special, "content": EOS_TOKEN}
    tokenizer_config = {
        "add_prefix_space": False,
        "bos_token": bos,
        "do_lower_case": True,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": EOS_TOKEN,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": eos,
    }
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(
            {"bos_token": bos, "eos_token": eos, "pad_token": EOS_TOKEN, "unk_token": eos}, indent=2
        ),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]


# ==============================================================================================
# Stable Diffusion 1.5: models
# ==============================================================================================


@dataclass
class TinySD15:
    """The tiny generator in memory: what the single file and the folders are written from."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL, the one inside the single file
    text_encoder: Any  # transformers.CLIPTextModel
    ft_mse_vae: Any  # diffusers.AutoencoderKL, a different init, written to sd-vae-ft-mse/
    vocab: dict[str, int]
    merges: list[str]


def build_tiny_sd15(seed: int = 0) -> TinySD15:
    """Build the tiny UNet, VAEs and text encoder; the same ``seed`` gives the same weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vocab, merges = tiny_bpe()
    with _seeded(seed, "unet"):
        unet = _fp16_exact(UNet2DConditionModel(**UNET_CONFIG))
    with _seeded(seed, "vae"):
        vae = _fp16_exact(AutoencoderKL(**VAE_CONFIG))
    with _seeded(seed, "text_encoder"):
        text_encoder = _fp16_exact(_tiny_text_encoder(vocab))
    with _seeded(seed, "sd-vae-ft-mse"):
        ft_mse_vae = _fp16_exact(AutoencoderKL(**VAE_CONFIG))
    return TinySD15(unet, vae, text_encoder, ft_mse_vae, vocab, merges)


def _fp16_exact(model: Any) -> Any:
    """Round every parameter to a float16-representable value (kept in float32), so the
    fp16 single file and the fp32 folders hold exactly the same numbers."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model.eval()


def _tiny_text_encoder(vocab: dict[str, int]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        **TEXT_ENCODER_CONFIG,
    )
    return CLIPTextModel(config)


def write_sd15(dest: Path, models: TinySD15, *, diffusers_folder: bool) -> list[Path]:
    """The generator: ``sd15-config/``, the single file, ``sd-vae-ft-mse/`` and, optionally,
    the diffusers folder ``realistic-vision-v5.1/``."""
    config_dir = dest / SD15_CONFIG
    write_tokenizer(config_dir / "tokenizer", models.vocab, models.merges)
    _write_json(config_dir / "model_index.json", _model_index())
    _write_json(config_dir / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    models.unet.save_config(config_dir / "unet")
    models.vae.save_config(config_dir / "vae")
    models.text_encoder.config.save_pretrained(config_dir / "text_encoder")

    single = save_single_file(dest / RV_SINGLE_FILE, unet=models.unet, vae=models.vae, text_encoder=models.text_encoder)
    models.ft_mse_vae.save_pretrained(dest / VAE_FOLDER, safe_serialization=True)

    written = [*_files(config_dir), single, *_files(dest / VAE_FOLDER)]
    if diffusers_folder:
        written += write_diffusers_folder(dest / RV_FOLDER, config_dir / "tokenizer", models)
    return written


def _model_index() -> dict[str, Any]:
    """stable-diffusion-v1-5's model_index.json without its safety checker."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def write_diffusers_folder(folder: Path, tokenizer_dir: Path, models: TinySD15) -> list[Path]:
    """The same generator as a diffusers folder (``save_pretrained``), beside the single file."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True),
        unet=models.unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)  # type: ignore[attr-defined]
    # save_pretrained writes every PNDM default (timestep_spacing "leading", ...); keep the real file's keys
    _write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    return [p for p in _files(folder) if p.name != Path(RV_SINGLE_FILE).name]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _files(folder: Path) -> list[Path]:
    """The files under ``folder``, less hidden ones (such as a loader's sha256 cache)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# ==============================================================================================
# Stable Diffusion 1.5: diffusers -> original (LDM/CompVis) single file
# ==============================================================================================


def save_single_file(path: Path, *, unet: Any, vae: Any, text_encoder: Any) -> Path:
    """Write UNet + VAE + CLIP text encoder as one original-format fp16 safetensors file,
    as diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` does."""
    from safetensors.torch import save_file

    state = {
        **_prefixed(LDM_UNET_PREFIX, unet_to_ldm(unet.state_dict(), unet.config)),
        **_prefixed(LDM_VAE_PREFIX, vae_to_ldm(vae.state_dict(), vae.config)),
        **_prefixed(LDM_TEXT_PREFIX, text_encoder_to_ldm(text_encoder.state_dict())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    return path


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _rename_all(state: dict[str, torch.Tensor], rename: Callable[[str], str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = rename(key)
        if new in out:
            raise ValueError(f"two keys map to {new!r}")
        out[new] = value
    return out


_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _unet_resnet(rest: str) -> str:
    layer, _, param = rest.partition(".")
    return f"{_RESNET_TO_LDM[layer]}.{param}"


def unet_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DConditionModel keys -> LDM ``openaimodel.UNetModel`` keys, for any
    number of blocks and ``layers_per_block`` (inverse of diffusers' ``convert_ldm_unet_checkpoint``)."""
    per_down = config["layers_per_block"] + 1  # resnets (+ attentions) + a downsampler
    per_up = config["layers_per_block"] + 1  # resnets (+ attentions), the last one + upsampler
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]

    def rename(key: str) -> str:
        head, _, param = key.rpartition(".")
        if head in _UNET_FIXED:
            return f"{_UNET_FIXED[head]}.{param}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"input_blocks.{1 + i * per_down + j}.0.{_unet_resnet(rest)}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"input_blocks.{1 + i * per_down + j}.1.{rest}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            return f"input_blocks.{(int(m[1]) + 1) * per_down}.0.op.{m[2]}"
        if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{m[1]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"output_blocks.{i * per_up + j}.0.{_unet_resnet(rest)}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            return f"output_blocks.{i * per_up + j}.1.{rest}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            i = int(m[1])
            slot = 2 if up_has_attention[i] else 1
            return f"output_blocks.{i * per_up + per_up - 1}.{slot}.conv.{m[2]}"
        raise ValueError(f"no LDM name for UNet key {key!r}")

    return _rename_all(state, rename)


_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL keys -> LDM ``AutoencoderKL`` keys (attention projections
    become 1x1 convolutions, as in the original checkpoints)."""
    num_up = len(config["up_block_types"])

    def rename(key: str) -> str:
        if m := re.fullmatch(r"(encoder|decoder)\.(conv_norm_out)\.(.+)", key):
            return f"{m[1]}.{_VAE_FIXED[m[2]]}.{m[3]}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            return f"encoder.down.{m[1]}.downsample.{m[2]}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.{m[2]}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
        return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names

    out = _rename_all(state, rename)
    for key, value in out.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            out[key] = value[:, :, None, None]  # linear -> 1x1 conv
    return out


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys -> keys under ``cond_stage_model.transformer.`` (the HF CLIP layout
    with its ``text_model.`` prefix, which transformers >= 5.6 no longer has in memory)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
