"""Resolving ``veil run``'s INPUT into (uri, relative key) pairs.

INPUT is a folder (recursive), a glob, a text file of paths (one per line, ``#`` comments),
or a prefix in object storage (``s3://bucket/prefix``, or any scheme ``shared.storage`` serves).
The relative key is what the output mirrors. Nothing here depends on a URI's scheme.

A prefix is a folder: ``s3://bkt/in`` lists ``in/...`` only, never ``inx/...``. An input listed
twice (a list file naming one file twice) is processed once. ``plan_outputs`` checks, before any
model loads, that every output lies under OUTPUT (``UnsafeKeyError`` per key), that no output
lands on an input and that no two inputs share an output (``InputError`` for the whole run).
"""

from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError, UnsafeKeyError
from shared.imageio import IMAGE_EXTENSIONS, output_name
from shared.inputfiles import UNSUPPORTED_IMAGE_EXTENSIONS, walk_folder
from shared.storage import Storage, is_local, relative_key, safe_join, split_uri


@dataclass(frozen=True)
class InputItem:
    uri: str
    key: str  # relative path / key, mirrored under OUTPUT


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS | UNSUPPORTED_IMAGE_EXTENSIONS  # the latter: a row saying why


def list_inputs(spec: str, storage: Storage) -> list[InputItem]:
    """INPUT's images, each once (the first listing of a repeated input is kept)."""
    return list_inputs_with_repeats(spec, storage)[0]


def _list(spec: str, storage: Storage) -> list[InputItem]:
    if not is_local(spec):
        folder = spec.rstrip("/") + "/" if not spec.endswith("://") else spec
        items = [InputItem(u, relative_key(folder, u)) for u in storage.list(folder) if _is_image_name(u)]
        if not items and _is_image_name(spec) and storage.exists(spec):  # one object named whole
            items = [InputItem(spec, spec.rstrip("/").rsplit("/", 1)[-1])]
    elif os.path.isdir(spec):  # odd entries (FIFOs, folders named like images) too: each gets a row
        items = [InputItem(u, relative_key(spec, u)) for u in walk_folder(spec, _is_image_name) if _is_image_name(u)]
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


def _identity(uri: str) -> str:
    """What makes two URIs one object: the resolved path locally, the URI itself elsewhere."""
    return os.path.realpath(uri) if is_local(uri) else uri


def _unique(items: list[InputItem]) -> tuple[list[InputItem], list[InputItem]]:
    seen: set[str] = set()
    kept: list[InputItem] = []
    repeats: list[InputItem] = []
    for item in items:
        ident = _identity(item.uri)
        (repeats if ident in seen else kept).append(item)
        seen.add(ident)
    return kept, repeats


def list_inputs_with_repeats(spec: str, storage: Storage) -> tuple[list[InputItem], list[InputItem]]:
    """(INPUT's images, each once; the repeats that were dropped)."""
    return _unique(_list(spec, storage))


@dataclass(frozen=True)
class OutputPlan:
    outputs: list[tuple[InputItem, str]]  # each safe input and its output URI
    unsafe: list[tuple[InputItem, UnsafeKeyError]]  # keys refused, each with why


def plan_outputs(items: list[InputItem], output: str, input_spec: str) -> OutputPlan:
    """Each input's output under ``output``, checked before any work starts. A key that would
    leave OUTPUT is refused alone (``unsafe``); an output that lands on an input, or two inputs
    sharing one output, refuse the whole run with an ``InputError`` that lists them: which of two
    inputs should win is not ours to guess, and the operator's fix (a narrower INPUT, another
    OUTPUT) is the same for every key."""
    outputs: list[tuple[InputItem, str]] = []
    unsafe: list[tuple[InputItem, UnsafeKeyError]] = []
    for item in items:
        try:
            outputs.append((item, safe_join(output, output_name(item.key))))
        except UnsafeKeyError as exc:
            unsafe.append((item, exc))
    inputs = {_identity(i.uri) for i in items}
    clobbered = [(i, o) for i, o in outputs if _identity(o) in inputs]
    if clobbered:
        shown = "; ".join(f"{o} <- {i.uri}" for i, o in clobbered[:5])
        raise InputError(
            f"OUTPUT {output!r} would overwrite {len(clobbered)} of INPUT {input_spec!r}'s own images "
            f"({shown}{'; ...' if len(clobbered) > 5 else ''}): choose an OUTPUT that holds no input"
        )
    by_output: dict[str, list[str]] = {}
    for item, out in outputs:
        by_output.setdefault(_identity(out), []).append(item.uri)
    shared = {o: uris for o, uris in by_output.items() if len(uris) > 1}
    if shared:
        shown = "; ".join(f"{o} <- {', '.join(uris)}" for o, uris in list(shared.items())[:5])
        raise InputError(
            f"INPUT {input_spec!r}: {len(shared)} output(s) under OUTPUT {output!r} would be written by two or "
            f"more different inputs ({shown}{'; ...' if len(shared) > 5 else ''}): name fewer inputs or split the run"
        )
    return OutputPlan(outputs, unsafe)
