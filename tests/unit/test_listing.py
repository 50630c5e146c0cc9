"""The one streamed INPUT of `veil run` and `veil submit`: a list file's root and pages, resuming
from a cursor, and the page planner (each key's task from `shared.keys.task_for`)."""

from __future__ import annotations

import pytest

from orchestrator.listing import InputItem, SmallListing, check_whole_listing, open_listing, plan_page
from shared.errors import InputError
from shared.keys import task_for
from shared.messages import JobSpec
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


def test_page_plan_is_the_task_builder_key_by_key():
    spec = JobSpec(job_id="j", name="j", input="s3://b/in/", source="s3://b/in", output="s3://b/out", seed=3)
    keys = ("a.jpg", "b/c.png", "d.tif", "manifest.jsonl/x.jpg", "_veil/y.jpg", "e/" + "n" * 1100 + ".jpg")
    items = [InputItem(f"s3://b/in/{k}", k) for k in keys]
    tasks, refused = plan_page(items, spec)
    assert [(i, t) for i, t in tasks] == [(i, task_for(spec, i.key)) for i in items[:3]]
    assert [t.output_uri for _, t in tasks] == ["s3://b/out/a.jpg", "s3://b/out/b/c.png", "s3://b/out/d.tif"]
    assert [(i, e.reason) for i, e in refused] == [
        (items[3], "unsafe_key"), (items[4], "unsafe_key"), (items[5], "name_too_long")
    ]  # fmt: skip
    with pytest.raises(InputError, match="would overwrite 1 of INPUT"):  # an output on an input refuses the run
        check_whole_listing(SmallListing("s3://b/", [InputItem("s3://b/in/a.jpg", "in/a.jpg")], 10), spec.model_copy(
            update={"input": "s3://b/", "output": "s3://b/"}))
