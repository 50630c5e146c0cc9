"""Re-identification metrics from distances: plain functions of arrays, no models.

Probe = an anonymized image, gallery = the originals. ``distances[i, j]`` is the distance of probe
``i`` to original ``j``; ``source[i]`` is the index of probe ``i``'s own original in the gallery
(or -1 when that original has no face), ``identity`` the gallery's identity labels and
``probe_identity`` the probes'.

- ``reid_self_at_k``: the probe's own source is among its k nearest originals.
- ``reid_at_k`` / ``map``: the source is removed from the gallery; a hit is another photo of
  the same identity among the k nearest (mean average precision over the whole ranking). Only
  probes whose identity has another photo in the gallery count (``n_probes_other``).
- ``chance_at_k``: the same ``reid_at_k`` for a gallery ranked at random (exact, hypergeometric).
"""

from __future__ import annotations

from math import comb

import numpy as np

KS = (1, 5, 10)


def reid_metrics(
    distances: np.ndarray,
    source: np.ndarray,
    identity: list[str],
    probe_identity: list[str],
    ks: tuple[int, ...] = KS,
    curve_k: int = 20,
) -> dict:
    """The identity metrics of probes that have a face (one row each in ``distances``)."""
    distances = np.asarray(distances, dtype=np.float64)
    n_probes, n_gallery = distances.shape if distances.size else (len(probe_identity), len(identity))
    gallery_ids = np.asarray(identity, dtype=object)
    self_ranks: list[int] = []
    other_hits_rank: list[int] = []  # rank (1-based) of the first same-identity photo, source removed
    aps: list[float] = []
    chance: list[np.ndarray] = []
    k_range = np.arange(1, curve_k + 1)
    for i in range(n_probes):
        row = distances[i]
        order = np.argsort(row, kind="stable")
        if source[i] >= 0:
            self_ranks.append(int(np.nonzero(order == source[i])[0][0]) + 1)
        keep = order[order != source[i]] if source[i] >= 0 else order
        relevant = gallery_ids[keep] == probe_identity[i]
        if not relevant.any():
            continue  # no other photo of this identity: not a probe for reid_at_k
        other_hits_rank.append(int(np.argmax(relevant)) + 1)
        hits = np.cumsum(relevant)
        aps.append(float(np.mean(hits[relevant] / (np.nonzero(relevant)[0] + 1))))
        chance.append(np.array([chance_at_k(len(keep), int(relevant.sum()), int(k)) for k in k_range]))
    out: dict = {
        "n_probes_self": len(self_ranks),
        "n_probes_other": len(other_hits_rank),
        "n_gallery": int(n_gallery),
    }
    for k in ks:
        out[f"reid_self_at_{k}"] = _rate([r <= k for r in self_ranks])
    for k in ks:
        out[f"reid_at_{k}"] = _rate([r <= k for r in other_hits_rank])
    out["map"] = float(np.mean(aps)) if aps else None
    out["chance_at_1"] = float(np.mean([c[0] for c in chance])) if chance else None
    out["curve"] = {
        "k": k_range.tolist(),
        "reid_self_at_k": [_rate([r <= k for r in self_ranks]) for k in k_range],
        "reid_at_k": [_rate([r <= k for r in other_hits_rank]) for k in k_range],
        "chance_at_k": np.mean(chance, axis=0).tolist() if chance else [None] * curve_k,
    }
    return out


def chance_at_k(n: int, relevant: int, k: int) -> float:
    """P(at least one of ``relevant`` items among the first ``k`` of ``n`` shuffled)."""
    k = min(k, n)
    return 1.0 - comb(n - relevant, k) / comb(n, k) if n else 0.0


def _rate(flags: list) -> float | None:
    return float(np.mean(flags)) if flags else None


def cosine_distances(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of unit vectors (rows), probes x gallery."""
    if len(probes) == 0 or len(gallery) == 0:
        return np.zeros((len(probes), len(gallery)))
    return 1.0 - np.asarray(probes, np.float64) @ np.asarray(gallery, np.float64).T
