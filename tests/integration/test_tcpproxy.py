"""The fault-injection proxy really cuts and restores a real service (Redis)."""

from __future__ import annotations

import socket
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


def _proxied_clients(direct: redis.Redis, proxy: TcpProxy) -> int:
    """Connections Redis holds from the proxy, by the name each test client gives itself."""
    return sum(1 for c in direct.client_list() if c.get("name") == f"via-{proxy.port}")


def test_partition_is_half_open_silence_and_heal_resumes():
    direct = redis.Redis(port=REDIS_PORT, socket_timeout=2)
    with TcpProxy(REDIS_PORT) as proxy:
        name = f"via-{proxy.port}"
        client = redis.Redis(port=proxy.port, socket_timeout=1, client_name=name, retry=None)
        assert client.ping()
        raw = socket.create_connection(("127.0.0.1", proxy.port))
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        raw.settimeout(2)
        assert raw.recv(100) == b"+PONG\r\n"
        proxy.partition()
        assert proxy.partitioned
        # Silence, not a reset: the client's read times out; the server still holds it.
        with pytest.raises(redis.TimeoutError):
            client.ping()
        raw.sendall(b"*1\r\n$4\r\nPING\r\n")
        raw.settimeout(1)
        with pytest.raises(TimeoutError):
            raw.recv(100)
        assert _proxied_clients(direct, proxy) == 1
        # A new connection is made (the kernel's backlog) but never served.
        fresh = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        fresh.sendall(b"*1\r\n$4\r\nPING\r\n")
        fresh.settimeout(1)
        with pytest.raises(TimeoutError):
            fresh.recv(100)
        # A close during the partition is not passed on either: Redis still holds the connection.
        client.close()
        time.sleep(0.3)
        assert _proxied_clients(direct, proxy) == 1
        proxy.heal()
        # Held bytes flow once healed: the PINGs sent during the partition are answered.
        raw.settimeout(5)
        assert raw.recv(100) == b"+PONG\r\n"
        fresh.settimeout(5)
        assert fresh.recv(100) == b"+PONG\r\n"
        # ... and the close reaches Redis.
        deadline = time.monotonic() + 5
        while _proxied_clients(direct, proxy) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _proxied_clients(direct, proxy) == 0
        assert redis.Redis(port=proxy.port, socket_timeout=2).ping()
        raw.close()
        fresh.close()


def test_cut_during_partition_resets_held_connections():
    with TcpProxy(REDIS_PORT) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=1, retry=None)
        assert client.ping()
        proxy.partition()
        proxy.cut()
        assert not proxy.partitioned
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.restore()
        time.sleep(0.05)
        assert redis.Redis(port=proxy.port, socket_timeout=2).ping()
