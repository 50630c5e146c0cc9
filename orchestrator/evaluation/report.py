"""``report.html``: one self-contained page (images inlined as data: URIs): the metrics as a
matrix (a row per run, a column per metric, n in every cell), with ``--paper`` the paper's
Tables I-III (ours beside its figures, ``orchestrator.evaluation.paper``), Re-ID@k curves per run
and embedder (matplotlib), and a contact sheet of originals beside outputs, worst cases (closest
to their source) first."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from orchestrator.evaluation.metrics import cosine_distances

CONTACT_ROWS = 24  # per run


def write_report(
    path: Path, metrics: dict, runs: list, gallery: list, gallery_files: list[str], embedders, *, paper: bool = False
) -> None:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>veil eval report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eee}"
        ".sheet{display:flex;flex-wrap:wrap;gap:8px}.pair{border:1px solid #ccc;padding:4px;font-size:11px}"
        ".pair img{height:120px;margin:1px}.note{background:#fff3cd;padding:6px;border:1px solid #e0c060}</style>",
        "</head><body><h1>veil eval</h1>",
        f"<p>originals: <code>{_e(metrics['originals'])}</code>; gallery {metrics['n_gallery']} labelled images, "
        f"{metrics['n_gallery_with_face']} with a face, {metrics['n_identities']} identities; detector "
        f"{_e(metrics['detector'])}.</p>",
    ]
    notes = list(metrics["notes"]) + [r["note"] for r in metrics["runs"].values() if r.get("note")]
    parts += [f"<p class='note'>{_e(n)}</p>" for n in notes]
    parts.append(_metrics_table(metrics))
    if paper:
        from orchestrator.evaluation.paper import html_section

        parts.append(html_section(metrics))
    parts.append("<h2>Re-identification at rank k</h2>")
    parts.append(f"<img alt='Re-ID@k curves' src='{_curves(metrics)}'>")
    parts.append("<h2>Contact sheet (worst first: closest to its own original)</h2>")
    first = embedders[0].value if embedders else None
    for run in runs:
        parts.append(f"<h3>{_e(run.label)} (method {_e(run.method)})</h3><div class='sheet'>")
        parts += _contact_sheet(run, gallery, gallery_files, first)
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def _e(value: object) -> str:
    return html.escape(str(value))


def _f(value: object) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


#: the matrix's identity columns: (key, title, the n it is over)
IDENTITY_COLUMNS = [
    ("reid_at_1", "Re-ID@1", "n_probes_other"),
    ("reid_at_1_faced", "Re-ID@1 faced only", "n_probes_other_faced"),
    ("reid_at_5", "Re-ID@5", "n_probes_other"),
    ("reid_at_10", "Re-ID@10", "n_probes_other"),
    ("map", "mAP", "n_probes_other"),
    ("map_at_50", "mAP@50", "n_probes_other"),
    ("reid_self_at_1", "own source@1", "n_probes_self"),
    ("chance_at_1", "chance@1", "n_probes_other"),
]
ATTRIBUTE_COLUMNS = [
    ("inner_auc", "inner attr. AUC"),
    ("outer_auc", "outer attr. AUC"),
    ("gender_accuracy", "gender acc."),
    ("ethnicity_accuracy", "ethnicity acc."),
    ("age_abs_diff", "age |diff|"),
    ("facer_40_agreement", "FACER 40 agreement"),
]
#: (the run's metrics group, key, title): Table II's emotions and Table III's Visual DNA
EXTRA_COLUMNS = [
    ("emotions", "emotions_auc", "emotions AUC"),
    ("emotions", "valence_arousal_mse", "valence-arousal MSE"),
    ("visual_dna", "vdna_dataset", "Visual DNA (dataset)"),
    ("visual_dna", "vdna_image", "Visual DNA (image, mean)"),
]


def _cell(value: object, n: object) -> str:
    return f"<td>{_f(value)}<br><small>n={n}</small></td>"


def _metrics_table(metrics: dict) -> str:
    """Runs x metrics, n in every cell. Re-ID figures count an output with no face left (or not
    the changed one) as a miss; the faced-only figure stands beside it, labelled."""
    embedders = metrics["embedders"]
    head = ["run", "method", "outputs", "no face"]
    head += [f"{title} ({emb})" for emb in embedders for _, title, _ in IDENTITY_COLUMNS]
    head += [title for _, title in ATTRIBUTE_COLUMNS] + [title for _, _, title in EXTRA_COLUMNS] + ["FID", "KID"]
    rows = ["<h2>Metrics</h2><table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for label, run in metrics["runs"].items():
        cells = [f"<td>{_e(label)}</td><td>{_e(run['method'])}</td><td>{run['n_probes']}</td>"]
        cells.append(_cell(run["no_face_rate"], run["n_probes"]))
        for emb in embedders:
            ident = run["identity"][emb]
            cells += [_cell(ident[key], ident[n]) for key, _, n in IDENTITY_COLUMNS]
        attrs, quality = run["attributes"], run["quality"]
        for key, _ in ATTRIBUTE_COLUMNS:
            cells.append(f"<td>{_e(attrs['skipped'])}</td>" if "skipped" in attrs else _cell(attrs[key], attrs["n"]))
        for group, key, _ in EXTRA_COLUMNS:
            values = run.get(group) or {"skipped": "not measured"}
            cells.append(
                f"<td>{_e(values['skipped'])}</td>" if "skipped" in values else _cell(values[key], values["n"])
            )
        for key in ("fid", "kid"):
            cells.append(
                f"<td>{_e(quality['skipped'])}</td>"
                if "skipped" in quality
                else _cell(quality[key], f"{quality['n_originals']}/{quality['n_anonymized']}")
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append(
        "</table><p>Re-ID: the source image removed from the gallery, a hit is another photo of the same identity "
        "(own source@1 keeps it: the output's own original ranked first). Every Re-ID figure counts an output in "
        "which the changed face is not found as a miss; 'faced only' is over the outputs where it was found. "
        "FID/KID n: originals/outputs. The paper's published figures are in its tables (veil eval --paper).</p>"
    )
    return "\n".join(rows)


def _curves(metrics: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    embedders = metrics["embedders"]
    fig, axes = plt.subplots(1, max(1, len(embedders)), figsize=(5 * max(1, len(embedders)), 3.8), squeeze=False)
    for ax, emb in zip(axes[0], embedders, strict=False):
        chance = None
        for label, run in metrics["runs"].items():
            curve = run["identity"][emb]["curve"]
            ks = curve["k"]
            ys = [np.nan if y is None else y for y in curve["reid_at_k"]]  # no face = a miss
            ax.plot(ks, ys, marker="o", markersize=3, label=f"{label} ({run['method']})")
            chance = chance or curve["chance_at_k"]
        if chance and chance[0] is not None:
            ax.plot(ks, chance, "k--", label="chance")
        ax.set_title(f"Re-ID@k, source removed, no face = miss ({emb})")
        ax.set_xlabel("k")
        ax.set_ylabel("reid_at_k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _contact_sheet(run, gallery: list, gallery_files: list[str], embedder: str | None) -> list[str]:
    items = []
    for pair, face in zip(run.pairs, run.probes, strict=True):
        original = gallery[gallery_files.index(pair.file)] if pair.file in gallery_files else None
        distance = None
        if embedder and face is not None and face.found and original is not None and original.found:
            distance = float(
                cosine_distances(face.embeddings[embedder][None], original.embeddings[embedder][None])[0, 0]
            )
        items.append((distance, pair, face, original))
    items.sort(key=lambda t: (t[0] is None, t[0] if t[0] is not None else 0.0))
    out = []
    for distance, pair, face, original in items[:CONTACT_ROWS]:
        left = f"<img alt='original' src='{original.thumbnail}'>" if original and original.thumbnail else ""
        right = f"<img alt='anonymized' src='{face.thumbnail}'>" if face is not None and face.thumbnail else ""
        what = (
            f"distance to source ({embedder}) {distance:.3f}"
            if distance is not None
            else ("no face in the output" if face is not None else f"no output ({pair.status})")
        )
        out.append(f"<div class='pair'>{left}{right}<br>{_e(pair.file)} ({_e(pair.identity)}): {_e(what)}</div>")
    return out
