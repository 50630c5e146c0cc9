"""Every failure Veil knows about, in one module, split into permanent and transient.

Permanent: retrying will not change the answer (undecodable image, no face, missing weights).
Transient: the same call may succeed later (S3 5xx, connection reset, CUDA out of memory).
The retry policy for transient errors is declared once, in ``RETRY_POLICY``.
"""

from __future__ import annotations

from dataclasses import dataclass


class VeilError(Exception):
    """Base class. ``reason`` is a short machine-readable code written into the manifest."""

    reason = "error"


class PermanentError(VeilError):
    """Retrying cannot help; the key is recorded with this status and reason at once."""


class TransientError(VeilError):
    """May succeed later; retried with backoff per ``RETRY_POLICY``, then recorded failed."""

    reason = "transient"


class ImageDecodeError(PermanentError):
    reason = "undecodable"


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


class InputError(PermanentError):
    """Bad command-line or message input; names the argument."""

    reason = "bad_input"


class StorageError(TransientError):
    reason = "storage"


class DeviceOutOfMemoryError(TransientError):
    reason = "out_of_memory"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 2.0
    backoff_max_s: float = 120.0
    jitter: bool = True

    def countdown(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * (2**attempt))


#: The one place retry behaviour is declared. Celery tasks read it; ``veil run`` retries
#: transient storage errors with the same policy.
RETRY_POLICY = RetryPolicy()
