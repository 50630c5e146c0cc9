"""The weight files the method needs: where each is looked for under ``VEIL_MODELS_DIR``,
where it is fetched from, and the sha256 of what was used (recorded in every manifest row).

Layout under the models folder (``veil models tiny`` writes the same layout)::

    facer/face_attribute.farl.celeba.pt                     FACER farl/celeba/224 (state dict)
    facer/mobilenet0.25_Final.pth                           FACER RetinaFace (optional detector)
    deepface/.deepface/weights/age_model_weights.onnx       DeepFace age  (onnx backend)
    deepface/.deepface/weights/race_model_single_batch.onnx DeepFace race
    deepface/.deepface/weights/gender_model_weights.onnx    DeepFace gender
    realistic-vision-v5.1/Realistic_Vision_V5.1_fp16-no-ema.safetensors   single-file SD 1.5
    sd15-config/...                                         diffusers configs + CLIP tokenizer
    sd-vae-ft-mse/{config.json,diffusion_pytorch_model.safetensors}

`veil eval`'s (``veil models fetch --eval``; FaceNet, CLIP and the FID Inception as below, and)::

    hsemotion/enet_b0_8_va_mtl.onnx                         HSEmotion: 8 emotions + valence, arousal
    vdna/mugs_vit_base/{weights.pth,activation_ranges.json} Visual DNA's Mugs ViT-B/16 and its ranges

A diffusers folder ``realistic-vision-v5.1/model_index.json`` (+ unet/, text_encoder/,
tokenizer/, scheduler/) is used instead of the single file when it is present.
MTCNN's weights ship inside the ``facenet-pytorch`` wheel.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import IncompleteCheckpointError

HF = "https://huggingface.co"
SD15_REPO = f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main"
RV_REPO = f"{HF}/SG161222/Realistic_Vision_V5.1_noVAE/resolve/main"
VAE_REPO = f"{HF}/stabilityai/sd-vae-ft-mse/resolve/main"
DEEPFACE_REPO = f"{HF}/serengil/deepface/resolve/main"
DEEPFACE_RELEASE = "https://github.com/serengil/deepface_models/releases/download/v1.0"

FACER_ATTR = "facer/face_attribute.farl.celeba.pt"
FACER_RETINAFACE = "facer/mobilenet0.25_Final.pth"
DEEPFACE_HOME = "deepface"
DEEPFACE_WEIGHTS = "deepface/.deepface/weights"
RV_SINGLE_FILE = "realistic-vision-v5.1/Realistic_Vision_V5.1_fp16-no-ema.safetensors"
RV_FOLDER = "realistic-vision-v5.1"
SD15_CONFIG = "sd15-config"
VAE_FOLDER = "sd-vae-ft-mse"


class Component(str, enum.Enum):
    ATTRIBUTES = "attributes"  # FACER
    DEMOGRAPHY = "demography"  # DeepFace
    GENERATOR = "generator"  # Realistic Vision v5.1 + VAE
    RETINAFACE = "retinaface"  # optional detector
    EMBEDDER = "embedder"  # `veil eval`: face embedders
    QUALITY = "quality"  # `veil eval`: Inception for FID/KID
    EMOTIONS = "emotions"  # `veil eval`: HSEmotion (emotions + valence-arousal, Table II)
    VDNA = "vdna"  # `veil eval`: Visual DNA's Mugs ViT-B/16 (Table III)


# -- `veil eval`'s weights, fetched by `veil models fetch --eval` -------------------------------
#: components only `veil eval` uses: never required by `veil run`, fetched with --eval
EVAL_COMPONENTS = frozenset({Component.EMBEDDER, Component.QUALITY, Component.EMOTIONS, Component.VDNA})
EVAL_FETCH_HINT = "veil models fetch --eval"
FACENET_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9"
FACENET_VGGFACE2 = "facenet/20180402-114759-vggface2.pt"
FACENET_CASIA = "facenet/20180408-102900-casia-webface.pt"
CLIP_FOLDER = "clip-vit-base-patch32"
CLIP_REPO = f"{HF}/openai/clip-vit-base-patch32/resolve/main"
#: the FID Inception v3 (TF-ported, 2015-12-05) that pytorch-fid and torch-fidelity use
FID_INCEPTION = "fid/pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)

#: HSEmotion's EfficientNet-B0 (AffectNet): 8 emotion logits, then valence and arousal, as the
#: ONNX file hsemotion-onnx downloads (this URL is the one its ``get_model_path`` builds)
EMOTION_MODEL = "hsemotion/enet_b0_8_va_mtl.onnx"
EMOTION_URL = (
    "https://github.com/HSE-asavchenko/face-emotion-recognition/blob/main/models/affectnet_emotions/onnx/"
    "enet_b0_8_va_mtl.onnx?raw=true"
)
#: Visual DNA's Mugs ViT-B/16 and its per-neuron activation ranges, as the vdna package's
#: ``MugsViTFeatExtractor("base")`` downloads them from its Hugging Face repository
VDNA_REPO = f"{HF}/bramtoula/visual-dna-models/resolve/main"
VDNA_MUGS_WEIGHTS = "vdna/mugs_vit_base/weights.pth"
VDNA_MUGS_RANGES = "vdna/mugs_vit_base/activation_ranges.json"


@dataclass(frozen=True)
class DeepFaceUrls:
    """The sources deepface itself downloads one demography graph from, read from the installed
    deepface's ``WEIGHTS_URL`` when asked (so they cannot drift from deepface's own list). Without
    deepface (a GPU-tier install) the copy below, deepface 0.0.103's list, is used; a test checks
    that it still equals deepface's."""

    module: str  # deepface.models.demography.onnx.<module>
    file_name: str

    def __call__(self) -> tuple[str, ...]:
        try:
            urls = importlib.import_module(f"deepface.models.demography.onnx.{self.module}").WEIGHTS_URL
        except ImportError:
            return self.pinned()
        return (urls,) if isinstance(urls, str) else tuple(urls)

    def pinned(self) -> tuple[str, ...]:
        # deepface's order: its GitHub release first, the Hugging Face mirror as the backup
        return (f"{DEEPFACE_RELEASE}/{self.file_name}", f"{DEEPFACE_REPO}/{self.file_name}")


