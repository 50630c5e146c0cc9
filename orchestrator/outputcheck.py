"""``veil run``'s OUTPUT checked before anything is loaded: a folder Veil can write, or refused."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from shared.errors import DiskFullError, InputError
from shared.messages import ResultRecord
from shared.storage import is_local, is_under, scheme_of


def check_output_writable(output: str) -> None:
    """Raises ``InputError`` naming OUTPUT when it is an existing file or cannot be written.
    An existing folder is probed with a real temporary file (root ignores permission bits, a
    read-only mount does not); a missing one needs a writable folder above it (it is not made here)."""
    if not is_local(output):
        return  # object storage: credentials and bucket are checked by the first write
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise InputError(f"OUTPUT {output!r} is an existing file, not a folder: choose a folder")
    if path.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".veil-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # say so, with the disk-full exit code
                raise DiskFullError(f"OUTPUT {output!r}: no space left on its device") from None
            raise InputError(f"OUTPUT {output!r} cannot be written: {exc.strerror}") from None
        return
    above = path.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise InputError(f"OUTPUT {output!r} cannot be made: {str(above)!r} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError(f"OUTPUT {output!r} cannot be made: {str(above)!r} is not writable")


def check_output_outside_input(input_spec: str, output: str) -> None:
    """Outputs written inside the input folder would be read back as inputs on the next run
    (OUTPUT the same as INPUT included). ``veil run`` and ``veil submit`` both refuse it."""
    if is_under(input_spec, output):
        where = "folder" if is_local(output) else f"{scheme_of(output)}:// prefix"
        raise InputError(f"OUTPUT {output!r} lies inside INPUT {input_spec!r}: choose a {where} outside it")


def stop_if_disk_full(records: list[ResultRecord]) -> None:
    """A key that failed for a full disk (its row is in the manifest) stops the run: every next
    image would fail the same way. Running the command again retries it."""
    for record in records:
        if record.reason and record.reason.startswith(DiskFullError.reason):
            raise DiskFullError(record.reason.partition(": ")[2] or "no space left on OUTPUT's device")
