"""The re-identification metrics on hand-made distances, where every answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.evaluation.metrics import average_precision, chance_at_k, cosine_distances, reid_metrics

# gallery: a1 a2 b1 b2 c1 ; probes: anonymized a1, a2, b1, c1 (c has one photo only)
GALLERY = ["a", "a", "b", "b", "c"]


def test_perfect_and_reversed_rankings():
    source = np.array([0, 1, 2, 4])
    probe_ids = ["a", "a", "b", "c"]
    perfect = np.array([
        [0.0, 0.1, 0.9, 0.9, 0.9],
        [0.1, 0.0, 0.9, 0.9, 0.9],
        [0.9, 0.9, 0.0, 0.1, 0.9],
        [0.9, 0.9, 0.9, 0.9, 0.0],
    ])
    m = reid_metrics(perfect, source, GALLERY, probe_ids)
    assert m["reid_self_at_1"] == 1.0 and m["n_probes_self"] == 4
    assert m["reid_at_1"] == 1.0 and m["map"] == 1.0 and m["n_probes_other"] == 3  # c: no other photo
    m = reid_metrics(1 - perfect, source, GALLERY, probe_ids)
    assert m["reid_self_at_1"] == 0.0 and m["reid_self_at_5"] == 1.0
    assert m["reid_at_1"] == 0.0 and m["reid_at_5"] == 1.0


def test_source_removed_means_another_photo_must_be_found():
    # the probe sits on its own source but far from the identity's other photo
    d = np.array([[0.0, 0.8, 0.5, 0.6, 0.7]])
    m = reid_metrics(d, np.array([0]), GALLERY, ["a"])
    assert m["reid_self_at_1"] == 1.0
    assert m["reid_at_1"] == 0.0 and m["reid_at_5"] == 1.0
    assert m["map"] == pytest.approx(1 / 4)  # a2 is 4th of the 4 left
    assert m["chance_at_1"] == pytest.approx(1 / 4)
    assert m["curve"]["reid_at_k"][3] == 1.0


def test_chance_is_hypergeometric():
    assert chance_at_k(10, 1, 1) == pytest.approx(0.1)
    assert chance_at_k(10, 2, 3) == pytest.approx(1 - (8 * 7 * 6) / (10 * 9 * 8))
    assert chance_at_k(4, 1, 10) == 1.0
    rng = np.random.default_rng(0)
    hits = [int(np.argmax(rng.permutation(10) < 2) < 3) for _ in range(20000)]
    assert np.mean(hits) == pytest.approx(chance_at_k(10, 2, 3), abs=0.02)


def test_probe_whose_source_has_no_face_and_empty_inputs():
    d = np.array([[0.2, 0.1, 0.9, 0.9, 0.9]])
    m = reid_metrics(d, np.array([-1]), GALLERY, ["a"])
    assert m["n_probes_self"] == 0 and m["reid_self_at_1"] is None
    assert m["reid_at_1"] == 1.0  # both a-photos stay in the gallery
    empty = reid_metrics(np.zeros((0, 5)), np.array([], int), GALLERY, [])
    assert empty["reid_at_1"] is None and empty["map"] is None and empty["chance_at_1"] is None


def test_cosine_distances_of_unit_vectors():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(cosine_distances(a, a), [[0, 1], [1, 0]])
    assert cosine_distances(np.zeros((0, 2)), a).shape == (0, 2)


def test_map_at_50_against_a_hand_worked_ranking():
    # 61 originals ranked by distance; the probe's identity "a" sits at ranks 2 and 60 (source -1)
    gallery = [f"x{i}" for i in range(61)]
    gallery[1] = gallery[59] = "a"
    d = np.arange(61, dtype=float)[None]
    m = reid_metrics(d, np.array([-1]), gallery, ["a"])
    # full ranking: (1/2 + 2/60) / 2; first 50: only rank 2 is seen, (1/2) / min(2, 50)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 60) / 2)
    assert m["map_at_50"] == pytest.approx(0.25)
    assert average_precision(np.array([1, 0, 1, 0, 0], bool)) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([1, 0, 1, 0, 0], bool), 2) == pytest.approx(1 / 2)


def test_a_probe_with_no_face_is_a_miss_in_the_headline_only():
    # one embedded probe re-identified, three lost (no face left): two with another photo, one without
    d = np.array([[0.9, 0.1, 0.9, 0.9, 0.9]])
    lost = [(0, "a"), (2, "b"), (4, "c")]
    m = reid_metrics(d, np.array([0]), GALLERY, ["a"], lost=lost)
    assert m["reid_at_1_faced"] == 1.0 and m["n_probes_other_faced"] == 1
    assert m["reid_at_1"] == pytest.approx(1 / 3) and m["n_probes_other"] == 3  # c has no other photo
    assert m["reid_self_at_1"] == 0.0 and m["reid_self_at_5"] == pytest.approx(1 / 4)
    assert m["map"] == pytest.approx(1 / 3) and m["map_faced"] == 1.0
    # chance over every probe: a and a (1 other among 4), b (1 other among 4)
    assert m["chance_at_1"] == pytest.approx(1 / 4)
    nothing = reid_metrics(np.zeros((0, 5)), np.array([], int), GALLERY, [], lost=[(0, "a")])
    assert nothing["reid_at_1"] == 0.0 and nothing["reid_at_1_faced"] is None
