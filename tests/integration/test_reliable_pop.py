"""A message popped but not yet read survives its worker (``workers/redis_transport.py``).

The scene, as a GPU worker lives it: the event loop sent its pop, then blocked (a batch, solo
pool); a message arrives, Redis pops it into the reply, and the worker is SIGKILLed before it
reads. The popper below is that worker, reduced to the transport: a real process, a real
Redis (a private redis-server), a real SIGKILL. kombu's own transport loses the message;
Veil's brings it back after the visibility timeout, and delivers it once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.faults import OwnRedis
from tests.tcpproxy import TcpProxy
from tests.services import ROOT, wait_for
from workers import redis_transport

VISIBILITY_S = 2
QUEUE = "rq"
OPTIONS = {"visibility_timeout": VISIBILITY_S}

POPPER = (
    """
import sys, time
from kombu import Connection, Exchange, Queue
url, transport, queue = sys.argv[1:4]
conn = Connection(url, transport=transport, transport_options={"visibility_timeout": %d})
channel = conn.channel()
Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(channel).declare()
channel.basic_consume(queue, False, lambda message: None, "popper")
channel.connection.cycle.on_poll_start()  # what the event loop does each time it polls: pop
print("popping", flush=True)
time.sleep(600)  # the loop blocked by a batch: the reply waits unread
"""
    % VISIBILITY_S
)


@pytest.fixture()
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    yield server
    server.stop()


def publish(url: str, body: dict, priority: int | None = None) -> None:
    """As any client sends: kombu's own transport, default options."""
    with Connection(url) as conn:
        queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)
        conn.Producer().publish(body, exchange=queue.exchange, routing_key=QUEUE, declare=[queue], priority=priority)


def veil_channel(url: str, received: list) -> tuple[Connection, object]:
    conn = Connection(url, transport=redis_transport.Transport, transport_options=OPTIONS)
    channel = conn.channel()
    Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)(channel).declare()
    channel.basic_consume(QUEUE, False, lambda message: received.append(message), "test")
    return conn, channel


def popped_then_killed(url: str, transport: str) -> redis.Redis:
    popper = subprocess.Popen(
        [sys.executable, "-c", POPPER, url, transport, QUEUE], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert popper.stdout.readline().strip() == "popping"
        publish(url, {"key": "k1"})
        r = redis.Redis.from_url(url)
        wait_for(lambda: r.llen(QUEUE) == 0, 10, "the outstanding pop to take the message")
    finally:
        popper.send_signal(signal.SIGKILL)
        popper.wait(10)
    return r


def test_kombus_own_pop_loses_a_message_its_killed_worker_never_read(own_redis):
    """Why Veil has its own pop: with kombu's BRPOP the message is nowhere once the worker dies."""
    r = popped_then_killed(own_redis.url, "redis")
    time.sleep(VISIBILITY_S + 1)
    received: list = []
    conn, channel = veil_channel(own_redis.url, received)
    with conn:
        channel.qos.restore_visible(num=10, interval=1)  # kombu's own scan of `unacked`
        assert r.llen(QUEUE) == 0 and r.hlen("unacked") == 0  # lost


def test_veils_pop_brings_it_back_after_the_visibility_timeout_and_delivers_it_once(own_redis):
    r = popped_then_killed(own_redis.url, "workers.redis_transport:Transport")
    [inflight] = [k for k in r.keys(f"{redis_transport.INFLIGHT}:*")]
    assert r.lrange(inflight, 0, -1) and r.hlen("unacked") == 0  # neither queued nor reserved: in flight
    received: list = []
    conn, channel = veil_channel(own_redis.url, received)
    with conn:
        assert channel.restore_stale() == 0  # the popper was seen alive less than the timeout ago
        time.sleep(VISIBILITY_S + 0.5)
        assert channel.restore_stale() == 1
        assert r.llen(QUEUE) == 1 and not r.exists(inflight)
        conn.drain_events(timeout=5)
        assert [m.payload for m in received] == [{"key": "k1"}]
        assert r.hlen("unacked") == 1  # reserved by the new consumer, as kombu records it
        received[0].ack()
        assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0


def test_a_worker_whose_pop_was_restored_meanwhile_does_not_deliver_it_again(own_redis):
    """A batch longer than the visibility timeout: the scan gives the popped message back to the
    queue while its reply still waits; when the slow worker reads it, the claim fails and only
    the restored copy is delivered."""
    slow_received: list = []
    slow_conn, slow = veil_channel(own_redis.url, slow_received)
    with slow_conn:
        slow.connection.cycle.on_poll_start()  # the event loop polls: the pop is sent
        publish(own_redis.url, {"key": "k2"})
        r = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: r.llen(QUEUE) == 0, 10, "the pop")
        time.sleep(VISIBILITY_S + 0.5)
        other_received: list = []
        other_conn, other = veil_channel(own_redis.url, other_received)
        with other_conn:
            assert other.restore_stale() == 1
            slow._brpop_read()  # the slow worker reads its reply at last
            assert slow_received == [] and r.llen(QUEUE) == 1
            other_conn.drain_events(timeout=5)
            assert [m.payload for m in other_received] == [{"key": "k2"}]


