"""``report.html``: one self-contained page (images inlined as data: URIs): the metrics table
with the paper's published figures beside ours, Re-ID@k curves per run and embedder
(matplotlib), and a contact sheet of originals beside outputs, worst cases (closest to their
source) first."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from orchestrator.evaluation.metrics import cosine_distances

#: Piano et al. 2024, from the paper's tables: 1,000 CelebA-HQ images, rank-1 re-identification
#: and attribute preservation of the paper's method. Other cells of its tables are not copied here.
PAPER = {
    ("identity", "clip", "reid_at_1"): 0.007,
    ("identity", "facenet", "reid_at_1"): 0.010,
    ("attributes", "", "ethnicity_agreement"): 0.928,
    ("attributes", "", "gender_agreement"): 0.965,
}
CONTACT_ROWS = 24  # per run


def write_report(path: Path, metrics: dict, runs: list, gallery: list, gallery_files: list[str], embedders) -> None:
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


def _metrics_table(metrics: dict) -> str:
    rows = [
        "<h2>Metrics</h2><table><tr><th>run</th><th>method</th><th>metric</th><th>embedder</th>"
        "<th>ours</th><th>paper (sd, CelebA-HQ)</th><th>n</th></tr>"
    ]
    for label, run in metrics["runs"].items():
        base = f"<td>{_e(label)}</td><td>{_e(run['method'])}</td>"
        rows.append(
            f"<tr>{base}<td>no_face_rate</td><td></td><td>{_f(run['no_face_rate'])}</td><td></td>"
            f"<td>{run['n_probes']}</td></tr>"
        )
        for emb, ident in run["identity"].items():
            family = "clip" if emb == "clip" else ("facenet" if emb.startswith("facenet") else emb)
            for key in ("reid_self_at_1", "reid_at_1", "reid_at_5", "reid_at_10", "map", "chance_at_1"):
                paper = PAPER.get(("identity", family, key))
                n = ident["n_probes_self"] if key.startswith("reid_self") else ident["n_probes_other"]
                rows.append(
                    f"<tr>{base}<td>{key}</td><td>{_e(emb)}</td><td>{_f(ident[key])}</td>"
                    f"<td>{_f(paper) if paper is not None else ''}</td><td>{n}</td></tr>"
                )
        attrs = run["attributes"]
        if "skipped" in attrs:
            rows.append(f"<tr>{base}<td>attributes</td><td></td><td colspan=3>{_e(attrs['skipped'])}</td></tr>")
        else:
            for key in ("gender_agreement", "ethnicity_agreement", "age_abs_diff", "facer_40_agreement"):
                paper = PAPER.get(("attributes", "", key))
                rows.append(
                    f"<tr>{base}<td>{key}</td><td></td><td>{_f(attrs[key])}</td>"
                    f"<td>{_f(paper) if paper is not None else ''}</td><td>{attrs['n']}</td></tr>"
                )
        quality = run["quality"]
        if "skipped" in quality:
            rows.append(f"<tr>{base}<td>FID / KID</td><td></td><td colspan=3>{_e(quality['skipped'])}</td></tr>")
        else:
            for key in ("fid", "kid"):
                rows.append(
                    f"<tr>{base}<td>{key}</td><td></td><td>{_f(quality[key])}</td><td></td>"
                    f"<td>{quality['n_anonymized']}</td></tr>"
                )
    rows.append(
        "</table><p>The paper's column is the paper's method (sd) on 1,000 CelebA-HQ images, as published "
        "(FaceNet: its rank-1 figure, compared with both FaceNet weights here); it is not a measurement of "
        "this run.</p>"
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
            ys = [np.nan if y is None else y for y in curve["reid_at_k"]]
            ax.plot(ks, ys, marker="o", markersize=3, label=f"{label} ({run['method']})")
            chance = chance or curve["chance_at_k"]
        if chance and chance[0] is not None:
            ax.plot(ks, chance, "k--", label="chance")
        ax.set_title(f"Re-ID@k, source removed ({emb})")
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
