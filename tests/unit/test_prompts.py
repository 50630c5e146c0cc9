"""Known-answer tests for Algorithm 1."""

import pytest

from shared.prompts import CELEBA_LABELS, build_prompts, label_to_words


def scores(high: set[str]) -> dict[str, float]:
    return {label: (0.9 if label in high else 0.1) for label in CELEBA_LABELS}


def test_forty_labels_in_celeba_order():
    assert len(CELEBA_LABELS) == 40 and CELEBA_LABELS[0] == "5_o_Clock_Shadow" and CELEBA_LABELS[-1] == "Young"


def test_man_with_attributes_known_answer():
    p = build_prompts(scores({"Male", "Eyeglasses", "Wearing_Hat", "Smiling"}), age=34, ethnicity="white")
    assert p.positive == "closeup portrait photo of a white 34 man, eyeglasses, smiling, wearing hat, "
    negative = [label_to_words(label) for label in CELEBA_LABELS if label not in {"Male", "Eyeglasses", "Wearing_Hat", "Smiling"}]
    assert p.negative == "".join(f"{w}, " for w in negative)
    assert "male" not in p.positive.split(", ") and "male" not in p.negative.split(", ")


def test_woman_when_male_at_threshold():
    s = scores({"Young"})
    s["Male"] = 0.5  # "above 0.5" is strict
    p = build_prompts(s, age=25, ethnicity="latino hispanic")
    assert p.positive == "closeup portrait photo of a latino hispanic 25 woman, young, "
    assert p.negative.startswith("5 o clock shadow, arched eyebrows, ")


def test_label_exactly_half_goes_negative():
    s = scores(set())
    s["Bangs"] = 0.5
    s["Bald"] = 0.5000001
    p = build_prompts(s, age=40, ethnicity="asian")
    assert "bald, " in p.positive and "bangs, " in p.negative and "bangs" not in p.positive


def test_every_label_listed_once():
    p = build_prompts(scores({"Male", "Bald", "Goatee"}), age=60, ethnicity="black")
    words = [w for w in (p.positive.split(", ")[1:] + p.negative.split(", ")) if w]
    assert sorted(words) == sorted(label_to_words(label) for label in CELEBA_LABELS if label != "Male")


@pytest.mark.parametrize("kwargs, name", [
    (dict(age=-1, ethnicity="white"), "age"),
    (dict(age=30, ethnicity=" "), "ethnicity"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_prompts(scores(set()), **kwargs)


def test_missing_label_is_named():
    s = scores(set())
    del s["Wearing_Necktie"]
    with pytest.raises(ValueError, match="Wearing_Necktie"):
        build_prompts(s, age=30, ethnicity="white")
