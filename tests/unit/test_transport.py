"""What ``workers/transport.py`` assumes of kombu's Redis transport, read from kombu itself (no
Redis needed); the same against a real Redis with messages Celery sent:
``tests/integration/test_transport.py``."""

from __future__ import annotations

from kombu.transport.redis import Channel

from workers import transport


def test_the_layout_is_kombus():
    assert Channel.sep == transport.PRIORITY_SEP
    assert tuple(Channel.priority_steps) == transport.PRIORITY_STEPS
    assert Channel.unacked_key == transport.UNACKED


def test_each_priority_goes_to_kombus_list():
    assert transport.list_names("veil.gpu") == ["veil.gpu", "veil.gpu\x06\x163", "veil.gpu\x06\x166",
                                                "veil.gpu\x06\x169"]  # fmt: skip
    # kombu's own mapping (Channel.priority: the highest step <= p), without a connection
    steps = list(Channel.priority_steps)
    for p in range(0, 10):
        step = Channel.priority(type("C", (), {"priority_steps": steps})(), p)
        assert transport.list_name("q", p) == ("q" if step == 0 else f"q{Channel.sep}{step}")


def test_declared_queues_have_their_own_exchange():
    q = transport.declare("veil.cpu")
    assert (q.name, q.exchange.name, q.exchange.type, q.routing_key) == ("veil.cpu", "veil.cpu", "direct", "veil.cpu")


def test_a_message_that_is_not_a_veil_task_has_no_job():
    assert transport.job_of(b"not json") is None
    assert transport.job_of(b'{"body": "bm90IGpzb24="}') is None  # base64 of "not json"
    assert transport.job_of(b'{"body": "W1tdLCB7fSwge31d"}') is None  # [[], {}, {}]: no args
