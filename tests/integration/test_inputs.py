"""What INPUT may be for `veil run`: folder (recursive), glob, list file."""

import pytest

from orchestrator.listing import open_listing
from shared.errors import InputError
from shared.settings import Settings
from shared.storage import open_storage


def list_inputs(spec, storage):
    return list(open_listing(spec, storage).items())


@pytest.fixture
def tree(tmp_path):
    for rel in ("a/1.jpg", "a/b/2.PNG", "c/3.jpeg", "c/notes.txt", "manifest.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


@pytest.fixture(scope="module")
def storage():
    return open_storage(Settings.from_env({}))


def test_folder_is_recursive_and_keeps_relative_paths(tree, storage):
    assert [i.key for i in list_inputs(str(tree), storage)] == ["a/1.jpg", "a/b/2.PNG", "c/3.jpeg"]


def test_glob(tree, storage):
    assert [i.key for i in list_inputs(str(tree / "a" / "**" / "*.*"), storage)] == ["1.jpg", "b/2.PNG"]


def test_list_file_with_comments_and_relative_paths(tree, storage):
    (tree / "list.txt").write_text("# two photos\na/1.jpg\n\nc/3.jpeg\n")
    items = list_inputs(str(tree / "list.txt"), storage)
    assert [(i.uri, i.key) for i in items] == [(str(tree / "a/1.jpg"), "a/1.jpg"), (str(tree / "c/3.jpeg"), "c/3.jpeg")]


def test_nothing_found_is_named(tmp_path, storage):
    with pytest.raises(InputError, match="INPUT"):
        list_inputs(str(tmp_path / "missing"), storage)
    with pytest.raises(InputError, match="no images"):
        list_inputs(str(tmp_path), storage)
