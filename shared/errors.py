"""Every failure Veil knows about, in one module, split into permanent and transient.

Permanent: retrying will not change the answer (undecodable image, no face, missing weights).
Transient: the same call may succeed later (S3 5xx, connection reset, CUDA out of memory).
The retry policy for transient errors is declared once, in ``RETRY_POLICY``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class VeilError(Exception):
    """Base class. ``reason`` is a short machine-readable code written into the manifest."""

    reason = "error"


class PermanentError(VeilError):
    """Retrying cannot help; the key is recorded with this status and reason at once."""


class TransientError(VeilError):
    """May succeed later. The Celery tiers send the message again with backoff per
    ``RETRY_POLICY``, then record the key failed; ``veil run`` retries storage calls in place per
    ``RETRY_POLICY`` and records any other transient error (one image out of memory) failed at once."""

    reason = "transient"


class ImageDecodeError(PermanentError):
    reason = "undecodable"


class OutsideAllowedRootsError(PermanentError):
    """A message names an input, output or job outside what this worker may touch
    (``VEIL_INPUT_ROOTS``, ``VEIL_OUTPUT_ROOTS``, the job's own spec): issue 23, ``shared/roots.py``."""

    reason = "outside_allowed_roots"


class MessageBoundsError(PermanentError):
    """A message bigger than a worker takes (faces per scene image over ``VEIL_MAX_FACES``)."""

    reason = "message_too_large"


class BadEnvelopeError(PermanentError):
    """A broker message whose envelope cannot be read (not JSON, not kombu's shape, a body that
    does not decode, or longer than ``VEIL_MAX_MESSAGE_BYTES``): dead-lettered by the workers'
    transport (``workers/envelopes.py``), never raised into the event loop."""

    reason = "bad_envelope"

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class TooManyFacesError(PermanentError):
    """An image with more faces than ``VEIL_MAX_FACES``: failed rather than partly anonymized."""

    reason = "too_many_faces"


class ImageTooLargeError(PermanentError):
    reason = "too_large"


class NoFaceError(PermanentError):
    """Not a failure of the run: the manifest row gets status ``no_face``."""

    reason = "no_face"


class MissingWeightsError(PermanentError):
    reason = "missing_weights"

    def __init__(self, missing: list[str], models_dir: str):
        self.missing = missing
        self.models_dir = models_dir
        names = "\n  ".join(missing)
        super().__init__(
            f"model weights missing under {models_dir} (VEIL_MODELS_DIR):\n  {names}\n"
            "fetch them with:  veil models fetch\n"
            "or write tiny random test models (noise images) with:  veil models tiny DIR"
        )


class ChecksumMismatchError(PermanentError):
    reason = "checksum_mismatch"


class SourceNotFoundError(PermanentError):
    """A download URL answered 404: the next source of the same file may still have it."""

    reason = "not_found"


class SourceUnreachableError(PermanentError):
    """A download's host cannot be reached at all (no DNS, no route, refused): the machine is
    offline, and retrying with backoff for minutes would only hide that."""

    reason = "unreachable"


class IncompleteCheckpointError(PermanentError):
    """A weight file lacks a tensor the loader needs (a different model, or a pruned export)."""

    reason = "incomplete_checkpoint"


class InputError(PermanentError):
    """Bad command-line or message input; names the argument."""

    reason = "bad_input"


class UnsafeKeyError(PermanentError):
    """A key or output URI that would resolve outside its output root (``..``, ``.``, an empty
    segment as in ``in//tmp/x``, an absolute path, NUL, a symlink leaving the root) or onto a
    name Veil keeps for itself (``manifest.jsonl``, ``manifest.parts/``, ``.veil.lock``)."""

    reason = "unsafe_key"


class OutputInUseError(InputError):
    """Another ``veil run`` holds OUTPUT's lock."""

    reason = "output_in_use"


class InputFileError(PermanentError):
    """An input path that is not a readable image file: refused before any byte is read."""

    reason = "not_a_file"


class NotAFileError(InputFileError):
    """A directory, FIFO, device or socket (a FIFO would hang the read, ``/dev/zero`` never ends)."""

    reason = "not_a_file"


class InputFileTooLargeError(InputFileError):
    """More bytes than ``VEIL_MAX_INPUT_BYTES`` (checked with ``fstat`` before reading)."""

    reason = "file_too_large"


class SymlinkOutsideError(InputFileError):
    """A symlink in the INPUT folder that points outside it: not followed."""

    reason = "symlink_outside_input"


class SymlinkLoopError(InputFileError):
    reason = "symlink_loop"


class UnsupportedImageError(ImageDecodeError):
    """A real image Veil does not anonymize: animated (GIF, APNG, WebP), HEIC/HEIF/AVIF."""

    reason = "unsupported_format"


class DiskFullError(PermanentError):
    """The output's filesystem is full (ENOSPC/EDQUOT): the run stops; rows written so far are
    whole, and running the same command again after freeing space resumes it."""

    reason = "disk_full"


class StorageError(TransientError):
    """Storage that may answer later: S3 5xx, throttling, a connection reset or timeout, a local
    I/O error (``EIO``) that is none of the refusals below."""

    reason = "storage"


class StorageRefusedError(PermanentError):
    """Storage refused the request for a reason that retrying cannot change (a name it cannot
    hold, a bucket that does not exist, no permission): the key ends failed with the subclass's
    reason, at once, instead of being sent again. ``shared.storage`` raises these for local
    ``OSError`` errnos and S3 error codes (its ``LOCAL_REFUSALS`` / ``S3_REFUSALS`` tables);
    an S3 4xx that no table names is this class itself."""

    reason = "storage_refused"


class NameTooLongError(StorageRefusedError):
    """A file name over the filesystem's limit (``ENAMETOOLONG``: 255 bytes on most), or an S3
    key over 1,024 bytes (``KeyTooLongError``)."""

    reason = "name_too_long"


class AccessDeniedError(StorageRefusedError):
    """``EACCES``/``EPERM`` on a local path; S3 ``AccessDenied`` (any 403 that names no other cause)."""

    reason = "access_denied"


class ReadOnlyStorageError(StorageRefusedError):
    """``EROFS``: the output's filesystem is mounted read-only."""

    reason = "read_only"


class NotADirectoryStorageError(StorageRefusedError):
    """A path whose parent is a file (``ENOTDIR``, or ``EEXIST`` from making that parent)."""

    reason = "not_a_directory"


class IsADirectoryStorageError(StorageRefusedError):
    """``EISDIR``: a folder sits where a file is to be read or written."""

    reason = "is_a_directory"


class InvalidNameError(StorageRefusedError):
    """A name the filesystem cannot hold (``EINVAL``/``EILSEQ``: a character a FAT or SMB share refuses)."""

    reason = "invalid_name"


class NoSuchBucketError(StorageRefusedError):
    reason = "no_such_bucket"


class InvalidBucketNameError(StorageRefusedError):
    reason = "invalid_bucket_name"


class InvalidCredentialsError(StorageRefusedError):
    """S3 ``InvalidAccessKeyId``/``SignatureDoesNotMatch``, or no credentials at all: every
    request would be refused the same way until the settings change."""

    reason = "invalid_credentials"


class DeviceOutOfMemoryError(TransientError):
    reason = "out_of_memory"


class BrokerError(TransientError):
    """Redis (queues or job counters) unreachable."""

    reason = "broker"


class KeyFailed(Exception):
    """Raised by a task *after* its key's failed outcome is recorded (sidecar, counters), so that
    Celery and Flower show the task failed, with the reason. Not a ``VeilError``: nothing retries
    it, and the message is acknowledged like any finished one (``task_acks_on_failure_or_timeout``)."""


@dataclass(frozen=True)
class RetryPolicy:
    # 2, 4, 8, 16, then 30 s per wait: 270 s in all, at least 135 s with the jitter, so a key
    # outlives a 2-minute S3 or Redis outage before it is recorded failed. The longest wait
    # (30 s) is a Redis ETA message held unacknowledged: it must stay well under
    # VEIL_VISIBILITY_TIMEOUT_S, or Redis redelivers the waiting message.
    max_retries: int = 12
    backoff_s: float = 2.0
    backoff_max_s: float = 30.0
    #: spread each wait over [d/2, d] so that workers failing together do not retry together
    jitter: bool = True

    def countdown(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt + 1`` (``attempt`` = failures so far - 1)."""
        delay = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        return delay * (0.5 + 0.5 * rng()) if self.jitter else delay

    def least_total_wait(self) -> float:
        """The shortest time all retries can span (every jittered wait at its lower bound)."""
        delays = (min(self.backoff_max_s, self.backoff_s * 2**a) for a in range(self.max_retries))
        return sum(d * (0.5 if self.jitter else 1.0) for d in delays)


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    *,
    retry_on: tuple[type[BaseException], ...] = (TransientError,),
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """``fn()``, retried on ``retry_on`` errors with the policy's backoff; the last error is raised
    once ``max_retries`` retries are spent. The one blocking retry loop of the code base."""
    policy = policy or RETRY_POLICY
    for attempt in range(policy.max_retries + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == policy.max_retries:
                raise
            if on_retry is not None:
                on_retry(attempt + 1, exc)
            sleep(policy.countdown(attempt))
    raise AssertionError("unreachable")


#: The one place retry behaviour is declared. Celery tasks read it; ``veil run`` retries
#: transient storage errors with the same policy.
RETRY_POLICY = RetryPolicy()

#: How long a worker retries one send to the broker in place (``workers.retries.send``) before
#: it gives the message it holds back unacknowledged: one retry after 0.5-1 s. A failed try
#: costs ~6 s with Redis refusing connections (redis-py's own reconnect attempts; measured on a
#: 2-core VM), so a send gives up within ~13 s: an outage costs a task or a GPU batch seconds,
#: never minutes. Nothing is lost: the worker's own message was never acknowledged.
SEND_POLICY = RetryPolicy(max_retries=1, backoff_s=1.0, backoff_max_s=1.0)
