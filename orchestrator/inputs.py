"""Resolving ``veil run``'s INPUT into (uri, relative key) pairs.

INPUT is a folder (recursive), a glob, a text file of paths (one per line, ``#`` comments),
or a prefix in object storage (``s3://bucket/prefix``, or any scheme ``shared.storage`` serves).
The relative key is what the output mirrors. Nothing here depends on a URI's scheme.
"""

from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError
from shared.imageio import IMAGE_EXTENSIONS
from shared.inputfiles import UNSUPPORTED_IMAGE_EXTENSIONS, walk_folder
from shared.storage import Storage, is_local, relative_key, split_uri


@dataclass(frozen=True)
class InputItem:
    uri: str
    key: str  # relative path / key, mirrored under OUTPUT


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS | UNSUPPORTED_IMAGE_EXTENSIONS  # the latter: a row saying why


def list_inputs(spec: str, storage: Storage) -> list[InputItem]:
    if not is_local(spec) or os.path.isdir(spec):
        found = walk_folder(spec, _is_image_name) if is_local(spec) else storage.list(spec)  # odd entries too
        items = [InputItem(u, relative_key(spec, u)) for u in found if _is_image_name(u)]
    elif os.path.isfile(spec) and not _is_image_name(spec):
        items = _from_list_file(Path(spec))
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p) or _is_image_name(p))
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
    paths = [e if not is_local(e) or os.path.isabs(e) else str(path.parent / e) for e in entries]
    return _relative_to_common(paths)


def _relative_to_common(paths: list[str]) -> list[InputItem]:
    """Keys relative to the deepest folder (or key prefix) that holds all the paths of a namespace
    (the local filesystem, one bucket)."""
    split = [split_uri(p) for p in paths]
    common = {
        space: posixpath.commonpath([posixpath.dirname(q) for s, q in split if s == space])
        for space in {s for s, _ in split}
    }
    return [InputItem(p, posixpath.relpath(q, common[s])) for p, (s, q) in zip(paths, split, strict=True)]
