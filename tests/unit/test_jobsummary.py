"""The finalize's pure parts, no services: the local sidecar walk (deterministic order, job files
and symlinks left out), the streaming writer (nothing appears on failure), rows of one job only."""

from __future__ import annotations

import os

import pytest

from shared.jobsummary import job_rows, sidecars
from shared.settings import Settings
from shared.storage import open_storage
from tests import sidecars as synthetic


def test_local_walk_is_sorted_per_folder_and_skips_job_files_and_symlinks(tmp_path):
    out = tmp_path / "out"
    for rel in ("b/2.jpg.json", "b/1.jpg.json", "a.jpg.json", "a/z.jpg.json", "b/1.jpg", "_veil/J/summary.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("{}")
    os.symlink("/etc/hostname", out / "b" / "0.jpg.json")  # a symlink is never followed
    storage = open_storage(Settings.from_env({}))
    found = [os.path.relpath(p, out) for p in sidecars(storage, str(out))]
    assert found == ["a/z.jpg.json", "a.jpg.json", "b/1.jpg.json", "b/2.jpg.json"]
    assert found == [os.path.relpath(p, out) for p in sidecars(storage, str(out))]  # same order every time


def test_writer_leaves_nothing_on_failure_and_rows_are_only_the_jobs(tmp_path):
    storage = open_storage(Settings.from_env({}))
    target = tmp_path / "m" / "manifest.jsonl"
    with pytest.raises(RuntimeError), storage.open_writer(str(target)) as w:
        w.write(b"half a manifest\n")
        raise RuntimeError("died mid-way")
    assert not target.exists() and os.listdir(target.parent) == []
    with storage.open_writer(str(target)) as w:
        w.write(b"a\n")
        w.write(b"b\n")
    assert target.read_bytes() == b"a\nb\n"

    out = tmp_path / "out"
    synthetic.write_local(str(out), [("mine", i) for i in range(30)] + [("other", i) for i in range(30, 50)])
    (out / "00" / "0000097.jpg.json").write_text("{damaged")  # key 97 of neither: skipped
    rows = list(job_rows(storage, sidecars(storage, str(out)), "mine", threads=3))
    assert len(rows) == 30 and all(b'"job_id":"mine"' in r.line for r in rows)
