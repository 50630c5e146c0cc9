"""Visual DNA (Ramtoula et al., CVPR 2023; the paper's Table III) through the ``vdna`` package's
own parts: its image preprocessing (``ResizeDataset``: PIL bicubic to 224 px, ImageNet
normalisation), its Mugs ViT-B/16 (``models.mugs``), its per-neuron normalisation from the
published activation ranges (x1.2), its 1000-bin histograms per neuron over [-1, 1]
(``histogram_per_channel``; ``make_vdna``'s default ``histogram-1000``) and its Earth Mover's
Distance (``earth_movers_distance``, in bins, averaged over every neuron: ``vdna.EMD``).

A neuron is one channel of one of the 13 layers the package reads (every block's output and the
final norm: 13 x 768 neurons); its samples are every token of every image (197 per image).

- Dataset level: the EMD between the histograms summed over the originals and over the outputs.
- Image level: the EMD between one original's histograms and its output's, mean +/- std over
  the pairs.

Why not ``VDNAProcessor.make_vdna``: its feature extractor downloads the weights and the ranges
from the Hugging Face hub when built (``hf_hub_download``), compiles the network with
``torch.compile`` and reads files through a 12-worker DataLoader; here the same files are read
from ``VEIL_MODELS_DIR`` (``veil models fetch --eval``) and the images are the ones ``veil eval``
already decoded. Absent weights or package: skipped with the reason, never a made-up number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.weights import EVAL_FETCH_HINT, VDNA_MUGS_RANGES, VDNA_MUGS_WEIGHTS

BINS = 1000  # make_vdna's default distribution, "histogram-1000"
HIST_RANGE = [-1.0, 1.0]  # the package's ExtractionSettings.hist_range
RANGE_SCALE = 1.2  # the package's ExtractionSettings.range_scale_for_norm_params
SIZE = (224, 224)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def skipped_because(models_dir: Path) -> str | None:
    for relpath in (VDNA_MUGS_WEIGHTS, VDNA_MUGS_RANGES):
        path = Path(models_dir) / relpath
        if not path.is_file():
            return f"Visual DNA skipped: the Mugs ViT-B/16 file {path} is absent ({EVAL_FETCH_HINT})"
    try:
        import vdna  # noqa: F401
    except ImportError:
        return "Visual DNA skipped: the vdna package is not installed (pip install 'veil[eval]')"
    return None


def normalisation(ranges: dict, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Per-layer (mean, std) tensors of shape (1, neurons, 1, 1) from the activation ranges, by
    the package's own ``get_pre_hist_norm_params_from_min_max``."""
    from vdna.networks.feature_extraction_model import get_pre_hist_norm_params_from_min_max

    return get_pre_hist_norm_params_from_min_max(ranges, RANGE_SCALE, device=str(device))


def histograms(activations: dict[str, torch.Tensor], means: dict, stds: dict) -> torch.Tensor:
    """Every neuron's histogram (rows: the layers' neurons in order; ``BINS`` columns) of
    ``activations`` (layer -> (n, neurons, tokens, 1)), normalised as the package does."""
    from vdna.utils.stats import histogram_per_channel

    rows = [
        histogram_per_channel((x.double() - means[layer]) / stds[layer], hist_nb_bins=BINS, hist_range=HIST_RANGE)
        for layer, x in activations.items()
    ]
    return torch.cat(rows).to(torch.int32)  # on the activations' device; counts up to 2**31 (10M images)


def emd(a: torch.Tensor, b: torch.Tensor) -> float:
    """The package's EMD between two sets of neuron histograms, averaged over the neurons."""
    from vdna.utils.stats import earth_movers_distance

    return float(torch.mean(earth_movers_distance(a, b)))


class MugsVisualDna:
    """The Mugs ViT-B/16 and its activation ranges, loaded once: ``histograms(rgb)`` is one
    image's neuron histograms."""

    def __init__(self, weights: Path, ranges: Path, device: str | torch.device = "cpu") -> None:
        from models.mugs import load_mugs_vit

        self._net = load_mugs_vit(weights, device)
        self._device = device
        self._means, self._stds = normalisation(json.loads(Path(ranges).read_text()), device)

    @classmethod
    def load(cls, models_dir: Path, device: str | torch.device = "cpu") -> MugsVisualDna | None:
        if skipped_because(models_dir):
            return None
        return cls(Path(models_dir) / VDNA_MUGS_WEIGHTS, Path(models_dir) / VDNA_MUGS_RANGES, device)

    def activations(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        """layer -> (1, neurons, tokens, 1), as ``MugsViTFeatExtractor.get_features`` returns them."""
        from vdna.utils.im import ResizeDataset

        images = ResizeDataset(images=[np.asarray(rgb, np.uint8)], size=SIZE, norm_mean=MEAN, norm_std=STD)
        images.threw_warning_about_resizing = True  # its print, once per dataset: here once per image
        x = images[0]
        with torch.inference_mode():
            out = self._net(x[None].to(self._device))
        out = [o.permute(0, 2, 1).unsqueeze(3) for o in out]
        feats = {f"block_{i}": o for i, o in enumerate(out[:-1])}
        feats["last_norm"] = out[-1]
        return feats

    def histograms(self, rgb: np.ndarray) -> torch.Tensor:
        return histograms(self.activations(rgb), self._means, self._stds)


class Tally:
    """One run's Visual DNA, pair by pair: the two sides' summed histograms (kept on the network's
    device) and each pair's EMD."""

    def __init__(self) -> None:
        self.originals: torch.Tensor | None = None
        self.outputs: torch.Tensor | None = None
        self.per_pair: list[float] = []

    def add(self, original: torch.Tensor, output: torch.Tensor) -> None:
        self.originals = original.clone() if self.originals is None else self.originals + original
        self.outputs = output.clone() if self.outputs is None else self.outputs + output
        self.per_pair.append(emd(original, output))

    def result(self, why_none: str = "no pair") -> dict:
        if self.originals is None or self.outputs is None:
            return {"skipped": why_none}
        pairs = np.array(self.per_pair)
        return {
            "vdna_dataset": emd(self.originals, self.outputs),
            "vdna_image": float(pairs.mean()),
            "vdna_image_std": float(pairs.std()),
            "n": len(pairs),
            "bins": BINS,
        }
