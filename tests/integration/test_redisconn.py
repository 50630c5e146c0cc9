"""Veil's own Redis clients through a real half-open partition (tests/tcpproxy.py): a command
gives up within its bound instead of waiting forever, and the health check's broker PING goes
stale within ``health.broker_bound_s`` and fresh again after heal. Small timeouts here (the
defaults' bound, 30 s, is exercised with real workers in test_partition.py)."""

from __future__ import annotations

import time

import pytest
import redis

from shared.jobs import JobStore
from shared.settings import Settings
from tests.services import REDIS_PORT, redis_url, wait_for
from tests.tcpproxy import TcpProxy
from workers import health

SETTINGS = dict(redis_socket_timeout_s=2.0, redis_connect_timeout_s=1.0, health_interval_s=0.5)


def test_a_command_on_a_half_open_connection_fails_within_its_bound():
    redis_url(0)  # flushes this test's database
    with TcpProxy(REDIS_PORT) as link:
        settings = Settings.from_env({}, broker_url=link.redis_url, **SETTINGS)
        jobs = JobStore.from_url(link.redis_url, settings=settings)
        assert jobs.get("nope") is None
        link.partition()
        began = time.monotonic()
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            jobs.get("nope")
        waited = time.monotonic() - began
        # two tries (the second on a fresh connection, which a partition also silences)
        assert waited < 2 * 2.0 + 1.0 + 2, waited
        link.heal()
        assert jobs.get("nope") is None  # the same store works again: no restart needed


def test_health_ping_goes_stale_in_a_partition_and_fresh_after():
    with TcpProxy(REDIS_PORT) as link:
        settings = Settings.from_env({}, broker_url=link.redis_url, **SETTINGS)
        ping = health.BrokerPing(settings).start()
        try:
            wait_for(lambda: link.connections >= 1, 5, "the first PING")
            assert ping.fresh()
            link.partition()
            began = time.monotonic()
            wait_for(lambda: not ping.fresh(), health.broker_bound_s(settings) + 2, "a stale PING")
            assert time.monotonic() - began >= 1.0  # not at once: a PING may be late, not lost
            link.heal()
            wait_for(ping.fresh, 2 * 2.0 + 1.0 + 2, "a PONG after heal")
        finally:
            ping.stop()
