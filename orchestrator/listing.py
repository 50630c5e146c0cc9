"""INPUT, streamed page by page with a resume cursor, and each page planned: the one listing of
``veil run`` and ``veil submit`` (never the whole key list in memory for an object-store prefix
or a list file).

INPUT is one of:

- ``s3://b/in`` (any object-store prefix): the store's own pages (S3: 1,000 keys); a prefix is
  a folder (``in/`` only, never ``inx/``); one object named whole (``s3://b/in/x.jpg``) is
  listed alone. The cursor is the last key listed (S3 ``StartAfter``).
- a list file (one path or URI a line, ``#`` comments, relative paths from the file's folder):
  read twice, never held: a first pass finds the deepest folder holding every entry (the keys'
  root), the second reads chunks of lines; the cursor is the byte offset after the last whole
  chunk. Its entries must share one namespace (one bucket, or the filesystem): a run has ONE
  input root (``JobSpec.input``), which every key's input URI is joined onto.
- a folder (recursive), a glob, or a single file (local, small by nature): listed at once, then
  cut into pages; the cursor is the number of entries already taken.

Each key's task, output included, is built by ``shared.keys.task_for`` (``plan_page``); a key
it refuses (``UnsafeKeyError``, ``NameTooLongError``) is refused alone. ``check_whole_listing``
refuses the whole run, before any work, when an output lands on an input or two inputs share an
output anywhere in the listing (two sets of 8-byte digests). An input listed twice (a list file
naming one file twice) is processed once (``planned_pages``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError, PermanentError
from shared.imageio import IMAGE_EXTENSIONS
from shared.inputfiles import UNSUPPORTED_IMAGE_EXTENSIONS, walk_folder
from shared.keys import digest, output_for, task_for
from shared.messages import ImageTask, JobSpec
from shared.storage import Storage, is_local, join_uri, split_uri

_LISTED = IMAGE_EXTENSIONS | UNSUPPORTED_IMAGE_EXTENSIONS  # the latter: a row saying why


@dataclass(frozen=True)
class InputItem:
    uri: str
    key: str  # relative path / key under the listing's root, mirrored under OUTPUT


#: (items of one page, the cursor after it)
Page = tuple[list[InputItem], str]


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in _LISTED


def identity(uri: str) -> str:
    """What makes two URIs one object: the resolved path locally, the URI itself elsewhere."""
    return os.path.realpath(uri) if is_local(uri) else uri


@dataclass
class Listing:
    root: str  # every key's input URI is join_uri(root, key): the job's ``JobSpec.input``

    def pages(self, cursor: str) -> Iterator[Page]:  # pragma: no cover - overridden
        raise NotImplementedError

    def items(self) -> Iterator[InputItem]:
        """Every item, page by page, from the start."""
        for items, _ in self.pages(""):
            yield from items


@dataclass
class PrefixListing(Listing):
    storage: Storage
    page_size: int

    def pages(self, cursor: str) -> Iterator[Page]:
        base = len(self.root)
        for uris in self.storage.list_pages(self.root, start_after=cursor, page_size=self.page_size):
            if uris:
                yield [InputItem(u, u[base:]) for u in uris if is_image_name(u)], uris[-1]


@dataclass
class ListFile(Listing):
    path: str
    page_size: int

    def pages(self, cursor: str) -> Iterator[Page]:
        start = int(cursor or 0)
        strip = len(split_uri(self.root)[1].rstrip("/")) + 1
        space = split_uri(self.root)[0]
        with open(self.path, "rb") as f:
            f.seek(start)
            items: list[InputItem] = []
            for raw in iter(f.readline, b""):
                uri = _entry(raw, self.path)
                if uri is not None:  # (the first pass checked that every entry is in ``space``)
                    items.append(InputItem(uri, uri[len(space) + strip :] if space else os.path.abspath(uri)[strip:]))
                if len(items) >= self.page_size:
                    yield items, str(f.tell())
                    items = []
            if items:
                yield items, str(f.tell())


@dataclass
class SmallListing(Listing):
    listed: list[InputItem]
    page_size: int

    def pages(self, cursor: str) -> Iterator[Page]:
        for start in range(int(cursor or 0), len(self.listed), self.page_size):
            end = start + self.page_size
            yield self.listed[start:end], str(min(end, len(self.listed)))


def _entry(raw: bytes, list_file: str) -> str | None:
    line = raw.decode().strip()
    if not line or line.startswith("#"):
        return None
    if is_local(line) and not os.path.isabs(line):
        return os.path.join(os.path.dirname(os.path.abspath(list_file)), line)
    return line


def _list_file_root(path: str) -> str:
    """First pass: the deepest folder holding every entry (one namespace)."""
    space: str | None = None
    common: str | None = None
    with open(path, "rb") as f:
        for raw in f:
            uri = _entry(raw, path)
            if uri is None:
                continue
            s, q = split_uri(uri)
            folder = q.rsplit("/", 1)[0] or "/"
            if space is None:
                space, common = s, folder
            elif s != space:
                where = f"{space or 'local files'} and {s or 'local files'}"
                raise InputError(f"INPUT {path!r}: a list file's entries must be in one place ({where})")
            while common is not None and not (folder == common or folder.startswith(common.rstrip("/") + "/")):
                common = common.rsplit("/", 1)[0] or "/"
    if space is None or common is None:
        raise InputError(f"INPUT: no images found in {path!r}")
    return (space + common.rstrip("/") + "/") if space else common.rstrip("/") + "/"


def _local_items(spec: str) -> list[InputItem]:
    """A folder (odd entries too: FIFOs, folders named like images each get a row), a glob
    (keys relative to the deepest folder holding every match) or one file."""
    if os.path.isdir(spec):
        spec = os.path.normpath(spec)
        base = len(spec.rstrip("/")) + 1
        return [InputItem(u, u[base:]) for u in walk_folder(spec, is_image_name)]
    if glob.has_magic(spec):
        paths = sorted(
            os.path.abspath(p) for p in glob.glob(spec, recursive=True) if not os.path.isdir(p) or is_image_name(p)
        )
        if not paths:
            return []
        common = os.path.commonpath([os.path.dirname(p) for p in paths])
        return [InputItem(p, os.path.relpath(p, common)) for p in paths]
    if os.path.isfile(spec):
        return [InputItem(os.path.normpath(spec), os.path.basename(spec))]
    raise InputError(f"INPUT: {spec!r} is not a folder, a glob, a list file or an s3:// prefix")


def open_listing(source: str, storage: Storage, page_size: int = 1000) -> Listing:
    """INPUT's listing (module docstring); its first page is read only by ``pages``."""
    if not is_local(source):
        prefix = source if source.endswith("/") else source + "/"
        if is_image_name(source) and not any(storage.list_pages(prefix, page_size=1)) and storage.exists(source):
            folder, _, name = source.rpartition("/")  # one object named whole
            return SmallListing(folder + "/", [InputItem(source, name)], page_size)
        return PrefixListing(prefix, storage, page_size)
    if os.path.isfile(source) and not is_image_name(source):
        return ListFile(_list_file_root(source), source, page_size)
    items = _local_items(source)
    if not items:
        raise InputError(f"INPUT: no images found in {source!r}")
    first = items[0]
    root = first.uri[: len(first.uri) - len(first.key)]
    if any(join_uri(root, i.key) != i.uri for i in items):
        raise InputError(f"INPUT {source!r}: its files do not share one folder")
    return SmallListing(root, items, page_size)


