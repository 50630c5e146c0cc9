"""Per-process resources of a worker: settings, storage, job counters and models.

Built lazily in the process that uses them, so after fork in a prefork pool and never at
import; a process that forks from a parent which already loaded them builds its own.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

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
            self._jobs = JobStore.from_url(self.settings.broker_url)
        return self._jobs

    def models(self, name: str, load: Callable[[Settings, Any], Any]) -> Any:
        with self._lock:
            if name not in self._models:
                self._models[name] = load(self.settings, resolve_device(self.settings.device))
            return self._models[name]


_runtime: Runtime | None = None


def get_runtime(settings: Settings) -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(settings)
    return _runtime
