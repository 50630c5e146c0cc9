"""One key path (issue 21), against real Redis and moto_server: `veil submit` + the feeder and
`veil run` build the same task for the same key, and `veil run` of an S3 prefix lists it page by
page (a small page size; S3 requests counted by a botocore event hook on the real client) and
applies the one finished rule (a failed row finishes a key; `--retry-failed` redoes it)."""

from __future__ import annotations

import base64
import json

import redis

from orchestrator.embedded import RunSummary, keys_to_do, run
from orchestrator.listing import open_listing
from orchestrator.submit import submit
from shared.jobs import JobStore, job_key
from shared.keys import spec_for
from shared.messages import ImageTask
from shared.settings import Method, Settings
from shared.storage import open_storage
from tests.services import moto_s3, redis_url
from workers.celery_app import configure
from workers.feeder import Feeder

DB = 10
KEYS = ["a.jpg", "sub/b.png", "sub/deeper/c.gif", "d.JPEG"]


def _s3(endpoint: str, **kw) -> Settings:
    return Settings.from_env({}, s3_endpoint_url=endpoint, s3_access_key_id="k", s3_secret_access_key="s", **kw)


def _count_lists(storage) -> list[int]:
    """How many ListObjectsV2 requests the storage's real S3 client sends from now on."""
    calls = [0]
    client = storage.backend("s3://x/")._client
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_run_and_the_feeder_build_the_same_task_for_each_key(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for key in KEYS:
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(b"x")
    url = redis_url(DB)
    settings = Settings.from_env({}, broker_url=url, cpu_queue=f"cpu-{DB}", gpu_queue=f"gpu-{DB}", seed=11,
                                 method=Method.BLUR)  # fmt: skip
    configure(settings)
    storage, jobs = open_storage(settings), JobStore.from_url(url)
    # the distributed path: veil submit stores the spec and the keys, the feeder builds the messages
    job = submit(str(src), str(out), settings, storage, jobs, name="same", feed=False)
    assert Feeder(settings, jobs).feed_once() == len(KEYS)
    r = redis.Redis.from_url(url)
    assert r.llen(job_key(job.job_id, "pending")) == 0
    fed = [ImageTask.model_validate(json.loads(base64.b64decode(json.loads(m)["body"]))[0][0])
           for m in r.lrange(f"cpu-{DB}", 0, -1)]  # fmt: skip
    # veil run: its listing and its spec, its stream of tasks
    listing = open_listing(str(src), storage)
    spec = spec_for("run", "veil-run", listing.root, str(src), str(out), settings)
    ran = list(keys_to_do(listing, spec, set(), RunSummary(), None))
    assert len(ran) == len(fed) == len(KEYS)
    by_input = {t.input_uri: t for t in fed}
    assert set(by_input) == {t.input_uri for t in ran}  # type: ignore[union-attr]
    for t in ran:
        assert isinstance(t, ImageTask)
        assert t.model_copy(update={"job_id": job.job_id}) == by_input[t.input_uri]  # field for field
    assert by_input[str(src / "sub/deeper/c.gif")].output_uri == str(out / "sub/deeper/c.gif.png")


def test_run_streams_an_s3_prefix_page_by_page_and_keeps_failed_keys_finished(tmp_path):
    with moto_s3() as endpoint:
        settings = _s3(endpoint, method=Method.BLUR, device="cpu")
        storage = open_storage(settings)
        storage.backend("s3://bkt/x")._client.create_bucket(Bucket="bkt")
        for i in range(25):
            storage.write(f"s3://bkt/in/{i % 3}/{i:02d}.jpg", b"not an image")  # each key: a failed row
        storage.write("s3://bkt/inx/00.jpg", b"x")  # beside the prefix: never listed
        calls = _count_lists(storage)
        # 1. veil run's stream of keys: one page listed before the first key, the rest as needed
        listing = open_listing("s3://bkt/in", storage, page_size=10)
        spec = spec_for("run", "veil-run", listing.root, "s3://bkt/in", str(tmp_path / "out"), settings)
        keys = keys_to_do(listing, spec, set(), RunSummary(), None)
        first = next(keys)
        assert calls[0] == 1 and first.input_uri == "s3://bkt/in/0/00.jpg"  # type: ignore[union-attr]
        assert len([first, *keys]) == 25 and calls[0] == 3  # pages of 10, 10 and 5
        # 2. the whole run: the check pass and the work pass each list page by page
        calls[0] = 0
        summary = run("s3://bkt/in", str(tmp_path / "out"), settings, storage, progress=False, page_size=10)
        assert summary.counts == {"failed": 25} and calls[0] == 6
        # 3. run again: a failed row finishes its key (the rule of the distributed path too) ...
        again = run("s3://bkt/in", str(tmp_path / "out"), settings, storage, progress=False, page_size=10)
        assert sum(again.counts.values()) == 0 and again.skipped == 25
        # ... unless asked: --retry-failed
        retried = run("s3://bkt/in", str(tmp_path / "out"), settings, storage, progress=False, page_size=10,
                      retry_failed=True)  # fmt: skip
        assert retried.counts == {"failed": 25} and retried.skipped == 0
        rows = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
        assert len(rows) == 50 and all(json.loads(x)["reason"].startswith("undecodable") for x in rows)