@dataclass(frozen=True)
class PlannedPage:
    tasks: list[tuple[InputItem, ImageTask]]  # each safe input and its task
    refused: list[tuple[InputItem, PermanentError]]  # keys refused alone, each with why
    repeats: int  # inputs of this page listed before (in this pass), left out
    cursor: str  # the listing's cursor after this page


Planned = tuple[list[tuple[InputItem, ImageTask]], list[tuple[InputItem, PermanentError]]]


def plan_page(items: list[InputItem], spec: JobSpec) -> Planned:
    """Each item's task (``shared.keys.task_for``), or why it has none."""
    tasks: list[tuple[InputItem, ImageTask]] = []
    refused: list[tuple[InputItem, PermanentError]] = []
    for item in items:
        try:
            tasks.append((item, task_for(spec, item.key)))
        except PermanentError as exc:
            refused.append((item, exc))
    return tasks, refused


def planned_pages(listing: Listing, spec: JobSpec, cursor: str = "") -> Iterator[PlannedPage]:
    """The listing from ``cursor``, page by page, each input once (a set of 8-byte digests) and
    planned (``plan_page``)."""
    seen: set[bytes] = set()
    for items, after in listing.pages(cursor):
        kept = []
        for item in items:
            ident = digest(identity(item.uri))
            if ident not in seen:
                seen.add(ident)
                kept.append(item)
        tasks, refused = plan_page(kept, spec)
        yield PlannedPage(tasks, refused, len(items) - len(kept), after)


def _nothing() -> None:
    pass


def check_whole_listing(listing: Listing, spec: JobSpec, tick: Callable[[], None] = _nothing) -> int:
    """Before any work or job: over the WHOLE listing, no output lands on an input and no two
    inputs share an output, wherever in the listing they are (two sets of 8-byte digests: the
    inputs' and the planned outputs'). Either refuses the whole run (``InputError`` naming up to
    five cases): which of two inputs should win is not ours to guess, and the operator's fix (a
    narrower INPUT, another OUTPUT) is the same for every key. Returns how many distinct inputs
    were listed."""
    inputs: set[bytes] = set()
    outputs: set[bytes] = set()
    onto: list[str] = []  # "output <- input", outputs on an input
    shared: list[str] = []  # outputs of two inputs
    n_onto = n_shared = 0
    for items, _ in listing.pages(""):
        tick()
        kept = []
        for item in items:
            ident = digest(identity(item.uri))
            if ident in inputs:
                continue  # a repeat: processed once
            if ident in outputs:
                n_onto += 1
                onto += [f"{item.uri} <- an input listed before it"][: 5 - len(onto)]
            inputs.add(ident)
            kept.append(item)
        for item in kept:
            try:
                output = output_for(spec.output, item.key)  # what task_for names it (no task built)
            except PermanentError:
                continue  # refused alone, in the pass that pushes or runs the keys
            ident = digest(identity(output))
            if ident in inputs:
                n_onto += 1
                onto += [f"{output} <- {item.uri}"][: 5 - len(onto)]
            if ident in outputs:
                n_shared += 1
                shared += [f"{output} <- {item.uri} and an input listed before it"][: 5 - len(shared)]
            outputs.add(ident)
    out, source = spec.output, spec.source
    if n_onto:
        raise InputError(
            f"OUTPUT {out!r} would overwrite {n_onto} of INPUT {source!r}'s own images "
            f"({'; '.join(onto[:5])}{'; ...' if n_onto > 5 else ''}): choose an OUTPUT that holds no input"
        )
    if n_shared:
        raise InputError(
            f"INPUT {source!r}: {n_shared} output(s) under OUTPUT {out!r} would be written by two or more different "
            f"inputs ({'; '.join(shared[:5])}{'; ...' if n_shared > 5 else ''}): name fewer inputs or split the run"
        )
    return len(inputs)
