"""Known, harmless third-party messages kept out of normal output (shown at debug verbosity).

``quiet_third_party()`` installs targeted filters, once per process, before the libraries load:

* timm's ``FutureWarning`` "Importing from timm.models.layers is deprecated" (pyfacer's FaRL
  model imports the old path);
* torchsde's ``UserWarning`` "Should have ta>=t0" / "tb<=t1" (the faithful sampler's float32
  sigmas lie a rounding error outside the Brownian tree's interval; repeated every batch);
* diffusers' "Cannot initialize model with low cpu memory usage because `accelerate` was not
  found" (loading falls back to ``low_cpu_mem_usage=False``; installing ``accelerate`` removes
  the cause);
* diffusers' "There are modules in UNet2DConditionModel that should be kept in float32: []"
  (veil casts with ``.to(dtype)``; the list printed is empty).

At debug verbosity (``veil -v``: the root logger at DEBUG) the warnings are left as they are and
the diffusers records are re-logged at DEBUG on the ``veil.thirdparty`` logger. Call it where a
process starts (``orchestrator/cli.py`` ``main``, after ``logging.basicConfig``); the model
loaders call it too, so a process that skips the CLI is quiet as well.
"""

from __future__ import annotations

import logging
import warnings

#: (category, message regex, module regex) of the warnings filtered
WARNINGS: list[tuple[type[Warning], str, str]] = [
    (FutureWarning, r"Importing from timm\.models\.layers is deprecated", r"timm\.models\.layers"),
    (UserWarning, r"Should have \w+(>=t0|<=t1) but got", r"torchsde\."),
]

#: (logger name, message start) of the log records demoted to debug
LOG_RECORDS: list[tuple[str, str]] = [
    ("diffusers.models.modeling_utils", "Cannot initialize model with low cpu memory usage because `accelerate`"),
    ("diffusers.pipelines.pipeline_utils", "Cannot initialize model with low cpu memory usage because `accelerate`"),
    ("diffusers.models.modeling_utils", "There are modules in "),
]

_debug_log = logging.getLogger("veil.thirdparty")
_installed: list[bool] = []  # the verbosity installed, once per process


class _Demote(logging.Filter):
    """Drops the records whose message starts with one of ``starts``, re-logging them at DEBUG."""

    def __init__(self, starts: list[str]):
        super().__init__()
        self.starts = tuple(starts)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.starts):
            return True
        _debug_log.debug("%s: %s", record.name, message)
        return False


def quiet_third_party(debug: bool | None = None) -> None:
    """Install the filters (idempotent). ``debug`` None: debug when the root logger is at DEBUG."""
    # 1. Decide the verbosity, once per process
    if debug is None:
        debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    if _installed:
        return
    _installed.append(debug)
    # 2. Warnings: ignored unless debugging
    if not debug:
        for category, message, module in WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # 3. Log records: demoted to DEBUG on veil.thirdparty
    by_logger: dict[str, list[str]] = {}
    for name, start in LOG_RECORDS:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        logging.getLogger(name).addFilter(_Demote(starts))