def test_a_message_sent_with_a_priority_is_folded_into_the_queue_and_delivered(own_redis):
    publish(own_redis.url, {"key": "urgent"}, priority=9)
    r = redis.Redis.from_url(own_redis.url)
    assert r.llen(QUEUE) == 0 and r.llen(f"{QUEUE}\x06\x169") == 1  # kombu's priority list
    received: list = []
    conn, channel = veil_channel(own_redis.url, received)
    with conn:
        assert channel.restore_stale() == 1
        conn.drain_events(timeout=5)
        assert [m.payload for m in received] == [{"key": "urgent"}]


def test_a_late_ack_of_a_restored_message_leaves_the_new_copy_reserved(own_redis):
    """A worker outlives the visibility timeout: kombu's scan restores its reserved message,
    another worker takes it; the first one's late ack must not un-reserve the second copy."""
    publish(own_redis.url, {"key": "k3"})
    r = redis.Redis.from_url(own_redis.url)
    first_received: list = []
    first_conn, _first = veil_channel(own_redis.url, first_received)
    with first_conn:
        first_conn.drain_events(timeout=5)
        time.sleep(VISIBILITY_S + 0.5)
        second_received: list = []
        second_conn, second = veil_channel(own_redis.url, second_received)
        with second_conn:
            second.qos.restore_visible(num=10, interval=1)  # kombu's scan: back to the queue
            second_conn.drain_events(timeout=5)
            assert [m.payload for m in second_received] == [{"key": "k3"}]
            first_received[0].ack()  # the slow worker's batch ends
            assert r.hlen("unacked") == 1  # the second copy is still reserved: a crash now loses nothing
            second_received[0].ack()
            assert r.hlen("unacked") == 0


def test_a_pop_whose_reply_is_lost_to_a_cut_connection_comes_back_at_once(own_redis):
    """Redis moved the message, then the connection was cut before its reply arrived (TcpProxy:
    partition, then reset). The worker's read fails; it marks that in-flight list stale on a new
    connection, so the next scan returns the message now, not after the visibility timeout."""
    with TcpProxy(own_redis.port) as proxy:
        received: list = []
        cut_conn, cut_channel = veil_channel(proxy.redis_url, received)
        with cut_conn:
            cut_channel.connection.cycle.on_poll_start()  # the pop is sent
            r = redis.Redis.from_url(own_redis.url)
            wait_for(lambda: r.client_list() and any(c.get("cmd") == "blmove" for c in r.client_list()), 10,
                     "the pop to block in Redis")  # fmt: skip
            proxy.partition()  # the reply will not get through
            publish(own_redis.url, {"key": "k4"})
            wait_for(lambda: r.llen(QUEUE) == 0, 10, "Redis to move the message")
            proxy.cut()
            proxy.restore()
            with pytest.raises(cut_channel.connection_errors):
                cut_channel._brpop_read()  # what the event loop does when the socket turns readable
            assert received == []
            other_received: list = []
            other_conn, other = veil_channel(own_redis.url, other_received)
            with other_conn:
                assert other.restore_stale() == 1  # no wait for the visibility timeout
                other_conn.drain_events(timeout=5)
                assert [m.payload for m in other_received] == [{"key": "k4"}]
