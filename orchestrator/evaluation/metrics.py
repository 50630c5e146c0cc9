"""Re-identification metrics from distances: plain functions of arrays, no models.

Probe = an anonymized image, gallery = the originals. ``distances[i, j]`` is the distance of probe
``i`` to original ``j``; ``source[i]`` is the index of probe ``i``'s own original in the gallery
(or -1 when that original has no face), ``identity`` the gallery's identity labels and
``probe_identity`` the probes'. ``lost`` lists the probes that could not be embedded (the output
has no face left, or not the changed one) as ``(source, identity)``: an attacker gets nothing
from them, so every headline figure counts them as misses; the ``*_faced`` figures beside them
are over the embedded probes only (what earlier versions put first; they flatter a method that
destroys the face, e.g. mask).

- ``reid_self_at_k``: the probe's own source is among its k nearest originals.
- ``reid_at_k`` / ``map`` / ``map_at_50``: the source is removed from the gallery (one reading of
  the paper, which does not say); a hit is another photo of the same identity among the k
  nearest; mean average precision over the whole ranking and over its first 50 (``AP@K`` below).
  Only probes whose identity has another photo in the gallery count (``n_probes_other``).
- ``chance_at_k``: the same ``reid_at_k`` for a gallery ranked at random (exact, hypergeometric),
  over every probe, embedded or lost.
"""

from __future__ import annotations

from math import comb

import numpy as np

KS = (1, 5, 10)
MAP_TOP = 50  # the paper's mAP@50


def average_precision(relevant: np.ndarray, top: int | None = None) -> float:
    """AP of one ranking (``relevant[r]``: the item at rank r + 1 is relevant), over the first
    ``top`` ranks when given: ``sum_{r <= K} P@r * rel_r / min(R, K)``, R the relevant items in the
    whole ranking (so a ranking that leaves relevant items past K is not rewarded for it)."""
    relevant = np.asarray(relevant, bool)
    total = int(relevant.sum())
    if total == 0:
        return 0.0
    head = relevant if top is None else relevant[:top]
    hits = np.cumsum(head)
    ranks = np.nonzero(head)[0] + 1
    return float(np.sum(hits[head] / ranks) / (total if top is None else min(total, top)))


def reid_metrics(
    distances: np.ndarray,
    source: np.ndarray,
    identity: list[str],
    probe_identity: list[str],
    ks: tuple[int, ...] = KS,
    curve_k: int = 20,
    lost: list[tuple[int, str]] | None = None,
) -> dict:
    """The identity metrics: one row of ``distances`` per embedded probe; ``lost`` the probes
    that could not be embedded (misses in every headline figure)."""
    distances = np.asarray(distances, dtype=np.float64)
    lost = lost or []
    n_probes, n_gallery = distances.shape if distances.size else (len(probe_identity), len(identity))
    gallery_ids = np.asarray(identity, dtype=object)
    self_ranks: list[int] = []
    other_hits_rank: list[int] = []  # rank (1-based) of the first same-identity photo, source removed
    aps: list[float] = []
    aps_top: list[float] = []
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
        aps.append(average_precision(relevant))
        aps_top.append(average_precision(relevant, MAP_TOP))
        chance.append(np.array([chance_at_k(len(keep), int(relevant.sum()), int(k)) for k in k_range]))
    lost_self = sum(1 for s, _ in lost if s >= 0)
    lost_other = 0
    for s, ident in lost:
        others = int(np.sum(gallery_ids == ident)) - int(s >= 0)
        if others > 0:
            lost_other += 1
            n_rest = n_gallery - int(s >= 0)
            chance.append(np.array([chance_at_k(n_rest, others, int(k)) for k in k_range]))
    out: dict = {
        "n_probes_self": len(self_ranks) + lost_self,
        "n_probes_other": len(other_hits_rank) + lost_other,
        "n_probes_self_faced": len(self_ranks),
        "n_probes_other_faced": len(other_hits_rank),
        "n_lost": len(lost),
        "n_gallery": int(n_gallery),
    }
    for k in ks:
        out[f"reid_self_at_{k}"] = _rate([r <= k for r in self_ranks], lost_self)
    for k in ks:
        out[f"reid_at_{k}"] = _rate([r <= k for r in other_hits_rank], lost_other)
    out["map"] = _rate(aps, lost_other)
    out["map_at_50"] = _rate(aps_top, lost_other)
    for k in ks:
        out[f"reid_self_at_{k}_faced"] = _rate([r <= k for r in self_ranks])
    for k in ks:
        out[f"reid_at_{k}_faced"] = _rate([r <= k for r in other_hits_rank])
    out["map_faced"] = _rate(aps)
    out["map_at_50_faced"] = _rate(aps_top)
    out["chance_at_1"] = float(np.mean([c[0] for c in chance])) if chance else None
    out["curve"] = {
        "k": k_range.tolist(),
        "reid_self_at_k": [_rate([r <= k for r in self_ranks], lost_self) for k in k_range],
        "reid_at_k": [_rate([r <= k for r in other_hits_rank], lost_other) for k in k_range],
        "reid_at_k_faced": [_rate([r <= k for r in other_hits_rank]) for k in k_range],
        "chance_at_k": np.mean(chance, axis=0).tolist() if chance else [None] * curve_k,
    }
    return out


def chance_at_k(n: int, relevant: int, k: int) -> float:
    """P(at least one of ``relevant`` items among the first ``k`` of ``n`` shuffled)."""
    k = min(k, n)
    return 1.0 - comb(n - relevant, k) / comb(n, k) if n else 0.0


def _rate(values: list, misses: int = 0) -> float | None:
    """Mean of ``values`` with ``misses`` zeros added (None when there is nothing to average)."""
    n = len(values) + misses
    return float(np.sum(np.asarray(values, dtype=np.float64))) / n if n else None


def cosine_distances(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of unit vectors (rows), probes x gallery."""
    if len(probes) == 0 or len(gallery) == 0:
        return np.zeros((len(probes), len(gallery)))
    return 1.0 - np.asarray(probes, np.float64) @ np.asarray(gallery, np.float64).T
