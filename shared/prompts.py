"""Algorithm 1 of Piano et al. (2024): attribute scores -> positive and negative prompts.

Positive: ``closeup portrait photo of a {ethnicity} {age} {man|woman}, `` followed by
``{label}, `` for every CelebA label scored above 0.5, in CelebA's order. Negative: ``{label}, ``
for every label scored 0.5 or less. ``Male`` decides man or woman and is never listed; age and
ethnicity come from DeepFace and appear once, in the prefix.

A CelebA label is written as words: underscores become spaces and the text is lower-cased,
so ``Wearing_Hat`` -> ``wearing hat``, ``5_o_Clock_Shadow`` -> ``5 o clock shadow``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The 40 CelebA attributes in the dataset's (and FACER's) order.
CELEBA_LABELS: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
GENDER_LABEL = "Male"
THRESHOLD = 0.5
PREFIX = "closeup portrait photo of a {ethnicity} {age} {gender}, "


@dataclass(frozen=True)
class Prompts:
    positive: str
    negative: str


def label_to_words(label: str) -> str:
    return label.replace("_", " ").lower()


def build_prompts(celeba_scores: dict[str, float], *, age: int, ethnicity: str) -> Prompts:
    """Algorithm 1. ``celeba_scores`` must hold all 40 labels; ``age`` and ``ethnicity`` are DeepFace's."""
    missing = [label for label in CELEBA_LABELS if label not in celeba_scores]
    if missing:
        raise ValueError(f"celeba_scores: missing label(s) {', '.join(missing)}")
    if age < 0:
        raise ValueError(f"age: must be >= 0, got {age}")
    if not ethnicity.strip():
        raise ValueError("ethnicity: must not be empty")
    gender = "man" if celeba_scores[GENDER_LABEL] > THRESHOLD else "woman"
    positive = PREFIX.format(ethnicity=ethnicity, age=age, gender=gender)
    negative = ""
    for label in CELEBA_LABELS:
        if label == GENDER_LABEL:
            continue
        if celeba_scores[label] > THRESHOLD:
            positive += f"{label_to_words(label)}, "
        else:
            negative += f"{label_to_words(label)}, "
    return Prompts(positive=positive, negative=negative)
