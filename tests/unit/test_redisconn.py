"""Every Redis connection's bounds against a half-open partition (shared/redisconn.py): the
values, and that kombu's Redis transport and redis-py take them. Against a real partition:
tests/integration/test_redisconn.py and tests/integration/test_partition.py."""

from __future__ import annotations

import socket
import time

import pytest
from kombu.transport.redis import Channel
from pydantic import ValidationError

from shared import redisconn
from shared.settings import Settings


def test_defaults_bound_a_half_open_connection_to_30_s():
    kw = redisconn.connection_kwargs()
    assert kw["socket_timeout"] > redisconn.KOMBU_BRPOP_TIMEOUT_S  # an idle BRPOP poll never times out
    assert kw["socket_keepalive"] is True
    # kombu drops an overdue BRPOP after brpop_timeout + interval, checked every interval
    assert redisconn.KOMBU_BRPOP_TIMEOUT_S + 2 * kw["health_check_interval"] <= 30
    # one of Veil's commands: two tries of the socket timeout, plus a connect
    assert 2 * kw["socket_timeout"] + kw["socket_connect_timeout"] <= 30
    if hasattr(socket, "TCP_KEEPIDLE"):
        opts = kw["socket_keepalive_options"]
        idle, every, count = opts[socket.TCP_KEEPIDLE], opts[socket.TCP_KEEPINTVL], opts[socket.TCP_KEEPCNT]
        assert idle + every * count <= 30


def test_settings_change_the_bounds_and_refuse_a_timeout_under_the_brpop_poll():
    kw = redisconn.connection_kwargs(Settings.from_env({}, redis_socket_timeout_s=4, redis_keepalive_s=6))
    assert kw["socket_timeout"] == 4.0
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert kw["socket_keepalive_options"][socket.TCP_KEEPIDLE] == 6
    with pytest.raises(ValidationError):
        Settings.from_env({}, redis_socket_timeout_s=1)


def test_celery_broker_options_are_ones_kombus_redis_transport_reads():
    from workers.celery_app import configure

    app = configure(Settings.from_env({}, broker_url="redis://127.0.0.1:1/0"))
    options = app.conf.broker_transport_options
    for name in ("socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
                 "health_check_interval"):  # fmt: skip
        assert name in options and name in Channel.from_transport_options, name
    assert options["socket_timeout"] == Settings.model_fields["redis_socket_timeout_s"].default
    assert app.conf.broker_connection_max_retries is None  # a long partition never ends a worker


def test_veil_clients_get_the_bounds_and_one_retry():
    from shared.jobs import JobStore

    store = JobStore.from_url("redis://127.0.0.1:1/0", settings=Settings.from_env({}, redis_socket_timeout_s=7))
    kwargs = store.redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 7.0 and kwargs["socket_keepalive"] is True
    assert kwargs["health_check_interval"] == Settings.model_fields["redis_health_check_interval_s"].default
    assert kwargs["retry"].get_retries() == 1  # redis-py's default (10) would turn 5 s into a minute


def test_heartbeats_are_sent_once_not_retried_forever():
    from celery.worker import heartbeat

    from workers.celery_app import configure

    sent = []

    class Eventer:
        on_enabled: set = set()
        on_disabled: set = set()

        def send(self, event, **kw):
            sent.append((event, kw["retry"]))

    configure(Settings.from_env({}, broker_url="redis://127.0.0.1:1/0"), tier="cpu")
    heartbeat.Heart(timer=None, eventer=Eventer())._send("worker-heartbeat")
    assert sent == [("worker-heartbeat", False)]


def test_shutdown_watch_exits_once_the_broker_is_silent_long_enough():
    from workers import shutdown

    settings = Settings.from_env({}, broker_url="redis://127.0.0.1:1/0", redis_socket_timeout_s=1.5,
                                 redis_connect_timeout_s=0.2)  # fmt: skip
    exits = []
    began = time.monotonic()
    shutdown.watch(settings, exit_now=exits.append)  # port 1: refused at once, every time
    waited = time.monotonic() - began
    assert exits == [shutdown.EXIT_BROKER_UNREACHABLE]
    assert shutdown.unreachable_limit_s(settings) <= waited < shutdown.unreachable_limit_s(settings) + 3


def test_a_rediss_urls_tls_options_reach_celerys_broker_use_ssl():
    """Flower's Broker tab reads only ``broker_use_ssl``: the URL's CA must reach it (issue 23)."""
    import ssl

    from shared.redisconn import tls_options

    url = "rediss://veil:pw@redis:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/veil/redis-ca/ca.crt"
    assert tls_options(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/veil/redis-ca/ca.crt"}
    assert tls_options("rediss://redis:6380/0?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert tls_options("redis://redis:6379/0?ssl_ca_certs=/x") is None
