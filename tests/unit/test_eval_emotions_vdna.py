"""Table II's emotions AUC and valence-arousal MSE against scikit-learn's on known inputs, and
Table III's Visual DNA on constructed activations whose answer is known by hand (identical sets:
0; a set shifted by k bins: k)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.evaluation.downstream import emotions_table, macro_ovr_auc, mse
from orchestrator.evaluation.visual_dna import BINS, Tally, emd, histograms, normalisation


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_macro_one_vs_rest_auc_equals_scikit_learns():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = np.concatenate([np.arange(8), rng.integers(0, 8, 72)])  # every class present
    probabilities = _softmax(rng.normal(0, 1, (80, 8)) + 1.5 * np.eye(8)[labels])
    ours, counted = macro_ovr_auc(labels, probabilities)
    reference = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=list(range(8)))
    assert counted == 8
    assert ours == pytest.approx(reference, abs=1e-12)
    assert 0.5 < ours < 1.0  # informative scores, not perfect ones


def test_a_class_no_original_shows_is_left_out_not_scored():
    from sklearn.metrics import roc_auc_score

    labels = np.array([0, 0, 1, 1, 2, 2])  # classes 3..7 never the label
    probabilities = _softmax(np.random.default_rng(1).normal(0, 1, (6, 8)))
    ours, counted = macro_ovr_auc(labels, probabilities)
    assert counted == 3
    per_class = [roc_auc_score(labels == c, probabilities[:, c]) for c in range(3)]
    assert ours == pytest.approx(np.mean(per_class), abs=1e-12)


def test_valence_arousal_mse_equals_scikit_learns_and_by_hand():
    from sklearn.metrics import mean_squared_error

    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (50, 2)), rng.uniform(-1, 1, (50, 2))
    assert mse(a, b) == pytest.approx(mean_squared_error(a, b), abs=1e-15)
    # one pair: valence 0.5 -> 0.2, arousal -0.5 -> -0.1: (0.09 + 0.16) / 2
    original = np.r_[np.eye(8)[4], 0.5, -0.5]
    output = np.r_[np.eye(8)[4] * 0.9 + 0.1 / 8, 0.2, -0.1]
    table = emotions_table([("a.jpg", original, output)])
    assert table["valence_arousal_mse"] == pytest.approx(0.125)
    assert table["valence_mse"] == pytest.approx(0.09) and table["arousal_mse"] == pytest.approx(0.16)
    assert table["emotion_agreement"] == 1.0 and table["n"] == 1
    assert table["emotions_auc"] is None and table["emotions_n_classes"] == 0  # one label: no AUC
    assert table["label_source"] == {"hsemotion_on_originals": 1}
    assert emotions_table([], "weights absent") == {"skipped": "weights absent"}


def test_emotions_labels_are_the_originals_argmax_and_scores_the_outputs():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    originals = _softmax(rng.normal(0, 2, (40, 8)) + 3 * np.eye(8)[np.arange(40) % 8])
    outputs = _softmax(rng.normal(0, 2, (40, 8)))
    pairs = [
        (f"{i}.jpg", np.r_[o, 0.0, 0.0], np.r_[b, 0.1, 0.0])
        for i, (o, b) in enumerate(zip(originals, outputs, strict=True))
    ]
    table = emotions_table(pairs)
    labels = originals.argmax(1)
    assert table["emotions_auc"] == pytest.approx(roc_auc_score(labels, outputs, multi_class="ovr"), abs=1e-12)
    assert table["valence_arousal_mse"] == pytest.approx(0.01 / 2)
    # the outputs identical to the originals: every class's own score ranks its images first
    same = emotions_table([(f, o, o) for f, o, _ in pairs])
    assert same["emotions_auc"] == 1.0 and same["valence_arousal_mse"] == 0.0


# -- Visual DNA ---------------------------------------------------------------------------------

#: activation ranges that make the package's normalisation the identity: min/max = -+1/1.2
#: (scaled by 1.2: -1..1, mean 0, std 1 + 1e-8)
NEURONS = 3
IDENTITY_RANGES = {
    "mins_per_neuron": {"block_0": {str(i): -1 / 1.2 for i in range(NEURONS)}},
    "maxs_per_neuron": {"block_0": {str(i): 1 / 1.2 for i in range(NEURONS)}},
}
WIDTH = 2.0 / BINS  # a bin, in normalised activation


def _activations(centres: list[list[int]]) -> dict[str, torch.Tensor]:
    """One image's activations: neuron i's tokens at the centres of bins ``centres[i]``."""
    values = torch.tensor([[-1 + WIDTH * (k + 0.5) for k in row] for row in centres], dtype=torch.float64)
    return {"block_0": values[None, :, :, None]}  # (1, neurons, tokens, 1)


def _hist(centres: list[list[int]]) -> torch.Tensor:
    means, stds = normalisation(IDENTITY_RANGES)
    return histograms(_activations(centres), means, stds)


BASE = [[100, 200, 300, 400], [500, 500, 510, 900], [0, 1, 2, 998]]


def test_histograms_count_every_token_of_every_neuron_in_its_bin():
    h = _hist(BASE)
    assert h.shape == (NEURONS, BINS) and h.sum(1).tolist() == [4, 4, 4]
    assert h[1, 500] == 2 and h[2, 998] == 1 and h[0, 250] == 0


def test_identical_sets_are_at_zero_and_a_shift_of_k_bins_is_k():
    assert emd(_hist(BASE), _hist(BASE)) == 0.0
    shifted = [[k + 5 for k in row] for row in BASE[:2]] + [[k + 1 for k in BASE[2][:3]] + [997]]
    # neurons 0 and 1 moved 5 bins; neuron 2: three tokens +1, one -1: 4/4 = 1 bin
    assert emd(_hist(BASE), _hist(shifted)) == pytest.approx((5 + 5 + 1) / 3, abs=1e-12)


def test_tally_dataset_level_and_image_level_mean_and_std():
    base = [[300, 400, 500, 600], [300, 450, 500, 700], [250, 400, 410, 420]]
    tally = Tally()
    for shift in (5, 15):
        tally.add(_hist(base), _hist([[row[0] - 100] + [k + shift for k in row[1:]] for row in base]))
    # each pair: the lowest token -100 bins, the other three +shift: (100 + 3 * shift) / 4 per neuron
    per_pair = [(100 + 3 * s) / 4 for s in (5, 15)]
    result = tally.result()
    assert result["n"] == 2 and result["bins"] == BINS
    assert result["vdna_image"] == pytest.approx(np.mean(per_pair), abs=1e-12)
    assert result["vdna_image_std"] == pytest.approx(np.std(per_pair), abs=1e-12)
    # summed histograms: every token moves by 5 or 15 (half each), the lowest by -100; no token
    # passes another, so in 1-D the EMD is the mean move: (100 + 3 * 10) / 4
    assert result["vdna_dataset"] == pytest.approx((100 + 3 * 10) / 4, abs=1e-12)
    assert Tally().result("no output written") == {"skipped": "no output written"}


def test_values_outside_the_range_land_in_the_end_bins_as_the_package_clamps_them():
    means, stds = normalisation(IDENTITY_RANGES)
    acts = {"block_0": torch.tensor([[5.0, -5.0], [0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)[None, :, :, None]}
    h = histograms(acts, means, stds)
    assert h[0, 0] == 1 and h[0, BINS - 1] == 1