@dataclass(frozen=True)
class WeightFile:
    """One file of the models folder and where to download it: one URL, several (tried in
    order, the next one when a source answers 404), or a callable giving them when needed."""

    relpath: str
    sources: str | tuple[str, ...] | Callable[[], tuple[str, ...]]
    component: Component
    optional: bool = False

    @property
    def urls(self) -> tuple[str, ...]:
        if isinstance(self.sources, str):
            return (self.sources,)
        if callable(self.sources):
            return tuple(self.sources())
        return tuple(self.sources)


#: DeepFace's onnx graphs and the deepface module that names their sources
DEEPFACE_ONNX_MODULES = {
    "age_model_weights.onnx": "Age",
    "race_model_single_batch.onnx": "Race",
    "gender_model_weights.onnx": "Gender",
}

SD15_CONFIG_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
]

CATALOGUE: list[WeightFile] = [
    WeightFile(
        FACER_ATTR,
        "https://github.com/FacePerceiver/facer/releases/download/models-v1/face_attribute.farl.celeba.pt",
        Component.ATTRIBUTES,
    ),
    *[
        WeightFile(f"{DEEPFACE_WEIGHTS}/{name}", DeepFaceUrls(module, name), Component.DEMOGRAPHY)
        for name, module in DEEPFACE_ONNX_MODULES.items()
    ],
    WeightFile(RV_SINGLE_FILE, f"{RV_REPO}/Realistic_Vision_V5.1_fp16-no-ema.safetensors", Component.GENERATOR),
    *[WeightFile(f"{SD15_CONFIG}/{f}", f"{SD15_REPO}/{f}", Component.GENERATOR) for f in SD15_CONFIG_FILES],
    WeightFile(f"{VAE_FOLDER}/config.json", f"{VAE_REPO}/config.json", Component.GENERATOR),
    WeightFile(
        f"{VAE_FOLDER}/diffusion_pytorch_model.safetensors",
        f"{VAE_REPO}/diffusion_pytorch_model.safetensors",
        Component.GENERATOR,
    ),
    WeightFile(
        FACER_RETINAFACE,
        "https://github.com/elliottzheng/face-detection/releases/download/0.0.1/mobilenet0.25_Final.pth",
        Component.RETINAFACE,
        optional=True,
    ),
    # -- `veil eval` (GitHub release assets state no sha256: the digest of what was
    #    fetched is recorded; Hugging Face files are checked against the sha256 it states) --
    WeightFile(FACENET_VGGFACE2, f"{FACENET_RELEASE}/20180402-114759-vggface2.pt", Component.EMBEDDER),
    WeightFile(FACENET_CASIA, f"{FACENET_RELEASE}/20180408-102900-casia-webface.pt", Component.EMBEDDER),
    WeightFile(f"{CLIP_FOLDER}/config.json", f"{CLIP_REPO}/config.json", Component.EMBEDDER),
    WeightFile(f"{CLIP_FOLDER}/pytorch_model.bin", f"{CLIP_REPO}/pytorch_model.bin", Component.EMBEDDER),
    WeightFile(FID_INCEPTION, FID_INCEPTION_URL, Component.QUALITY),
    WeightFile(EMOTION_MODEL, EMOTION_URL, Component.EMOTIONS),
    WeightFile(VDNA_MUGS_WEIGHTS, f"{VDNA_REPO}/Mugs/mugs_vit_base/weights.pth", Component.VDNA),
    WeightFile(VDNA_MUGS_RANGES, f"{VDNA_REPO}/Mugs/mugs_vit_base/activation_ranges.json", Component.VDNA),
]


