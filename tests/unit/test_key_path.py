"""One key path (issue 21): the one "is this key finished?" rule applied the same way by the
distributed path (a sidecar: the workers' check and `veil submit`'s listing) and by `veil run`
(its manifest), and the task builder's output names. Local folders only."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from orchestrator.embedded import Manifest
from orchestrator.submit import done_outputs
from shared.errors import NameTooLongError
from shared.imageio import _suffix, output_name
from shared.keys import digest, is_finished, task_for
from shared.messages import JobSpec, ResultRecord, Status
from shared.results import count_if_finished_may_end_job, sidecar_uri, write_sidecar
from shared.settings import Settings
from shared.storage import open_storage

KEYS = {"a.jpg": Status.DONE, "b/c.png": Status.NO_FACE, "d.gif": Status.FAILED}


def _spec(tmp_path) -> JobSpec:
    return JobSpec(job_id="j", name="j", input=str(tmp_path / "in"), source=str(tmp_path / "in"),
                   output=str(tmp_path / "out"))  # fmt: skip


def test_every_outcome_finishes_a_key_in_both_modes(tmp_path):
    storage = open_storage(Settings.from_env({}))
    spec = _spec(tmp_path)
    manifest = Manifest(spec.output, storage)
    tasks = {key: task_for(spec, key) for key in KEYS}
    for key, status in KEYS.items():
        task = tasks[key]
        record = ResultRecord(input=task.input_uri, output=None, status=status, reason="r", job_id="j")
        write_sidecar(record, task.output_uri, storage)  # the distributed path's outcome record
        manifest.append([record])  # veil run's
    # the distributed path: each worker's check, and veil submit's one listing of the sidecars
    assert all(count_if_finished_may_end_job(t, storage) for t in tasks.values())
    assert done_outputs(spec.output, storage) == {digest(output_name(k)) for k in KEYS}
    # veil run: the same keys finished, by the same rule
    assert manifest.finished_inputs() == {digest(t.input_uri) for t in tasks.values()}
    assert all(is_finished(s) for s in KEYS.values()) and not is_finished(None)
    # failures tried again only when asked: veil run --retry-failed, veil retry (overwrite)
    assert manifest.finished_inputs(retry_failed=True) == {digest(tasks[k].input_uri) for k in ("a.jpg", "b/c.png")}
    assert not is_finished(Status.FAILED, retry_failed=True) and is_finished(Status.NO_FACE, retry_failed=True)
    assert not count_if_finished_may_end_job(tasks["a.jpg"].model_copy(update={"overwrite": True}), storage)
    # a damaged sidecar is no outcome: the key is done again
    with open(sidecar_uri(tasks["a.jpg"].output_uri), "w") as f:
        f.write('{"input": "cut sh')
    assert not count_if_finished_may_end_job(tasks["a.jpg"], storage)


def test_the_task_builder_names_outputs_as_before(tmp_path):
    names = ["a.jpg", "a/b.JPG", "a/.jpg", ".jpg", "a/b.", "..jpg", "a/..", "a/b.tar.gz", "a.b/c", "x.GIF", "é.JPEG"]
    assert [_suffix(n) for n in names] == [PurePosixPath(n).suffix for n in names]
    spec = _spec(tmp_path)
    task = task_for(spec, "x/y.gif")
    assert task.input_uri == str(tmp_path / "in" / "x" / "y.gif")
    assert task.output_uri == str(tmp_path / "out" / "x" / "y.gif.png")
    s3 = spec.model_copy(update={"input": "s3://b/in", "output": "s3://b/out/"})
    assert (task_for(s3, "x/y.jpg").input_uri, task_for(s3, "x/y.jpg").output_uri) == ("s3://b/in/x/y.jpg",
                                                                                       "s3://b/out/x/y.jpg")
    with pytest.raises(NameTooLongError, match="over 1024"):
        task_for(s3, "k" * 1020 + ".jpg")
