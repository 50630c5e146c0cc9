"""The paper's Table II ("Real -> Anonymized" downstream tasks) from the attribute models' readings
of each original and its anonymized output: plain functions, no models.

- Labels: CelebA's own annotations (``--celeba-attributes list_attr_celeba.txt``, or CelebAMask-HQ's
  ``CelebAMask-HQ-attribute-anno.txt``: same format) for the files they cover, otherwise FACER's
  prediction on the original (score > 0.5); ``label_source`` says which, with counts.
- Inner / outer face attributes: the mean over the group's attributes of the AUC of FACER's score
  on the anonymized image against the label (attributes whose labels are all one class have no
  AUC and are left out; ``n_attributes`` says how many counted).
- Gender accuracy: DeepFace's gender on the anonymized image against CelebA's ``Male`` where
  annotated, else DeepFace's gender on the original. Ethnicity accuracy: DeepFace on the
  anonymized image against DeepFace on the original (CelebA has no ethnicity label).

The inner/outer split here is Veil's reading (21 + 17, Attractive and Blurry left out: a judgement
and an image property); the FALCO paper's own lists were not available to check it against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from shared.errors import InputError

INNER = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Bags_Under_Eyes", "Big_Lips", "Big_Nose", "Bushy_Eyebrows", "Goatee",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Rosy_Cheeks", "Smiling", "Wearing_Lipstick", "Young",
)  # fmt: skip
OUTER = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Chubby", "Double_Chin", "Eyeglasses", "Gray_Hair",
    "Receding_Hairline", "Sideburns", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Necklace", "Wearing_Necktie",
)  # fmt: skip
SPLIT_NOTE = "inner/outer split: Veil's 21 + 17 (FALCO's own lists unchecked; Attractive and Blurry left out)"


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U with ties
    counted half); None when the labels are all one class."""
    labels = np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(scores, np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def read_celeba_attributes(path: Path) -> dict[str, dict[str, bool]]:
    """``file name -> {attribute: bool}`` from CelebA's ``list_attr_celeba.txt`` (a count line, a
    header of attribute names, then ``000001.jpg -1 1 ...``)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"--celeba-attributes {str(path)!r}: {exc.strerror or exc}") from None
    if len(lines) < 3:
        raise InputError(f"--celeba-attributes {str(path)!r}: expected a count line, a header and rows")
    names = lines[1].split()
    out: dict[str, dict[str, bool]] = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) != len(names) + 1:
            continue
        out[parts[0]] = {n: v == "1" for n, v in zip(names, parts[1:], strict=True)}
    if not out:
        raise InputError(f"--celeba-attributes {str(path)!r}: no row with {len(names)} values")
    return out


def table2(
    pairs: list[tuple[str, dict, dict]], celeba: dict[str, dict[str, bool]] | None, why_none: str = "no pair"
) -> dict:
    """``pairs``: (file, the original's attributes, the output's attributes) as ``FaceReader``
    reads them (``celeba`` 40 scores, ``gender``, ``ethnicity``, ``age``); ``why_none``: the
    reason given when there is none."""
    if not pairs:
        return {"skipped": why_none}
    celeba = celeba or {}
    annotated = [celeba.get(f) or celeba.get(Path(f).name) for f, _, _ in pairs]
    out: dict = {
        "n": len(pairs),
        "label_source": {"celeba": sum(a is not None for a in annotated)},
        "split_note": SPLIT_NOTE,
    }
    out["label_source"]["facer_on_originals"] = len(pairs) - out["label_source"]["celeba"]
    aucs: dict[str, float] = {}
    for name in INNER + OUTER:
        labels = [a[name] if a is not None and name in a else o["celeba"][name] > 0.5 for a, (_, o, _) in zip(
            annotated, pairs, strict=True)]  # fmt: skip
        scores = [b["celeba"][name] for _, _, b in pairs]
        auc = roc_auc(np.array(labels), np.array(scores))
        if auc is not None:
            aucs[name] = auc
    for group, names in (("inner", INNER), ("outer", OUTER)):
        values = [aucs[n] for n in names if n in aucs]
        out[f"{group}_auc"] = float(np.mean(values)) if values else None
        out[f"{group}_n_attributes"] = len(values)
    out["auc_per_attribute"] = aucs
    genders = [
        ("Man" if a["Male"] else "Woman") if a is not None and "Male" in a else o["gender"]
        for a, (_, o, _) in zip(annotated, pairs, strict=True)
    ]
    out["gender_accuracy"] = float(np.mean([g == b["gender"] for g, (_, _, b) in zip(genders, pairs, strict=True)]))
    out["ethnicity_accuracy"] = float(np.mean([o["ethnicity"] == b["ethnicity"] for _, o, b in pairs]))
    # the earlier agreement figures, prediction against prediction
    out["gender_agreement"] = float(np.mean([o["gender"] == b["gender"] for _, o, b in pairs]))
    out["ethnicity_agreement"] = out["ethnicity_accuracy"]
    out["age_abs_diff"] = float(np.mean([abs(o["age"] - b["age"]) for _, o, b in pairs]))
    out["facer_40_agreement"] = float(
        np.mean([np.mean([(o["celeba"][k] > 0.5) == (b["celeba"][k] > 0.5) for k in o["celeba"]]) for _, o, b in pairs])
    )
    return out


def macro_ovr_auc(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float | None, int]:
    """One-vs-rest AUC of each class's score against "label is this class", averaged over the
    classes (macro), as scikit-learn's ``roc_auc_score(..., multi_class="ovr", average="macro")``;
    a class that no label (or every label) names has no AUC and is left out. Returns the mean
    and how many classes counted."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, np.float64)
    aucs = [roc_auc(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])]
    counted = [a for a in aucs if a is not None]
    return (float(np.mean(counted)) if counted else None), len(counted)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over every value (scikit-learn's ``mean_squared_error``, uniform
    average over the outputs)."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def emotions_table(pairs: list[tuple[str, np.ndarray, np.ndarray]], why_none: str = "no pair") -> dict:
    """Table II's emotions (AUC) and valence-arousal (MSE). ``pairs``: (file, the original's
    reading, the output's reading), each reading HSEmotion's 8 emotion probabilities then valence
    and arousal (``EmotionModel.read``). Labels: the model's emotion on the original (argmax;
    CelebA has no emotion annotation); scores: its probabilities on the output. Valence-arousal:
    the output's against the original's."""
    if not pairs:
        return {"skipped": why_none}
    original = np.stack([o for _, o, _ in pairs])
    output = np.stack([b for _, _, b in pairs])
    labels = original[:, :-2].argmax(1)
    auc, n_classes = macro_ovr_auc(labels, output[:, :-2])
    return {
        "n": len(pairs),
        "label_source": {"hsemotion_on_originals": len(pairs)},
        "emotions_auc": auc,
        "emotions_n_classes": n_classes,
        "emotion_agreement": float(np.mean(labels == output[:, :-2].argmax(1))),
        "valence_arousal_mse": mse(original[:, -2:], output[:, -2:]),
        "valence_mse": mse(original[:, -2], output[:, -2]),
        "arousal_mse": mse(original[:, -1], output[:, -1]),
    }
