"""An HTML contact sheet of several runs over the same photos: one row per input, one column
per run (``original | sd | blur | mask`` in ``scripts/demo.sh``), read from each run's
``manifest.jsonl``. Images are linked by relative path (the sheet sits beside the runs), so
the folder can be moved or served as it is. A cell with no image says why (``no_face``,
``failed: reason``). A run made with tiny random test models is labelled as noise.

    python -m orchestrator.contact_sheet SHEET.html LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--note TEXT]
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from pathlib import Path


def read_manifest(run_dir: Path) -> dict[str, dict]:
    """{input: row} of a run's manifest (the last row of an input wins: a resumed run)."""
    rows: dict[str, dict] = {}
    with open(run_dir / "manifest.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[str(row.get("input", ""))] = row
    return rows


def _img(path: str | None, sheet_dir: Path, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    rel = os.path.relpath(Path(path).resolve(), sheet_dir.resolve())
    return f'<img src="{html.escape(Path(rel).as_posix())}" alt="{html.escape(alt)}" loading="lazy">'


def _cell(row: dict | None, sheet_dir: Path, label: str) -> str:
    if row is None:
        return "<td class=missing>not in this run</td>"
    image = _img(row.get("output"), sheet_dir, label)
    status = str(row.get("status", "?"))
    reason = str(row.get("reason") or "").removeprefix(f"{status}:").strip()
    why = f": {reason}" if reason and status != "done" else ""
    caption = html.escape(status + why)
    return f"<td>{image}<div class={html.escape(status)}>{caption}</div></td>"


def write_contact_sheet(sheet: Path, runs: dict[str, Path], note: str = "") -> int:
    """Writes ``sheet``; returns the number of rows (inputs). ``runs``: label -> run folder."""
    sheet = Path(sheet)
    manifests = {label: read_manifest(Path(d)) for label, d in runs.items()}
    inputs = sorted({key for rows in manifests.values() for key in rows})
    head = "".join(f"<th>{html.escape(label)}</th>" for label in ["original", *runs])
    body = []
    for key in inputs:
        original = f"<td>{_img(key, sheet.parent, 'original')}<div>{html.escape(Path(key).name)}</div></td>"
        cells = "".join(_cell(manifests[label].get(key), sheet.parent, label) for label in runs)
        body.append(f"<tr>{original}{cells}</tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Veil contact sheet</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 6px; text-align: center; vertical-align: top; }}
img {{ max-width: 256px; max-height: 256px; display: block; margin: auto; }}
.note {{ background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em; margin-bottom: 1em; }}
.failed {{ color: #b00020; }} .no_face {{ color: #666; }}
</style></head><body>
<h1>Veil contact sheet</h1>
{f'<p class="note">{html.escape(note)}</p>' if note else ""}
<table><thead><tr>{head}</tr></thead><tbody>
{"".join(body)}
</tbody></table></body></html>
"""
    sheet.parent.mkdir(parents=True, exist_ok=True)
    tmp = sheet.with_name(sheet.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, sheet)
    return len(inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.contact_sheet", description=__doc__.split("\n")[0])
    parser.add_argument("sheet", type=Path, help="the HTML file to write")
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR: a veil run's OUTPUT (its manifest.jsonl)")
    parser.add_argument("--note", default="", help="a line shown above the table")
    args = parser.parse_args(argv)
    runs: dict[str, Path] = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not (Path(folder) / "manifest.jsonl").is_file():
            print(f"veil: {item!r}: expected LABEL=RUN_DIR with a manifest.jsonl", file=sys.stderr)
            return 2
        runs[label] = Path(folder)
    n = write_contact_sheet(args.sheet, runs, args.note)
    print(f"contact sheet of {n} photo(s) x {len(runs)} run(s): {args.sheet.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
