"""``workers/transport.py`` against a real Redis and real Celery messages: a queue's depth counts
every priority list exactly as kombu itself counts it, reserved messages move to ``unacked``, a
job's messages are found and dropped in every list, and the feeder's messages are taken and
decoded by kombu's own consumer. (The feeder's messages are byte for byte ``send_task``'s:
``tests/integration/test_feeder.py::test_messages_are_what_send_task_writes``.)"""

from __future__ import annotations

from collections import Counter

import redis

from shared.messages import ImageTask
from shared.settings import Settings
from tests.services import redis_url
from workers import transport
from workers.celery_app import CPU_TASK, configure

DB = 15
#: the priority of each message sent: None (Celery's default), kombu's steps, values between
#: them, and one above its maximum (clamped to 9)
PRIORITIES = [None, None, 0, 1, 3, 3, 5, 6, 8, 9, 9, 200]


def _send(app, queue: str, job_id: str, priority: int | None) -> None:
    app.send_task(CPU_TASK, args=[{"job_id": job_id, "p": priority}], queue=queue, priority=priority)


def test_depth_counts_every_priority_list_as_kombu_does():
    settings = Settings.from_env({}, broker_url=redis_url(DB), cpu_queue="tq", gpu_queue="tq-gpu")
    app = configure(settings)
    r = redis.Redis.from_url(settings.broker_url)
    for i, priority in enumerate(PRIORITIES):
        _send(app, "tq", f"j{i}", priority)
    _send(app, "tq-gpu", "g", 6)

    # each message lies in the list transport names for its priority, and nowhere else
    expected = Counter(transport.list_name("tq", min(p or 0, 9)) for p in PRIORITIES)
    assert {k.decode(): r.llen(k) for k in r.keys("tq*") if not k.startswith(b"tq-gpu")} == expected
    assert len(expected) == 4 and r.llen("tq") < len(PRIORITIES)  # LLEN of the plain list alone undercounts
    with app.connection_for_read() as conn:
        kombu_counts = {q: conn.default_channel.queue_declare(q, passive=True).message_count for q in ("tq", "tq-gpu")}
    assert kombu_counts == {"tq": len(PRIORITIES), "tq-gpu": 1}
    assert transport.depths(r, ["tq", "tq-gpu"]) == kombu_counts
    assert transport.queue_depth(r, settings) == {"cpu": len(PRIORITIES), "gpu": 1, "unacked": 0}

    # a message reserved by a consumer leaves the lists for `unacked` until it is acknowledged
    with app.connection_for_read() as conn:
        queue = transport.declare("tq").bind(conn.default_channel)
        message = queue.get(no_ack=False)
        assert message is not None
        assert transport.queue_depth(r, settings) == {"cpu": len(PRIORITIES) - 1, "gpu": 1, "unacked": 1}
        message.ack()
    assert transport.queue_depth(r, settings) == {"cpu": len(PRIORITIES) - 1, "gpu": 1, "unacked": 0}


def test_a_jobs_messages_are_read_and_dropped_in_every_list():
    settings = Settings.from_env({}, broker_url=redis_url(DB), cpu_queue="dq", gpu_queue="dq-gpu")
    app = configure(settings)
    r = redis.Redis.from_url(settings.broker_url)
    for priority in (None, 3, 9):
        _send(app, "dq", "mine", priority)
        _send(app, "dq", "theirs", priority)
    r.lpush("dq", b"not a celery message")
    raws = [raw for name in transport.list_names("dq") for raw in r.lrange(name, 0, -1)]
    assert sorted(transport.job_of(raw) or "-" for raw in raws) == ["-"] + ["mine"] * 3 + ["theirs"] * 3
    assert all(transport.task_args(raw)[0]["job_id"] in ("mine", "theirs") for raw in raws if b"body" in raw)
    assert transport.drop_job_messages(r, "dq", "mine") == 3
    assert transport.depths(r, ["dq"]) == {"dq": 4}  # theirs at every priority, and the foreign message
    assert transport.drop_job_messages(r, "dq", "mine") == 0


def test_built_messages_are_taken_and_decoded_by_kombu():
    settings = Settings.from_env({}, broker_url=redis_url(DB), cpu_queue="bq", gpu_queue="bq-gpu")
    app = configure(settings)
    r = redis.Redis.from_url(settings.broker_url)
    task = ImageTask(job_id="b", input_uri="s3://b/in/a b'é.jpg", output_uri="s3://b/out/a b'é.png", seed=3)
    builder = transport.CeleryMessages(app, CPU_TASK, "bq")
    r.lpush(builder.redis_list, builder.build(task))
    assert transport.queue_depth(r, settings)["cpu"] == 1
    with app.connection_for_read() as conn:
        message = transport.declare("bq").bind(conn.default_channel).get(no_ack=False)
        assert message is not None and message.headers["task"] == CPU_TASK
        args, kwargs, _embed = message.decode()
        message.ack()
    assert ImageTask.model_validate(args[0]) == task and kwargs == {}
    assert transport.queue_depth(r, settings) == {"cpu": 0, "gpu": 0, "unacked": 0}
