"""Image quality (the paper's Table III): FID and KID between the originals and the anonymized
images, from the FID Inception v3 (``models/weights.FID_INCEPTION``, fetched by
``veil models fetch --eval``) through pytorch-fid's network. Absent weights or package: skipped
with a message saying what is missing, never a made-up number."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.weights import EVAL_FETCH_HINT, FID_INCEPTION


def fid_kid(originals: list[np.ndarray], anonymized: list[np.ndarray], models_dir: Path) -> dict:
    """``{"fid": .., "kid": .., "n": ..}`` or ``{"skipped": why}``; images are 299x299 RGB uint8."""
    path = Path(models_dir) / FID_INCEPTION
    if not path.is_file():
        return {"skipped": f"FID/KID skipped: the Inception weights {path} are absent ({EVAL_FETCH_HINT})"}
    try:
        from pytorch_fid import inception as fid_inception
    except ImportError:
        return {"skipped": "FID/KID skipped: the pytorch-fid package is not installed (pip install pytorch-fid)"}
    if min(len(originals), len(anonymized)) < 2:
        return {"skipped": "FID/KID skipped: fewer than 2 images on a side"}
    import torch

    # pytorch-fid loads its weights from a URL; the file we fetched is handed to it instead
    original_loader = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *a, **k: torch.load(path, map_location="cpu", weights_only=True)
    try:
        net = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        fid_inception.load_state_dict_from_url = original_loader
    a, b = _features(net, originals), _features(net, anonymized)
    return {"fid": frechet(a, b), "kid": kid(a, b), "n_originals": len(a), "n_anonymized": len(b)}


def _features(net, images: list[np.ndarray]) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), 16):
            x = torch.from_numpy(np.stack(images[start : start + 16])).permute(0, 3, 1, 2).float() / 255.0
            out.append(net(x)[0].squeeze(-1).squeeze(-1).numpy())
    return np.concatenate(out).astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al.), over all samples."""
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )
