"""Job counters in Redis and `veil status` on them."""

from shared.jobs import JobStore
from orchestrator.status import describe, show_status
from tests.services import redis_url


def test_counts_each_key_once_and_status_reports_progress(capsys):
    jobs = JobStore.from_url(redis_url(9))
    jobs.create("j1", name="faces", input="s3://b/in/", output="s3://b/out/")
    jobs.add_total("j1", 3)
    assert jobs.record("j1", "s3://b/in/a.jpg", "done")
    assert not jobs.record("j1", "s3://b/in/a.jpg", "done")  # a redelivered key counts once
    jobs.record("j1", "s3://b/in/b.jpg", "no_face")
    job = jobs.get("j1")
    assert job.counts == {"done": 1, "no_face": 1, "failed": 0} and job.finished == 2
    assert "2/3" in describe(job, now=job.created + 2) and "1.00/s" in describe(job, now=job.created + 2)
    jobs.record("j1", "s3://b/in/c.jpg", "failed")
    assert show_status(jobs, "j1", watch=True, interval=0.01) == 1  # returns once finished; failures -> 1
    assert "3/3" in capsys.readouterr().out
    assert [j.job_id for j in jobs.list()] == ["j1"]
    assert show_status(jobs, "nope", watch=False) == 2
