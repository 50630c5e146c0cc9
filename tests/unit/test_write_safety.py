"""Nothing is written where it must not be: keys that leave OUTPUT, forged output URIs in
messages, temporary files. No services: local folders only (the S3 forms are in
tests/integration/test_write_safety.py against moto_server)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from orchestrator.listing import InputItem, SmallListing, check_whole_listing, plan_page
from shared.errors import InputError, IsADirectoryStorageError, UnsafeKeyError
from shared.keys import task_for
from shared.messages import FaceAnalysis, ImageTask, JobSpec, PromptTask, ResultRecord, Status
from shared.results import publish
from shared.settings import Settings
from shared.storage import check_output_uri, open_storage, safe_join

UNSAFE_KEYS = [
    "../../../../tmp/x.jpg",  # from s3://bkt/in/../../../../tmp/x.jpg
    "/tmp/x.jpg",  # from s3://bkt/in//tmp/x.jpg
    "sub/../../esc.jpg",
    "a/./b.jpg",
    "a//b.jpg",
    "a\x00.jpg",
    "",
    "manifest.parts/x.jpg",  # would be read back as manifest rows
    "manifest.jsonl",
    ".veil.lock",
]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
@pytest.mark.parametrize("root", ["LOCAL", "s3://bkt/out/"])
def test_safe_join_refuses_keys_that_leave_the_root(key, root, tmp_path):
    with pytest.raises(UnsafeKeyError) as err:
        safe_join(str(tmp_path) if root == "LOCAL" else root, key)
    assert err.value.reason == "unsafe_key"


def test_safe_join_keeps_ordinary_keys_under_the_root(tmp_path):
    assert safe_join(str(tmp_path), "a/b c/..x.jpg") == str(tmp_path / "a" / "b c" / "..x.jpg")
    assert safe_join("s3://bkt/out", "a/b.jpg") == "s3://bkt/out/a/b.jpg"
    assert safe_join("s3://bkt/out/", "a/b.jpg") == "s3://bkt/out/a/b.jpg"


def test_safe_join_refuses_a_symlink_out_of_the_root(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere)
    with pytest.raises(UnsafeKeyError, match="outside OUTPUT"):
        safe_join(str(out), "link/x.jpg")


def _spec(output: str, root: str = "s3://bkt/in/") -> JobSpec:
    return JobSpec(job_id="job", name="job", input=root, source=root, output=output)


def test_image_task_builder_refuses_an_unsafe_key(tmp_path):
    with pytest.raises(UnsafeKeyError):
        task_for(_spec(str(tmp_path)), "../../../../tmp/x.jpg")


def test_plan_refuses_unsafe_keys_one_by_one(tmp_path):
    items = [InputItem("s3://bkt/in/ok.jpg", "ok.jpg"), InputItem("s3://bkt/in//tmp/x.jpg", "/tmp/x.jpg")]
    tasks, refused = plan_page(items, _spec(str(tmp_path)))
    assert [t.output_uri for _, t in tasks] == [str(tmp_path / "ok.jpg")]
    assert [(i.uri, e.reason) for i, e in refused] == [("s3://bkt/in//tmp/x.jpg", "unsafe_key")]


def test_plan_refuses_two_inputs_on_one_output(tmp_path):
    items = [InputItem(f"s3://bkt/p/{k}", k) for k in ("a.gif", "b.jpg", "a.gif.png")]  # a.gif -> a.gif.png
    listing = SmallListing("s3://bkt/p/", items, page_size=2)  # the two on different pages
    with pytest.raises(InputError, match="two or more different inputs") as err:
        check_whole_listing(listing, _spec("s3://bkt/out", "s3://bkt/p/"))
    assert "s3://bkt/out/a.gif.png <- s3://bkt/p/a.gif.png" in str(err.value)


def test_plan_refuses_an_output_on_an_input_and_counts_them(tmp_path):
    items = [InputItem(str(tmp_path / k), k) for k in ("a.jpg", "b.jpg", "c.gif")]
    listing = SmallListing(str(tmp_path) + "/", items, page_size=1)
    with pytest.raises(InputError, match="would overwrite 2 of INPUT") as err:  # c.gif's output is c.gif.png
        check_whole_listing(listing, _spec(str(tmp_path), str(tmp_path) + "/"))
    assert f"{tmp_path / 'a.jpg'} <- {tmp_path / 'a.jpg'}" in str(err.value)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bkt/out/../x.jpg",
        "s3://bkt/out//x.jpg",
        "s3://bkt/out/./x.jpg",
        "/srv/out/../../etc/x.jpg",
        "out/x.jpg",
        "s3://bkt/out/x\x00.jpg",
        "/srv/out/x\x00.jpg",
    ],
)
def test_a_received_output_uri_is_checked(uri):
    with pytest.raises(UnsafeKeyError):
        check_output_uri(uri)


def test_a_safe_received_output_uri_passes():
    for uri in ("s3://bkt/out/a/b.jpg", "/srv/out/a b/c.jpg"):
        assert check_output_uri(uri) == uri


def _prompt(output_uri: str) -> PromptTask:
    analysis = FaceAnalysis(face_box=[0, 0, 1, 1, 1], celeba_scores={}, age=30, ethnicity="x", deepface_gender="y")
    return PromptTask(
        job_id="j",
        input_uri="s3://bkt/in/a.jpg",
        output_uri=output_uri,
        seed=1,
        prompt="p",
        negative_prompt="n",
        analysis=analysis,
        model_sha256={},
    )


def test_worker_stages_refuse_a_forged_output_uri(tmp_path):
    from workers.cpu.stage import analyze
    from workers.gpu.batching import store_image

    forged = str(tmp_path / "out" / ".." / "escaped.jpg")
    task = ImageTask(job_id="j", input_uri="s3://bkt/in/a.jpg", output_uri=forged, seed=1)
    with pytest.raises(UnsafeKeyError):
        analyze(task, b"", None)  # type: ignore[arg-type]  # refused before the models are touched
    storage = open_storage(Settings.from_env({}))
    with pytest.raises(UnsafeKeyError):
        store_image(_prompt(forged), np.zeros((8, 8, 3), np.uint8), storage)
    record = ResultRecord(input="s3://bkt/in/a.jpg", output=None, status=Status.FAILED, reason="unsafe_key")
    publish(record, forged, storage)  # no sidecar beside a forged output
    assert list(tmp_path.rglob("*")) == []


def test_a_255_byte_name_writes(tmp_path):
    storage = open_storage(Settings.from_env({}))
    name = "x" * 250 + ".jpeg"  # 255 bytes: the longest name most filesystems allow
    storage.write(str(tmp_path / name), b"data")
    assert (tmp_path / name).read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_two_threads_writing_one_target_leave_a_whole_file_and_no_tmp(tmp_path):
    storage = open_storage(Settings.from_env({}))
    target = tmp_path / "a.jpg"
    payloads = [bytes([i]) * (4 << 20) for i in (1, 2)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(20):
                storage.write(str(target), data)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert sorted(os.listdir(tmp_path)) == ["a.jpg"]


def test_a_failed_write_leaves_no_tmp(tmp_path):
    storage = open_storage(Settings.from_env({}))
    (tmp_path / "dir.jpg").mkdir()  # os.replace onto a folder fails
    with pytest.raises(IsADirectoryStorageError):  # permanent (issue 18): never sent again
        storage.write(str(tmp_path / "dir.jpg"), b"x")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["dir.jpg"]
