"""`veil submit`'s streamed INPUT: a list file's root and pages, resuming from a cursor, and the
object-store page planner agreeing with `plan_outputs`."""

from __future__ import annotations

import pytest

from orchestrator.inputs import InputItem, plan_outputs
from orchestrator.listing import open_listing
from orchestrator.submit import _plan_object_page
from shared.errors import InputError
from shared.settings import Settings
from shared.storage import open_storage


def _pages(listing, cursor=""):
    return list(listing.pages(cursor))


def test_list_file_pages_resume_after_the_cursor(tmp_path):
    lines = ["# comment", "", *[f"s3://b/data/in/{i % 3}/{i:03d}.jpg" for i in range(25)]]
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(lines) + "\n")
    listing = open_listing(str(path), open_storage(Settings.from_env({})), page_size=10)
    assert listing.root == "s3://b/data/in/"
    pages = _pages(listing)
    assert [len(items) for items, _ in pages] == [10, 10, 5]
    assert pages[0][0][0] == InputItem("s3://b/data/in/0/000.jpg", "0/000.jpg")
    every = [i.key for items, _ in pages for i in items]
    assert len(every) == 25 == len(set(every))
    resumed = _pages(listing, pages[0][1])  # the byte offset after the first page
    assert [i.key for items, _ in resumed for i in items] == every[10:]


def test_list_file_of_local_paths_and_one_place_only(tmp_path):
    (tmp_path / "a").mkdir()
    path = tmp_path / "keys.txt"
    path.write_text("a/x.jpg\na/y/z.png\n")  # relative to the list file's folder
    listing = open_listing(str(path), open_storage(Settings.from_env({})))
    assert listing.root == str(tmp_path / "a") + "/"
    assert [i.key for items, _ in _pages(listing) for i in items] == ["x.jpg", "y/z.png"]
    path.write_text("a/x.jpg\ns3://b/y.jpg\n")
    with pytest.raises(InputError, match="one place"):
        open_listing(str(path), open_storage(Settings.from_env({})))


def test_object_page_plan_agrees_with_plan_outputs():
    items = [InputItem(f"s3://b/in/{k}", k) for k in ("a.jpg", "b/c.png", "d.tif", "manifest.jsonl/x.jpg", "_veil/y.jpg")]
    fast = _plan_object_page(items, "s3://b/out", "s3://b/in")
    slow = plan_outputs(items, "s3://b/out", "s3://b/in")
    assert fast.outputs == slow.outputs
    assert [i for i, _ in fast.unsafe] == [i for i, _ in slow.unsafe] == items[3:]
    with pytest.raises(InputError):  # an output on an input refuses the page, as plan_outputs does
        _plan_object_page([InputItem("s3://b/in/a.jpg", "in/a.jpg")], "s3://b/", "s3://b/")
