"""A storage scheme added in ``shared/storage.py`` alone works through every orchestrator path.

``folderfs://bucket/key`` is a real backend kept in a local folder (one sub-folder per bucket),
registered the way ``gs://`` or ``az://`` would be: no orchestrator code knows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import shared.storage as storage_module
from orchestrator.embedded import Manifest
from orchestrator.outputcheck import check_output_outside_input as _check_output_outside_input
from orchestrator.listing import open_listing
from shared.errors import InputError
from shared.imageio import output_name
from shared.keys import digest
from shared.messages import ResultRecord, Status
from shared.settings import Settings
from shared.storage import ObjectStoreBackend, join_uri, open_storage, register_backend


def list_inputs(spec, storage):
    return list(open_listing(spec, storage).items())


class FolderBackend(ObjectStoreBackend):
    scheme: ClassVar[str] = "folderfs"
    root: ClassVar[Path] = Path("unset")
    content_types: ClassVar[dict[str, str | None]] = {}

    def __init__(self, settings: Settings) -> None:
        pass

    def _path(self, uri: str) -> Path:
        bucket, key = self.parse(uri)
        return self.root / bucket / key

    def read(self, uri: str) -> bytes:
        return self._path(uri).read_bytes()

    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        self._path(uri).parent.mkdir(parents=True, exist_ok=True)
        self._path(uri).write_bytes(data)
        self.content_types[uri] = content_type

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        bucket, key_prefix = self.parse(prefix)
        base = self.root / bucket
        keys = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        yield from (f"folderfs://{bucket}/{k}" for k in keys if k.startswith(key_prefix))


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module, "_BACKENDS", dict(storage_module._BACKENDS))
    monkeypatch.setattr(FolderBackend, "root", tmp_path / "store")
    monkeypatch.setattr(FolderBackend, "content_types", {})
    register_backend(FolderBackend)
    store = open_storage(Settings.from_env({}))
    for key in ("in/a/1.jpg", "in/b.PNG", "in/notes.txt", "other/c.jpg"):
        store.write(f"folderfs://bkt/{key}", key.encode())
    return store


def test_listing_a_prefix_gives_relative_keys(storage):
    items = list_inputs("folderfs://bkt/in", storage)
    assert [(i.uri, i.key) for i in items] == [("folderfs://bkt/in/a/1.jpg", "a/1.jpg"),
                                               ("folderfs://bkt/in/b.PNG", "b.PNG")]


def test_outputs_join_under_the_new_scheme(storage):
    item = list_inputs("folderfs://bkt/in/", storage)[0]
    out = join_uri("folderfs://bkt/out/", output_name(item.key))
    assert out == "folderfs://bkt/out/a/1.jpg"
    storage.write(out, b"image")
    assert (FolderBackend.root / "bkt" / "out" / "a" / "1.jpg").read_bytes() == b"image"


def test_list_file_keys_are_relative_to_its_common_prefix_in_one_namespace(storage, tmp_path):
    (tmp_path / "local" / "x").mkdir(parents=True)
    (tmp_path / "local" / "x" / "d.jpg").write_bytes(b"d")
    listing = tmp_path / "list.txt"
    listing.write_text("folderfs://bkt/in/a/1.jpg\nfolderfs://bkt/other/c.jpg\n")
    assert [i.key for i in list_inputs(str(listing), storage)] == ["in/a/1.jpg", "other/c.jpg"]
    # one input root per run, veil run's as veil submit's (JobSpec.input): one namespace
    listing.write_text("folderfs://bkt/in/a/1.jpg\nlocal/x/d.jpg\n")
    with pytest.raises(InputError, match="one place"):
        list_inputs(str(listing), storage)


def test_manifest_under_the_new_scheme_uses_parts_and_folds(storage):
    manifest = Manifest("folderfs://bkt/out", storage)
    manifest.append([ResultRecord(input="folderfs://bkt/in/b.PNG", output=None, status=Status.NO_FACE)])
    manifest.close()
    assert list(storage.list("folderfs://bkt/out")) == ["folderfs://bkt/out/manifest.jsonl"]
    assert Manifest("folderfs://bkt/out", storage).finished_inputs() == {digest("folderfs://bkt/in/b.PNG")}


def test_output_inside_input_is_refused_under_the_new_scheme(storage):
    with pytest.raises(InputError, match="inside INPUT"):
        _check_output_outside_input("folderfs://bkt/in", "folderfs://bkt/in/out")
    _check_output_outside_input("folderfs://bkt/in", "folderfs://bkt/in2")  # a sibling prefix is fine
    _check_output_outside_input("folderfs://bkt/in", "/tmp/in")  # another scheme is never inside


def test_unknown_scheme_is_named(storage):
    with pytest.raises(InputError, match="gs://"):
        list_inputs("gs://bucket/in", storage)


def test_gpu_stage_uploads_each_format_with_its_content_type(storage):
    from shared.messages import FaceAnalysis, PromptTask
    from workers.gpu.batching import store_image

    analysis = FaceAnalysis.model_construct(face_box=[0, 0, 1, 1, 1], celeba_scores={})
    for name, expected in [("a.bmp", "image/bmp"), ("b.tif", "image/tiff"), ("c.jpg", "image/jpeg"),
                           ("d.gif.png", "image/png")]:
        uri = f"folderfs://bkt/out/{name}"
        task = PromptTask.model_construct(output_uri=uri, analysis=analysis)
        store_image(task, np.zeros((8, 8, 3), np.uint8), storage)
        assert FolderBackend.content_types[uri] == expected, name
