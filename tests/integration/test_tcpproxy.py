"""The fault-injection proxy really cuts and restores a real service (Redis)."""

from __future__ import annotations

import time

import pytest
import redis

from tests.services import REDIS_PORT
from tests.tcpproxy import TcpProxy


def test_cut_resets_and_restore_reconnects():
    with TcpProxy(REDIS_PORT) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=2, retry_on_timeout=False)
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=proxy.port, socket_timeout=2).ping()  # new connections fail too
        proxy.restore()
        time.sleep(0.05)
        assert redis.Redis(port=proxy.port, socket_timeout=2).ping()
        assert proxy.connections >= 2
