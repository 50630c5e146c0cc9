"""Cancel racing the last key (issue 18), in real Redis: ``JobStore.cancel`` and the counter of a
job's last key run at once from two threads, hundreds of times. Each is one Lua call, so every
job ends either finished (its last key ended it, the cancel refused) or cancelled (the cancel
came first; the key is still counted, the job not ended): never a finished job overwritten."""

from __future__ import annotations

import threading

from shared.jobs import CANCELLED, FINISHED, JobStore, job_key
from tests.services import redis_url

ITERATIONS = 400


def test_cancel_racing_the_last_key_never_overwrites_a_finished_job():
    url = redis_url(11)
    counter, canceller = JobStore.from_url(url), JobStore.from_url(url)
    ended: dict[int, int] = {}
    cancelled: dict[int, bool] = {}
    go = threading.Barrier(2)

    def record_last() -> None:
        for i in range(ITERATIONS):
            go.wait()
            ended[i] = counter.record_ending(f"race{i}", f"s3://b/in/{i}/last.jpg", "done")

    def cancel() -> None:
        for i in range(ITERATIONS):
            go.wait()
            cancelled[i] = canceller.cancel(f"race{i}")

    for i in range(ITERATIONS):  # each job: two keys, the first one counted already
        counter.create(f"race{i}", name=f"race{i}", input="s3://b/in/", output="s3://b/out/")
        counter.add_total(f"race{i}", 2)
        assert counter.record_ending(f"race{i}", f"s3://b/in/{i}/first.jpg", "done") == 1
    threads = [threading.Thread(target=record_last), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(ended) == len(cancelled) == ITERATIONS
    outcomes = {"finished": 0, "cancelled": 0}
    for i in range(ITERATIONS):
        state = counter.state(f"race{i}")
        job = counter.get(f"race{i}")
        assert job is not None and job.counts["done"] == 2  # the last key is counted either way
        if ended[i] == 2:  # the key ended the job: the cancel must have refused it
            assert not cancelled[i] and state in (FINISHED, "finalizing"), (i, state)
            outcomes["finished"] += 1
        else:  # the cancel came first: the key was counted without ending the job
            assert ended[i] == 1 and cancelled[i] and state == CANCELLED, (i, ended[i], cancelled[i], state)
            outcomes["cancelled"] += 1
        assert counter.redis.ttl(job_key(f"race{i}")) > 0  # ended either way: the record expires
    print("cancel race outcomes:", outcomes)
