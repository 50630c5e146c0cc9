"""One key's path, the same for ``veil run`` and the distributed path.

A key is a relative name under a job's INPUT root (``JobSpec.input``). Everything a key becomes
is derived here, from the job's spec and the key alone, by ``veil run``
(``orchestrator/embedded.py``) and by the feeder (``workers/feeder.py``) alike:

- its input URI: ``join_uri(spec.input, key)``;
- its output URI (``output_for``): the key's output name (``output_name``: unknown extensions
  get ``.png``) under OUTPUT, through ``safe_join`` (a key that would leave OUTPUT, or land on a
  name Veil writes, raises ``UnsafeKeyError``), and nameable with its sidecar (a local path
  segment at most ``NAME_MAX`` bytes, an object key at most ``S3_KEY_MAX``: else
  ``NameTooLongError``);
- its seed: ``seed_for(spec.seed, key)``; its options (method, mode, guard, cover, overwrite): the spec's.

``task_for`` builds the key's ``ImageTask`` from these; it is the only builder of one.

``digest`` is the one 8-byte digest of a key or URI (the jobs' counted-key sets, ``veil submit``
and ``veil run``'s listing checks): a set of them costs ~40 bytes per key whatever its length.

**Is a key finished?** (``is_finished``): a key is finished once it has an outcome record (its
sidecar beside its output for the distributed path, its last manifest row for ``veil run``),
whatever the outcome: ``done``, ``no_face`` or ``failed`` with a reason. Running again
(``veil run`` again, ``veil submit`` again, a redelivered message) never redoes a finished key;
failures are tried again only when asked: ``veil retry JOB`` and ``veil run --retry-failed``
(``--overwrite`` redoes everything). One rule because it is cheap in both modes: one listing of
the sidecars (no read per key) tells ``veil submit`` what is finished, and a key that cannot
succeed (an undecodable file) is not retried by every run of a million keys.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache

from shared.errors import NameTooLongError
from shared.imageio import output_name
from shared.messages import ImageTask, JobSpec, Status
from shared.settings import Settings
from shared.storage import check_key, is_local, join_uri, safe_join

NAME_MAX = 255  # bytes of one path segment on a local file system (the sidecar's included)
S3_KEY_MAX = 1024  # bytes of an object key
SIDECAR = ".json"

#: the outcomes that finish a key (``is_finished``): all of them
FINISHED = frozenset(Status)


def seed_for(base_seed: int, relative_key: str) -> int:
    """A key's seed depends only on the run's base seed and the key itself."""
    digest = hashlib.sha256(f"{base_seed}:{relative_key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def digest(text: str) -> bytes:
    """The one 8-byte digest (BLAKE2b) of a key or URI."""
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def is_finished(outcome: Status | None, *, retry_failed: bool = False) -> bool:
    """The one "is this key finished?" rule of both modes: it has an outcome record (a sidecar,
    a manifest row), ``outcome`` its status (``None``: no record). ``retry_failed``: a
    ``failed`` one does not finish it (``veil run --retry-failed``; ``veil retry`` sends its
    keys with overwrite)."""
    return outcome in FINISHED and not (retry_failed and outcome == Status.FAILED)


@lru_cache(maxsize=256)
def _root(root: str) -> tuple[bool, str, int]:
    """(local?, the prefix a relative name is appended to, bytes of the object key before it):
    a root's scheme parsed once, not per key."""
    if is_local(root):
        return True, root, 0
    prefix = join_uri(root, "")
    key_start = prefix.index("/", prefix.index("://") + 3) + 1
    return False, prefix, len(prefix[key_start:].encode())


def output_for(root: str, key: str) -> str:
    """The output URI of ``key`` under the output ``root`` (module docstring). Raises
    ``UnsafeKeyError`` or ``NameTooLongError`` (both ``PermanentError``)."""
    name = output_name(key)
    local, prefix, key_bytes = _root(root)
    if local:
        uri = safe_join(root, name)
        for part in uri.split("/"):
            if part and len(part.encode()) + len(SIDECAR) > NAME_MAX:
                size = len(part.encode()) + len(SIDECAR)
                raise NameTooLongError(
                    f"output name {part[:40]!r}... is {size} bytes with its sidecar, over {NAME_MAX}"
                )
        return uri
    check_key(name)
    size = key_bytes + len(name.encode()) + len(SIDECAR)
    if size > S3_KEY_MAX:
        raise NameTooLongError(f"output key {name[:40]!r}... is {size} bytes with its sidecar, over {S3_KEY_MAX}")
    return prefix + name


def input_for(root: str, key: str) -> str:
    """The input URI of ``key`` under the input ``root``."""
    local, prefix, _ = _root(root)
    return join_uri(root, key) if local else prefix + key.lstrip("/")  # as ``join_uri``, parsed once


def spec_for(
    job_id: str, name: str, root: str, source: str, output: str, settings: Settings, *, overwrite: bool = False
) -> JobSpec:
    """A job's spec, ``veil run``'s as ``veil submit``'s: ``root`` is its listing's (every key's
    input URI is joined onto it), the seed and options are the settings'."""
    return JobSpec(
        job_id=job_id, name=name, input=root, source=source, output=output, seed=settings.seed,
        overwrite=overwrite, created=time.time(), method=settings.method, mode=settings.mode, guard=settings.guard,
        cover=settings.faces,
    )  # fmt: skip


def task_for(spec: JobSpec, key: str, *, overwrite: bool = False) -> ImageTask:
    """A key's ImageTask from its job's spec and its relative key (module docstring). Raises a
    ``PermanentError`` for a key whose output would leave OUTPUT (a symlink planted since the
    listing included) or could not be named, before any work is spent on it."""
    return ImageTask(
        job_id=spec.job_id,
        input_uri=input_for(spec.input, key),
        output_uri=output_for(spec.output, key),
        seed=seed_for(spec.seed, key),
        overwrite=overwrite or spec.overwrite,
        method=spec.method,
        mode=spec.mode,
        guard=spec.guard,
        cover=spec.cover,
    )
