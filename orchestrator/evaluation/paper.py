"""``veil eval --paper``: the paper's Tables I-III (Piano et al.), our runs beside the paper's
published figures and its baselines', as ``paper_tables.md`` and a section of ``report.html``.

Every cell of ours says its n; a cell that cannot be computed here says ``not computed: <reason>``
(weights absent, a model not wired, random test models), never a number from random weights.
The paper's rows are its own figures on 1,000 CelebA-HQ images (n=1000), not measurements of ours.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from models.weights import EVAL_FETCH_HINT

PAPER_N = 1000
#: (row label, method) -> values; None: the paper gives no figure for that cell
TABLE1_COLUMNS = [  # (our embedder, the paper's column title)
    ("clip-image", "CLIP ViT-B/32 (image level)"),
    ("facenet-vggface2", "FaceNet VGGFace2 (face crop)"),
    ("facenet-casia", "FaceNet CASIA (face crop)"),
]
TABLE1_EXTRA = [("clip-face", "CLIP ViT-B/32 (face crop; not in the paper)"), ("dlib", "dlib (not in the paper)")]
TABLE1_METRICS = [("reid_at_1", "R@1"), ("reid_at_5", "R@5"), ("reid_at_10", "R@10"), ("map_at_50", "mAP@50")]
PAPER_TABLE1 = {
    ("paper: Piano et al. (sd)", "sd"): {
        "clip-image": (0.007, 0.021, 0.037, 0.006),
        "facenet-vggface2": (0.010, 0.028, 0.037, 0.006),
        "facenet-casia": (0.007, 0.014, 0.029, 0.005),
    },
    ("paper: DeepPrivacy2", "dp2"): {"clip-image": (0.268, 0.404, 0.469, 0.113)},
    ("paper: FALCO", "falco"): {"clip-image": (0.101, 0.222, 0.292, 0.054)},
}
TABLE2_COLUMNS = [
    ("inner_auc", "Inner face attr. (AUC)"),
    ("outer_auc", "Outer face attr. (AUC)"),
    ("emotions_auc", "Emotions (AUC)"),
    ("valence_arousal_mse", "Valence-arousal (MSE)"),
    ("ethnicity_accuracy", "Ethnicity (acc.)"),
    ("gender_accuracy", "Gender (acc.)"),
]
PAPER_TABLE2 = {
    ("paper: Piano et al. (sd)", "sd"): ("0.878", "0.954", "0.730", "0.09", "0.928", "0.965"),
    ("paper: DeepPrivacy2", "dp2"): ("0.823", "0.976", "0.664", "0.18", "0.674", "0.925"),
    ("paper: FALCO", "falco"): ("0.898", "0.944", "0.777", "0.08", "0.654", "0.950"),
}
TABLE3_COLUMNS = [
    ("fid", "FID"),
    ("vdna_dataset", "Visual DNA (dataset)"),
    ("vdna_image", "Visual DNA (image, mean +/- std)"),
    ("kid", "KID (not in the paper)"),
]
PAPER_TABLE3 = {
    ("paper: Piano et al. (sd)", "sd"): ("53.3", "7.1", "18.3 +/- 2.1", None),
    ("paper: DeepPrivacy2", "dp2"): ("49.4", "5.0", "10.4 +/- 1.3", None),
    ("paper: FALCO", "falco"): ("41.2", "6.3", "15.2 +/- 2.1", None),
}
RANDOM_EMOTIONS = "not computed: the emotion model (HSEmotion) is a tiny RANDOM test model"
RANDOM_VDNA = "not computed: Visual DNA's Mugs ViT is a tiny RANDOM test model"
RANDOM_SD = "not computed: sd outputs of tiny RANDOM test models (noise)"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tables(metrics: dict) -> list[Table]:
    return [table1(metrics), table2(metrics), table3(metrics)]


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ordered_runs(metrics: dict) -> list[tuple[str, dict]]:
    """sd runs first (beside the paper's sd row), then the others."""
    runs = list(metrics["runs"].items())
    return [r for r in runs if r[1]["method"] == "sd"] + [r for r in runs if r[1]["method"] != "sd"]


def _paper_rows(paper: dict, width: int, cell) -> list[list[str]]:
    return [[label, method] + [cell(values, i) for i in range(width)] for (label, method), values in paper.items()]


def table1(metrics: dict) -> Table:
    columns = TABLE1_COLUMNS + [c for c in TABLE1_EXTRA if c[0] in metrics["embedders"]]
    header = ["run", "method"] + [f"{title} {short}" for _, title in columns for _, short in TABLE1_METRICS]
    t = Table("Table I: re-identification (Real -> Anonymized)", header)
    for (label, method), values in PAPER_TABLE1.items():
        row = [label, method]
        for emb, _ in columns:
            figures = values.get(emb)
            row += [f"{v:.3f} (n={PAPER_N})" for v in figures] if figures else [""] * len(TABLE1_METRICS)
        t.rows.append(row)
    not_computed = metrics.get("not_computed", {})
    for label, run in _ordered_runs(metrics):
        row = [label, run["method"]]
        for emb, _ in columns:
            ident = run["identity"].get(emb)
            if run["method"] == "sd" and run.get("note"):
                row += [RANDOM_SD] * len(TABLE1_METRICS)
                continue
            if ident is None:
                why = not_computed.get(emb, f"embedder not asked (--embedder {emb})")
                row += [f"not computed: {why}"] * len(TABLE1_METRICS)
                continue
            for key, _ in TABLE1_METRICS:
                faced = ident.get(f"{key}_faced")
                extra = f"; faced only {_f(faced)}" if faced != ident[key] else ""
                row.append(f"{_f(ident[key])} (n={ident['n_probes_other']}{extra})")
        t.rows.append(row)
    t.notes = [
        "Ours: the source image is removed from the gallery and a hit is another photo of the same identity "
        "(the paper does not say which reading it follows); an output with no face left, or not the changed "
        "one, is a miss; 'faced only' is the same figure over the outputs in which the face was found.",
        "CLIP image level embeds the whole image (the paper's protocol); FaceNet the detector's face crop.",
        f"Paper rows: the published figures on {PAPER_N:,} CelebA-HQ images, not measurements of ours.",
    ]
    return t


def table2(metrics: dict) -> Table:
    header = ["run", "method"] + [title for _, title in TABLE2_COLUMNS]
    t = Table("Table II: downstream tasks (Real -> Anonymized)", header)
    t.rows += _paper_rows(PAPER_TABLE2, len(TABLE2_COLUMNS), lambda v, i: f"{v[i]} (n={PAPER_N})")
    for label, run in _ordered_runs(metrics):
        attrs = run["attributes"]
        row = [label, run["method"]]
        for key, _ in TABLE2_COLUMNS:
            if key in ("emotions_auc", "valence_arousal_mse"):
                row.append(_emotion_cell(metrics, run, key))
            elif "skipped" in attrs:
                row.append("not computed: " + _short(attrs["skipped"]))
            elif metrics.get("attributes_random"):
                row.append("not computed: the attribute models are tiny RANDOM test models")
            elif run["method"] == "sd" and run.get("note"):
                row.append(RANDOM_SD)
            else:
                groups = f", {attrs[key.replace('_auc', '_n_attributes')]} attributes" if key.endswith("_auc") else ""
                row.append(f"{_f(attrs[key])} (n={attrs['n']}{groups})")
        t.rows.append(row)
    t.notes = [
        "Labels: CelebA's annotations where given (--celeba-attributes), else FACER's / DeepFace's reading of "
        "the original; ethnicity always against DeepFace on the original. Only outputs with a face are scored.",
        "Inner/outer: Veil's split of CelebA's 40 attributes (21 + 17), FALCO's own lists unchecked.",
        "Emotions: HSEmotion enet_b0_8_va_mtl (8 AffectNet classes); labels its prediction on the original "
        "(CelebA has no emotion annotation), one-vs-rest macro AUC of its probabilities on the output over the "
        "classes the labels name; valence-arousal MSE of the output's against the original's.",
    ]
    return t


def _emotion_cell(metrics: dict, run: dict, key: str) -> str:
    emotions = run.get("emotions") or {"skipped": "not measured by this veil version"}
    if "skipped" in emotions:
        return "not computed: " + _short(emotions["skipped"])
    if metrics.get("emotions_random"):
        return RANDOM_EMOTIONS
    if run["method"] == "sd" and run.get("note"):
        return RANDOM_SD
    if key == "emotions_auc":
        return f"{_f(emotions[key])} (n={emotions['n']}, {emotions['emotions_n_classes']} classes)"
    return f"{_f(emotions[key])} (n={emotions['n']})"


def _vdna_cell(metrics: dict, run: dict, key: str) -> str:
    dna = run.get("visual_dna") or {"skipped": "not measured by this veil version"}
    if "skipped" in dna:
        return "not computed: " + _short(dna["skipped"])
    if metrics.get("vdna_random"):
        return RANDOM_VDNA
    if run["method"] == "sd" and run.get("note"):
        return RANDOM_SD
    if key == "vdna_dataset":
        return f"{_f(dna[key], 1)} (n={dna['n']} pairs)"
    return f"{_f(dna[key], 1)} +/- {_f(dna['vdna_image_std'], 1)} (n={dna['n']} pairs)"


def table3(metrics: dict) -> Table:
    header = ["run", "method"] + [title for _, title in TABLE3_COLUMNS]
    t = Table("Table III: image quality (dataset level)", header)
    t.rows += _paper_rows(
        PAPER_TABLE3, len(TABLE3_COLUMNS), lambda v, i: f"{v[i]} (n={PAPER_N})" if v[i] is not None else ""
    )
    for label, run in _ordered_runs(metrics):
        quality = run["quality"]
        row = [label, run["method"]]
        for key, _ in TABLE3_COLUMNS:
            if key.startswith("vdna"):
                row.append(_vdna_cell(metrics, run, key))
            elif "skipped" in quality:
                row.append("not computed: " + _short(quality["skipped"]))
            elif run["method"] == "sd" and run.get("note"):
                row.append(RANDOM_SD)
            else:
                n = f"n={quality['n_originals']} originals, {quality['n_anonymized']} outputs"
                row.append(f"{_f(quality[key], 2 if key == 'fid' else 4)} ({n})")
        t.rows.append(row)
    t.notes = [
        f"FID/KID: torchmetrics on the FID Inception v3 ({EVAL_FETCH_HINT} fetches it).",
        "Visual DNA: the vdna package's method (Mugs ViT-B/16, 13 layers x 768 neurons, 1000-bin histograms, "
        "EMD in bins averaged over the neurons) on whole images; dataset level between the originals and the "
        "outputs, image level per original/output pair (mean +/- std).",
    ]
    return t


def _short(reason: str) -> str:
    """A skip reason without its file paths (metrics.json keeps them)."""
    if "Inception weights" in reason and "absent" in reason:
        return f"FID Inception weights absent ({EVAL_FETCH_HINT})"
    if "HSEmotion weights" in reason and "absent" in reason:
        return f"HSEmotion weights absent ({EVAL_FETCH_HINT})"
    if "Mugs ViT-B/16 file" in reason and "absent" in reason:
        return f"Visual DNA's Mugs ViT-B/16 weights absent ({EVAL_FETCH_HINT})"
    for prefix in ("FID/KID skipped: ", "emotions skipped: ", "Visual DNA skipped: "):
        reason = reason.removeprefix(prefix)
    return reason


def markdown(metrics: dict) -> str:
    out = ["# veil eval --paper: the paper's Tables I-III, ours beside the published figures", ""]
    for note in metrics.get("notes", []):
        out.append(f"> {note}")
    for t in tables(metrics):
        out += ["", f"## {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in t.rows]
        out += [""] + [f"- {n}" for n in t.notes]
    return "\n".join(out) + "\n"


def html_section(metrics: dict) -> str:
    parts = ["<h2>The paper's tables</h2>"]
    for t in tables(metrics):
        parts.append(f"<h3>{html.escape(t.title)}</h3><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in t.header]
        parts.append("</tr>")
        for row in t.rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>" + "".join(f"<p>{html.escape(n)}</p>" for n in t.notes))
    return "\n".join(parts)
