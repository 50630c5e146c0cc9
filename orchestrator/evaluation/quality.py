"""Image quality (the paper's Table III): FID and KID between the originals and the anonymized
images, computed by torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``) on
the FID Inception v3 (``models/weights.FID_INCEPTION``, fetched by ``veil models fetch --eval``).

Why torchmetrics: one maintained library gives both FID and KID from one feature pass; its
Inception is torch-fidelity's TF-exact port, which takes a local weights file as an argument
(``feature_extractor_weights_path``), so nothing is downloaded and nothing is patched.
pytorch-fid has no KID and only downloads its weights; clean-fid downloads its own model.
The weights file is pytorch-fid's release (torchvision key names), the same network torch-fidelity
publishes under the same ``6726825d`` hash prefix; it loads into torch-fidelity as it is.

Absent weights or package: skipped with a message saying what is missing, never a made-up
number. KID is the mean over ``subsets`` random subsets of ``min(n, KID_SUBSET)`` images each
(torchmetrics' estimator; with subset size = n every subset is the whole set, so it is exact).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from models.weights import EVAL_FETCH_HINT, FID_INCEPTION

KID_SUBSET = 1000  # torchmetrics' and torch-fidelity's default subset size
KID_SUBSETS = 100
FEATURES = 2048


class InceptionFeatures:
    """The FID Inception v3 from ``path`` (torch-fidelity's port, as torchmetrics builds it),
    loaded once: ``features(rgb)`` is one image's 2048-d pool features (the network resizes it
    to 299 px itself, as the libraries do). Keeping features, not pixels, costs 8 KB an image."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        from torchmetrics.image.fid import NoTrainInceptionV3

        self._net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(FEATURES)], feature_extractor_weights_path=str(path)
        ).to(device)
        self._device = device

    @classmethod
    def load(cls, models_dir: Path, device: str = "cpu") -> InceptionFeatures | None:
        """None when the weights or the package are absent (``fid_kid`` says which)."""
        if skipped_because(models_dir):
            return None
        return cls(Path(models_dir) / FID_INCEPTION, device)

    def features(self, rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(rgb, np.uint8)).permute(2, 0, 1)[None].to(self._device)
        with torch.inference_mode():
            return self._net(x)[0].double().cpu().numpy()


def skipped_because(models_dir: Path) -> str | None:
    path = Path(models_dir) / FID_INCEPTION
    if not path.is_file():
        return f"FID/KID skipped: the Inception weights {path} are absent ({EVAL_FETCH_HINT})"
    try:
        import torch_fidelity  # noqa: F401
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        return "FID/KID skipped: torchmetrics/torch-fidelity are not installed (pip install 'veil[eval]')"
    return None


def fid_kid(originals: list[np.ndarray], anonymized: list[np.ndarray], models_dir: Path) -> dict:
    """``{"fid", "kid", "kid_std", "n_originals", "n_anonymized"}`` from the two sides' Inception
    features (``InceptionFeatures.features``), or ``{"skipped": why}``."""
    if why := skipped_because(models_dir):
        return {"skipped": why}
    if min(len(originals), len(anonymized)) < 2:
        return {"skipped": "FID/KID skipped: fewer than 2 images on a side"}
    fid, kid = distances(np.stack(originals), np.stack(anonymized))
    return {**fid, **kid, "n_originals": len(originals), "n_anonymized": len(anonymized)}


def distances(a: np.ndarray, b: np.ndarray, subsets: int = KID_SUBSETS) -> tuple[dict, dict]:
    """torchmetrics' FID and KID of two feature sets (rows), ``a`` the real side; KID over
    ``subsets`` subsets of ``min(len(a), len(b), KID_SUBSET)`` rows."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    given = _Given(a.shape[1])
    fid = FrechetInceptionDistance(feature=given)
    with warnings.catch_warnings():  # "will save all extracted features": 8 KB an image, by design
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=given, subsets=subsets, subset_size=min(len(a), len(b), KID_SUBSET))
    for features, real in ((a, True), (b, False)):
        x = torch.from_numpy(np.asarray(features, np.float64))
        fid.update(x, real=real)
        kid.update(x, real=real)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute())}, {"kid": float(kid_mean), "kid_std": float(kid_std)}


class _Given(torch.nn.Module):
    """The features handed to torchmetrics' metrics as they are (computed once per image)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
