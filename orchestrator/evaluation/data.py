"""What ``veil eval`` compares: the identities CSV and each anonymized run's manifest, paired
with the originals by the manifest's ``input`` -> ``output`` rows.

Identities CSV: columns ``file,identity`` (a header row), ``file`` relative to ORIGINALS; an
empty identity (a group photo, an unlabeled one) leaves the file out. From CelebA's
``identity_CelebA.txt`` (lines ``000001.jpg 2880``)::

    (echo file,identity; tr ' ' ,  < identity_CelebA.txt) > identities.csv
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Pair:
    """One input of an anonymized run: its original (relative to ORIGINALS) and what became of it."""

    file: str
    identity: str
    status: str  # the manifest's: done | no_face | failed
    output: Path | None  # the anonymized image (status done)
    method: str | None
    # the face that was changed (the row's box, input pixels) where the output keeps the input's
    # geometry (scene mode; every classical method): the probe is the face found there, not
    # whichever face is biggest now (another person's, in a group photo). None: a portrait-mode
    # sd output is a new image of that face alone; its face is detected.
    match_box: tuple[float, float, float, float] | None = None


def read_identities(path: Path) -> dict[str, str]:
    """``file -> identity`` of the labelled rows (empty identities left out)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"--identities {str(path)!r}: {exc.strerror or exc}") from None
    if rows and not {"file", "identity"} <= set(rows[0]):
        raise InputError(f"--identities {str(path)!r}: needs the columns file,identity (got {list(rows[0])})")
    out = {row["file"].strip(): row["identity"].strip() for row in rows if (row.get("identity") or "").strip()}
    if not out:
        raise InputError(f"--identities {str(path)!r}: no labelled row")
    return out


def gallery_files(originals: Path, identities: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Issue 23: the CSV's files that ``veil eval`` may read (regular files under ORIGINALS, by
    real path), and the ones it will not: missing (reported, not dropped in silence) and outside
    ORIGINALS (an absolute path, ``..``, a symlink out of it: never opened)."""
    root = originals.resolve()
    files, missing, outside = [], [], []
    for name in sorted(identities):
        path = root / name
        if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
            outside.append(name)
        elif not path.is_file():
            missing.append(name)
        else:
            files.append(name)
    return files, missing, outside


def read_pairs(originals: Path, anonymized: Path, identities: dict[str, str]) -> tuple[list[Pair], int]:
    """The labelled inputs of the run in ``anonymized`` (the last manifest row of each input wins),
    and the number of manifest rows whose input is not a labelled file under ORIGINALS."""
    manifest = anonymized / MANIFEST
    if not manifest.is_file():
        raise InputError(f"ANONYMIZED {str(anonymized)!r} has no {MANIFEST}: give a veil run OUTPUT folder")
    latest: dict[str, dict] = {}
    for line in manifest.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a row cut short by a crash
        latest[row["input"]] = row
    root = originals.resolve()
    pairs, unmatched = [], 0
    for input_uri, row in latest.items():
        rel = _relative(input_uri, root, anonymized)
        if rel is None or rel not in identities:
            unmatched += 1
            continue
        output = Path(row["output"]) if row.get("output") and row.get("status") == "done" else None
        if output is not None and not output.is_absolute():
            output = anonymized / output
        box = row.get("face_box") if keeps_geometry(row) else None
        match_box = (float(box[0]), float(box[1]), float(box[2]), float(box[3])) if box else None
        pairs.append(Pair(rel, identities[rel], row.get("status", "failed"), output, row.get("method"), match_box))
    return sorted(pairs, key=lambda p: p.file), unmatched


def keeps_geometry(row: dict) -> bool:
    """Whether a manifest row's output has its input's pixels grid: scene mode, or a classical
    method (blur, pixelate, mask change the face's box in place) in any mode."""
    return row.get("mode") == "scene" or row.get("method", "sd") != "sd"


def _relative(input_uri: str, root: Path, anonymized: Path) -> str | None:
    path = Path(input_uri)
    if not path.is_absolute():
        path = (Path.cwd() / path).resolve()
    try:
        return Path(os.path.relpath(path.resolve(), root)).as_posix() if path.resolve().is_relative_to(root) else None
    except (OSError, ValueError):
        return None