#: The tensor diffusers' single-file loader looks for to recognise an SD 1.5 CLIP text encoder
#: (``CHECKPOINT_KEY_NAMES["clip"]`` in diffusers/loaders/single_file_utils.py; a test checks it).
SD15_TEXT_ENCODER_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"


def check_single_file_text_encoder(path: Path) -> None:
    """Raise ``IncompleteCheckpointError`` naming ``path`` and the key when the single-file
    checkpoint lacks the text-encoder tensor diffusers needs; reads the safetensors header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
    except (SafetensorError, OSError) as exc:
        raise IncompleteCheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if SD15_TEXT_ENCODER_KEY not in keys:
        raise IncompleteCheckpointError(
            f"{path} has no tensor {SD15_TEXT_ENCODER_KEY!r}, which diffusers needs to find its CLIP text "
            f"encoder: it is not a complete SD 1.5 single-file checkpoint ({len(keys)} tensors); "
            "replace it with Realistic_Vision_V5.1_fp16-no-ema.safetensors"
        )


def has_diffusers_folder(models_dir: Path) -> bool:
    return (models_dir / RV_FOLDER / "model_index.json").is_file()


def required_files(models_dir: Path, components: set[Component] | None = None) -> list[WeightFile]:
    """The files ``veil run`` needs, given which generator format is present."""
    out = []
    for wf in CATALOGUE:
        if components is not None and wf.component not in components:
            continue
        if wf.optional or wf.component in EVAL_COMPONENTS:
            continue
        if wf.component is Component.GENERATOR and has_diffusers_folder(models_dir):
            if wf.relpath == RV_SINGLE_FILE or wf.relpath.startswith(SD15_CONFIG + "/"):
                continue  # the diffusers folder replaces the single file and its configs
        out.append(wf)
    return out


def missing_files(models_dir: Path, components: set[Component] | None = None) -> list[Path]:
    return [
        models_dir / wf.relpath
        for wf in required_files(models_dir, components)
        if not (models_dir / wf.relpath).is_file()
    ]


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached beside it in ``.veil-sha256.json`` keyed by size and mtime
    so a multi-GB checkpoint is hashed once, not at every worker start."""
    path = Path(path)
    st = path.stat()
    cache_path = path.parent / ".veil-sha256.json"
    key = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    cache: dict[str, str] = {}
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        pass
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    cache = {k: v for k, v in cache.items() if not k.startswith(path.name + ":")}
    cache[key] = digest
    try:
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # read-only models folder: hash again next time
    return digest


def tree_sha256(paths: list[Path]) -> str:
    """One digest for a model made of several files (sorted by path)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


TINY_NOTE = "TINY_MODELS.txt"


def is_tiny(models_dir: Path) -> bool:
    """True when ``models_dir`` holds the tiny random test models of ``veil models tiny``."""
    return (Path(models_dir) / TINY_NOTE).is_file()


def tiny_warning(models_dir: Path) -> str | None:
    if not is_tiny(models_dir):
        return None
    return (
        f"WARNING: {models_dir} holds tiny RANDOM test models: the images written are noise and the "
        "attributes random. Fetch the real weights with `veil models fetch` for real anonymization."
    )
