"""Hostile keys, inputs that are also outputs, two inputs for one output, two runs on one OUTPUT:
`veil run` and the input lister against moto_server and real subprocesses. None of these cases
needs a generated image: each is refused before the models load (or lists only)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from orchestrator.embedded import run
from orchestrator.listing import open_listing, planned_pages
from orchestrator.outputlock import LOCK_NAME, output_lock
from shared.errors import InputError, OutputInUseError
from shared.messages import JobSpec
from shared.settings import Settings
from shared.storage import open_storage
from tests.services import ROOT, moto_s3, wait_for, worker_env


def list_inputs(spec, storage):
    return list(open_listing(spec, storage).items())


def s3_settings(endpoint: str, **kw) -> Settings:
    return Settings.from_env({}, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s", **kw)


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# 5. Path traversal from S3 keys


def test_traversal_keys_are_refused_and_nothing_escapes(tmp_path, tiny_models):
    tag = uuid.uuid4().hex[:8]
    hostile = [
        f"in/../../../../tmp/veil-esc-{tag}.jpg",
        f"in//tmp/veil-esc2-{tag}.jpg",
        "in/sub/../../esc.jpg",
        "in/manifest.parts/evil.jpg",
    ]
    out = tmp_path / "deep" / "out"
    with moto_s3() as endpoint:
        client = open_storage(s3_settings(endpoint)).backend("s3://bkt/x")._client
        client.create_bucket(Bucket="bkt")
        for key in hostile:
            client.put_object(Bucket="bkt", Key=key, Body=b"not an image")
        assert {o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]} == set(hostile)
        env = worker_env(
            models_dir=tiny_models, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s"
        )
        local = cli("run", "s3://bkt/in/", str(out), "-q", env=env)
        remote = cli("run", "s3://bkt/in/", "s3://bkt/out/", "-q", env=env)
        s3_rows = [
            json.loads(x)
            for x in client.get_object(Bucket="bkt", Key="out/manifest.jsonl")["Body"].read().decode().splitlines()
        ]
        s3_keys = {o["Key"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]}
    for proc, rows in (
        (local, [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]),
        (remote, s3_rows),
    ):
        assert proc.returncode == 1, proc.stderr[-2000:]  # failed rows: exit 1, never "done"
        assert sorted(r["input"] for r in rows) == sorted(f"s3://bkt/{k}" for k in hostile)
        assert all(
            r["status"] == "failed" and r["reason"].startswith("unsafe_key") and r["output"] is None for r in rows
        ), rows
        assert "failed 4" in proc.stdout
    assert not os.path.exists(f"/tmp/veil-esc-{tag}.jpg") and not os.path.exists(f"/tmp/veil-esc2-{tag}.jpg")
    assert not (tmp_path / "deep" / "esc.jpg").exists() and not (tmp_path / "esc.jpg").exists()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]  # the lock file removed at the end
    assert s3_keys - set(hostile) == {"out/manifest.jsonl"}  # no image, and the lock object is gone


# 6. Originals overwritten: every INPUT form, refused before any model loads


@pytest.fixture
def photos(tmp_path, faces_dir):
    src = tmp_path / "dir"
    src.mkdir()
    for name in ("id01_5.jpg", "id02_12.jpg"):
        shutil.copy(faces_dir / name, src / name)
    (src / "list.txt").write_text("id01_5.jpg\nid02_12.jpg\n")
    return src


def _refused(spec: str, output: str, settings: Settings, storage) -> str:
    # refused before any model loads: with no weights at all, a load would raise MissingWeightsError
    no_models = Path(tempfile.mkdtemp(prefix="veil-no-models-"))
    with pytest.raises(InputError) as err:
        run(spec, output, settings.model_copy(update={"models_dir": no_models}), storage, progress=False)
    return str(err.value)


@pytest.mark.parametrize("form", ["folder", "glob", "single file", "list file"])
def test_output_on_an_input_is_refused_for_every_local_form(form, photos, tiny_models):
    spec = {
        "folder": photos,
        "glob": photos / "*.jpg",
        "single file": photos / "id01_5.jpg",
        "list file": photos / "list.txt",
    }[form]
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    settings = Settings.from_env({}, models_dir=tiny_models)
    message = _refused(str(spec), str(photos), settings, open_storage(settings))
    assert f"OUTPUT {str(photos)!r}" in message and f"INPUT {str(spec)!r}" in message
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # untouched, no lock, no manifest


def test_output_on_an_s3_input_prefix_is_refused(tiny_models):
    with moto_s3() as endpoint:
        settings = s3_settings(endpoint, models_dir=tiny_models)
        storage = open_storage(settings)
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        storage.write("s3://bkt/in/a.jpg", b"original")
        for spec, output in (("s3://bkt/in/", "s3://bkt/in"), ("s3://bkt/in", "s3://bkt/in/")):
            message = _refused(spec, output, settings, storage)
            assert repr(output) in message and repr(spec) in message
        assert list(storage.list("s3://bkt/")) == ["s3://bkt/in/a.jpg"]
        assert storage.read("s3://bkt/in/a.jpg") == b"original"


def test_the_glob_of_the_issue_is_refused_by_the_cli(photos, tiny_models):
    before = (photos / "id01_5.jpg").read_bytes()
    proc = cli("run", str(photos / "*.jpg"), str(photos), env=worker_env(models_dir=tiny_models), timeout=120)
    assert proc.returncode == 2 and "would overwrite 2 of INPUT" in proc.stderr, proc.stderr[-2000:]
    assert (photos / "id01_5.jpg").read_bytes() == before


# 7. Two inputs, one output


def test_a_prefix_is_a_folder():
    with moto_s3() as endpoint:
        storage = open_storage(s3_settings(endpoint))
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        for key in ("in/good.jpg", "inx/good.jpg", "in/sub/b.png"):
            storage.write(f"s3://bkt/{key}", b"x")
        for spec in ("s3://bkt/in", "s3://bkt/in/"):
            assert [(i.uri, i.key) for i in list_inputs(spec, storage)] == [
                ("s3://bkt/in/good.jpg", "good.jpg"),
                ("s3://bkt/in/sub/b.png", "sub/b.png"),
            ]
        assert [i.key for i in list_inputs("s3://bkt/inx/good.jpg", storage)] == ["good.jpg"]  # one object


def test_a_file_listed_twice_is_processed_once(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "list.txt").write_text(f"a.jpg\n./a.jpg\n{tmp_path / 'a.jpg'}\n")
    listing = open_listing(str(tmp_path / "list.txt"), open_storage(Settings.from_env({})))
    spec = JobSpec(job_id="j", name="j", input=listing.root, source="list.txt", output=str(tmp_path / "out"))
    pages = list(planned_pages(listing, spec))
    assert [t.input_uri for p in pages for _, t in p.tasks] == [str(tmp_path / "a.jpg")]
    assert sum(p.repeats for p in pages) == 2


def test_colliding_outputs_refuse_the_run_with_the_list(tmp_path, tiny_models):
    with moto_s3() as endpoint:
        settings = s3_settings(endpoint, models_dir=tiny_models)
        storage = open_storage(settings)
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        for key in ("p/a.gif", "p/q/b.jpg", "p/a.gif.png"):  # a.gif's output is a.gif.png, a.gif.png's too
            storage.write(f"s3://bkt/{key}", b"x")
        (tmp_path / "list.txt").write_text("s3://bkt/p/a.gif\ns3://bkt/p/q/b.jpg\ns3://bkt/p/a.gif.png\n")
        message = _refused(str(tmp_path / "list.txt"), str(tmp_path / "out"), settings, storage)
    assert "two or more different inputs" in message and "s3://bkt/p/a.gif.png" in message
    assert str(tmp_path / "out" / "a.gif.png") in message
    assert not (tmp_path / "out").exists()


# 13. One veil run per OUTPUT


def test_a_second_run_on_one_output_refuses(tmp_path, tiny_models, faces_dir):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    # enough work (4 photos x 15 steps, about a minute here) that the first run still holds the
    # lock when the second has started: with one photo at 2 steps it could finish first (seen in CI)
    for name in ("id01_5.jpg", "id02_12.jpg", "id03_16.jpg", "id04_38.jpg"):
        shutil.copy(faces_dir / name, src / name)
    env = worker_env(models_dir=tiny_models, steps=15, batch_size=1)
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(src), str(out), "-q", "--device", "cpu"]
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / LOCK_NAME
        wait_for(lambda: lock.exists() and lock.read_text(), 120, "the first run's lock")
        second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second started: test proves nothing"
        assert second.returncode == 2, second.stderr[-2000:]
        assert "in use by another veil run" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    with output_lock(str(out), open_storage(Settings.from_env({}))):
        pass  # the lock went with its process, however it ended


def test_s3_output_lock(tiny_models):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with moto_s3() as endpoint:
        storage = open_storage(s3_settings(endpoint))
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        uri = f"s3://bkt/out/{LOCK_NAME}"
        with output_lock("s3://bkt/out", storage):
            assert json.loads(storage.read(uri))["pid"] == os.getpid()
            with pytest.raises(OutputInUseError, match=f"pid {os.getpid()}"):
                with output_lock("s3://bkt/out/", storage):
                    pass
        assert not storage.exists(uri)  # released
        import socket

        storage.write(uri, json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}).encode())
        with output_lock("s3://bkt/out", storage):  # its owner is dead, on this host: stale, taken over
            assert json.loads(storage.read(uri))["pid"] == os.getpid()
        storage.write(uri, json.dumps({"host": "elsewhere", "pid": 1, "started": 0}).encode())
        with pytest.raises(OutputInUseError, match=f"delete {uri}"):
            with output_lock("s3://bkt/out", storage):
                pass


def test_local_lock_is_removed_and_a_removed_file_is_never_the_lock(tmp_path):
    """The lock file goes with the run; a run that opened it just before the holder removed it
    must not lock that orphan (two runs would then hold two different files)."""
    import fcntl

    from orchestrator.outputlock import _locked_file

    out, storage = tmp_path / "out", open_storage(Settings.from_env({}))
    with output_lock(str(out), storage):
        assert (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists()
    # the race, by hand: a descriptor of a lock file that is then removed
    path = out / LOCK_NAME
    orphan = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.unlink(path)
    try:
        fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an orphan can be locked by anyone...
        fd = _locked_file(str(path), str(out))  # ...so the lock is the file the path names
        assert os.fstat(fd).st_ino == os.stat(path).st_ino != os.fstat(orphan).st_ino
        os.close(fd)
    finally:
        os.close(orphan)
