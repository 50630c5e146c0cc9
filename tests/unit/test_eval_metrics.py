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


def test_auc_equals_scikit_learns_on_known_inputs():
    from sklearn.metrics import roc_auc_score

    from orchestrator.evaluation.downstream import roc_auc

    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.4 * labels, 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.ones(4, bool), np.arange(4.0)) is None  # one class: no AUC


def test_table2_labels_from_celeba_annotations_and_inner_outer_groups(tmp_path):
    from orchestrator.evaluation.downstream import INNER, OUTER, read_celeba_attributes, table2

    assert len(INNER) == 21 and len(OUTER) == 17 and not set(INNER) & set(OUTER)
    names = list(INNER + OUTER) + ["Attractive", "Blurry"]
    listing = tmp_path / "list_attr_celeba.txt"
    rows = ["a.jpg " + " ".join("1" if n == "Smiling" else "-1" for n in names),
            "b.jpg " + " ".join("1" if n == "Male" else "-1" for n in names)]  # fmt: skip
    listing.write_text("2\n" + " ".join(names) + "\n" + "\n".join(rows) + "\n")
    celeba = read_celeba_attributes(listing)
    assert celeba["a.jpg"]["Smiling"] and not celeba["a.jpg"]["Male"] and celeba["b.jpg"]["Male"]

    def reading(smiling: float, gender: str) -> dict:
        return {"celeba": {n: (smiling if n == "Smiling" else 0.2) for n in names}, "gender": gender,
                "ethnicity": "white", "age": 30}  # fmt: skip

    pairs = [
        ("x/a.jpg", reading(0.9, "Man"), reading(0.8, "Woman")),
        ("b.jpg", reading(0.1, "Man"), reading(0.3, "Man")),
    ]
    out = table2(pairs, celeba)
    assert out["label_source"] == {"celeba": 2, "facer_on_originals": 0}
    # Smiling: labels (1, 0) from the annotations, scores (0.8, 0.3): AUC 1; Male: labels (0, 1),
    # scores tied at 0.2: AUC 0.5; every other attribute is one class: no AUC
    assert out["auc_per_attribute"] == {"Smiling": 1.0, "Male": 0.5}
    assert out["inner_auc"] == 0.75 and out["inner_n_attributes"] == 2 and out["outer_auc"] is None
    # gender labels from CelebA's Male (a: Woman, b: Man) against the outputs' (Woman, Man)
    assert out["gender_accuracy"] == 1.0 and out["gender_agreement"] == 0.5
    without = table2(pairs, None)
    assert without["label_source"] == {"celeba": 0, "facer_on_originals": 2}
    assert without["auc_per_attribute"] == {"Smiling": 1.0}  # labels from FACER on the originals
