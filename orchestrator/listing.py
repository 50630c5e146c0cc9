"""``veil submit``'s INPUT, streamed page by page with a resume cursor (never the whole key list
in memory for an object-store prefix or a list file).

- ``s3://b/in`` (any object-store prefix): the store's own pages (S3: 1,000 keys), a prefix is a
  folder (``in/`` only, never ``inx/``); the cursor is the last key listed (S3 ``StartAfter``).
- a list file (one path or URI a line, ``#`` comments): read twice, never held: a first pass
  finds the deepest folder holding every entry (the keys' root, as ``veil run`` computes it),
  the second reads chunks of lines; the cursor is the byte offset after the last whole chunk.
  Its entries must share one namespace (one bucket, or the filesystem).
- a folder, glob or single file (local, small by nature): listed as ``veil run`` lists it, then
  cut into pages; the cursor is the number of entries already taken.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from orchestrator.inputs import InputItem, _is_image_name, _list
from shared.errors import InputError
from shared.storage import Storage, is_local, join_uri, split_uri

#: (items of one page, the cursor after it)
Page = tuple[list[InputItem], str]


@dataclass
class Listing:
    root: str  # every key's input URI is join_uri(root, key)

    def pages(self, cursor: str) -> Iterator[Page]:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class PrefixListing(Listing):
    storage: Storage

    def pages(self, cursor: str) -> Iterator[Page]:
        base = len(self.root)
        for uris in self.storage.list_pages(self.root, start_after=cursor):
            if uris:
                yield [InputItem(u, u[base:]) for u in uris if _is_image_name(u)], uris[-1]


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
    items: list[InputItem]
    page_size: int

    def pages(self, cursor: str) -> Iterator[Page]:
        for start in range(int(cursor or 0), len(self.items), self.page_size):
            end = start + self.page_size
            yield self.items[start:end], str(min(end, len(self.items)))


def _entry(raw: bytes, list_file: str) -> str | None:
    line = raw.decode().strip()
    if not line or line.startswith("#"):
        return None
    if line.startswith("s3://"):
        return line
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
                raise InputError(f"INPUT {path!r}: veil submit needs a list file's entries in one place ({where})")
            while common is not None and not (folder == common or folder.startswith(common.rstrip("/") + "/")):
                common = common.rsplit("/", 1)[0] or "/"
    if space is None or common is None:
        raise InputError(f"INPUT: no images found in {path!r}")
    return (space + common.rstrip("/") + "/") if space else common.rstrip("/") + "/"


def open_listing(source: str, storage: Storage, page_size: int = 1000) -> Listing:
    if not is_local(source):
        return PrefixListing(source if source.endswith("/") else source + "/", storage)
    if os.path.isfile(source) and not _is_image_name(source):
        return ListFile(_list_file_root(source), source, page_size)
    items = _list(source, storage)
    first = items[0]
    root = first.uri[: len(first.uri) - len(first.key)]
    if any(join_uri(root, i.key) != i.uri for i in items):
        raise InputError(f"INPUT {source!r}: its files do not share one folder")
    return SmallListing(root, items, page_size)
