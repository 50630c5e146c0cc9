"""Resolving ``veil run``'s INPUT into (uri, relative key) pairs.

INPUT is a folder (recursive), a glob, a text file of paths (one per line, ``#`` comments),
or an ``s3://bucket/prefix``. The relative key is what the output mirrors.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError
from shared.storage import IMAGE_EXTENSIONS, Storage, is_s3, split_s3


@dataclass(frozen=True)
class InputItem:
    uri: str
    key: str  # relative path / key, mirrored under OUTPUT


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_inputs(spec: str, storage: Storage) -> list[InputItem]:
    if is_s3(spec):
        _, prefix = split_s3(spec)
        base = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        items = [InputItem(u, split_s3(u)[1][len(base):] if split_s3(u)[1].startswith(base) else split_s3(u)[1].rsplit("/", 1)[-1])
                 for u in storage.list(spec) if _is_image_name(u)]
    elif os.path.isdir(spec):
        root = Path(spec)
        items = [InputItem(str(p), p.relative_to(root).as_posix()) for p in sorted(root.rglob("*"))
                 if p.is_file() and _is_image_name(p.name)]
    elif os.path.isfile(spec) and not _is_image_name(spec):
        items = _from_list_file(Path(spec))
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        items = _relative_to_common(paths)
    elif os.path.isfile(spec):
        items = [InputItem(spec, Path(spec).name)]
    else:
        raise InputError(f"INPUT: {spec!r} is not a folder, a glob, a list file or an s3:// prefix")
    if not items:
        raise InputError(f"INPUT: no images found in {spec!r}")
    return items


def _from_list_file(path: Path) -> list[InputItem]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    paths = [e if is_s3(e) or os.path.isabs(e) else str(path.parent / e) for e in entries]
    return _relative_to_common(paths)


def _relative_to_common(paths: list[str]) -> list[InputItem]:
    """Keys relative to the deepest folder (or key prefix) that holds all the paths."""
    def parts(p: str) -> tuple[str, str]:  # (namespace, path within it)
        if is_s3(p):
            bucket, key = split_s3(p)
            return f"s3://{bucket}", "/" + key
        return "", os.path.abspath(p)

    split = [parts(p) for p in paths]
    common: dict[str, str] = {}
    for space in {s for s, _ in split}:
        common[space] = os.path.commonpath([os.path.dirname(q) for s, q in split if s == space])
    return [InputItem(p, Path(os.path.relpath(q, common[s])).as_posix()) for p, (s, q) in zip(paths, split)]
