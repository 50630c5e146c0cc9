"""Veil's Flower patches fit the Flower it pins: this fails when an upgrade changes what they rely
on (an attribute, a signature, the /metrics route, how the Broker tab lists queues). That the
patches work on a running Flower: tests/integration/test_flower_auth.py, test_watching.py."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from workers import flower_patches

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_flower_is_installed():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"flower==([\w.]+)", d.replace(" ", "")))]
    assert pins == [version("flower")]


def test_flowers_internals_are_what_the_patches_expect():
    assert flower_patches.problems() == []


def test_a_changed_internal_is_found(monkeypatch):
    # plant the kinds of change an upgrade could bring: the checker must name each
    from flower.views import BaseHandler
    from flower.views.broker import BrokerView
    from flower.views.monitor import Metrics

    def get(self, chunk=None):  # no longer async, another signature
        return None

    monkeypatch.setattr(Metrics, "get", get)
    monkeypatch.delattr(BaseHandler, "get_active_queue_names")
    monkeypatch.setattr(BrokerView, "get_active_queue_names", lambda self: [], raising=False)
    found = flower_patches.problems()
    assert any("Metrics.get is no longer" in p for p in found), found
    assert any("get_active_queue_names(self) is gone" in p for p in found), found
    assert any("BrokerView overrides get_active_queue_names" in p for p in found), found


def test_patches_apply_once_and_keep_the_checks_true():
    flower_patches.apply(public_metrics=False)
    flower_patches.apply(public_metrics=False)  # a second call changes nothing
    from flower.views import BaseHandler
    from flower.views.monitor import Metrics

    assert Metrics.get.veil_patched and BaseHandler.get_active_queue_names.veil_patched
    assert flower_patches.problems() == []
