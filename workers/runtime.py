"""Per-process resources of a worker: settings, storage, job counters and models.

``start(settings)`` is called once at start-up by ``veil worker`` with the one ``Settings``
object; tasks then ask ``current()``. The resources are built lazily in the process that uses
them, so after fork in a prefork pool and never at import; a process that forks from a parent
which already loaded them builds its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.devices import resolve_device
from shared.jobs import JobStore
from shared.settings import Settings
from shared.storage import Storage, open_storage


@dataclass
class Runtime:
    settings: Settings
    pid: int = field(default_factory=os.getpid)
    _storage: Storage | None = None
    _jobs: JobStore | None = None
    _models: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    @property
    def jobs(self) -> JobStore:
        if self._jobs is None:
            self._jobs = JobStore.from_url(self.settings.jobs_url, self.settings.job_ttl_s, self.settings)
        return self._jobs

    def models(self, name: str, load: Callable[[Settings, Any], Any]) -> Any:
        with self._lock:
            if name not in self._models:
                self._models[name] = load(self.settings, resolve_device(self.settings.device))
            return self._models[name]


_settings: Settings | None = None
_runtime: Runtime | None = None


def start(settings: Settings) -> Runtime:
    """Called once at worker start-up, before any task runs: the settings every task uses."""
    global _settings, _runtime
    _settings, _runtime = settings, None
    return current()


def current() -> Runtime:
    """This process's resources (a forked child builds its own from the same settings)."""
    global _runtime
    if _settings is None:
        raise RuntimeError("workers.runtime.start(settings) was not called at start-up")
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(_settings)
    return _runtime
