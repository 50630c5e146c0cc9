"""Veil's two changes to Flower (pinned in pyproject.toml), applied by ``veil flower`` before it
starts, and the check that Flower's internals they rely on are still what they were written for.

1. ``/metrics`` behind basic auth (``metrics_behind_auth``): Flower serves it (worker and task
   names) without auth; reading ``current_user`` runs Flower's basic-auth check, which answers 401.
   Off with ``VEIL_FLOWER_PUBLIC_METRICS=true``.
2. Both configured queues listed (``show_configured_queues``): the Broker tab and
   ``/api/queues/length`` list the queues that workers answered ``active_queues`` for, and the
   configured ones only when no worker answered. A GPU worker in a batch cannot answer (its event
   loop is blocked), so ``veil.gpu`` was missing exactly when it was full. Here the configured
   queues are always listed, with any a worker adds.

``problems()`` lists what no longer holds of Flower's internals (an attribute gone, another
signature, a route or a caller changed); ``apply`` refuses to start Flower on any, so a Flower
upgrade cannot silently leave /metrics open. ``tests/unit/test_flower_patches.py`` runs it
against the installed (pinned) Flower; ``tests/integration/test_flower_auth.py`` and
``tests/integration/test_watching.py`` check both changes on a running Flower.
"""

from __future__ import annotations

import inspect
from typing import Any


def problems() -> list[str]:
    """What the patches assume of Flower and no longer holds (empty: all holds)."""
    from flower import urls
    from flower.api.tasks import GetQueueLengths
    from flower.views import BaseHandler
    from flower.views.broker import BrokerView
    from flower.views.monitor import Metrics

    found = []

    def params(fn: Any) -> list[str]:
        return list(inspect.signature(fn).parameters)

    # 1. /metrics: the route's handler, an async get(self), auth checked by get_current_user
    routes = {route[0]: route[1] for route in urls.handlers if isinstance(route, tuple)}
    if routes.get(r"/metrics") is not Metrics:
        found.append("flower.urls.handlers: /metrics is no longer served by flower.views.monitor.Metrics")
    if not issubclass(Metrics, BaseHandler):
        found.append("flower.views.monitor.Metrics is no longer a flower.views.BaseHandler")
    if not inspect.iscoroutinefunction(Metrics.get) or params(Metrics.get) != ["self"]:
        found.append("flower.views.monitor.Metrics.get is no longer `async def get(self)`")
    if params(getattr(BaseHandler, "get_current_user", None) or (lambda: None)) != ["self"]:
        found.append("flower.views.BaseHandler.get_current_user(self) is gone: current_user no longer checks auth")
    # 2. queues: get_active_queue_names(self) on BaseHandler, called by the Broker tab and the API
    names = getattr(BaseHandler, "get_active_queue_names", None)
    if names is None or params(names) != ["self"]:
        found.append("flower.views.BaseHandler.get_active_queue_names(self) is gone or takes other arguments")
    if not isinstance(getattr(BaseHandler, "capp", None), property):
        found.append("flower.views.BaseHandler.capp is no longer a property")
    for view in (BrokerView, GetQueueLengths):
        if getattr(view, "get_active_queue_names", None) is not names:
            found.append(f"{view.__module__}.{view.__name__} overrides get_active_queue_names")
        if "self.get_active_queue_names()" not in inspect.getsource(view.get):
            found.append(f"{view.__module__}.{view.__name__}.get no longer lists queues by get_active_queue_names")
    return found


def apply(*, public_metrics: bool) -> None:
    """Both changes (the first unless ``public_metrics``), once Flower is checked."""
    wrong = problems()
    if wrong:
        raise RuntimeError("Flower's internals changed; Veil's patches no longer fit: " + "; ".join(wrong))
    if not public_metrics:
        metrics_behind_auth()
    show_configured_queues()


def metrics_behind_auth() -> None:
    from flower.views.monitor import Metrics
    from tornado.web import HTTPError

    get = Metrics.get
    if getattr(get, "veil_patched", False):
        return

    async def guarded(self):  # type: ignore[no-untyped-def]
        if not self.current_user:
            raise HTTPError(401)
        await get(self)

    guarded.veil_patched = True  # type: ignore[attr-defined]
    Metrics.get = guarded  # type: ignore[method-assign]


def show_configured_queues() -> None:
    from flower.views import BaseHandler

    active = BaseHandler.get_active_queue_names
    if getattr(active, "veil_patched", False):
        return

    def configured_and_active(self):  # type: ignore[no-untyped-def]
        conf = self.capp.conf
        configured = {q.name for q in conf.task_queues or [] if q.name} | {conf.task_default_queue}
        return sorted(configured | set(active(self)))

    configured_and_active.veil_patched = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = configured_and_active  # type: ignore[method-assign]
