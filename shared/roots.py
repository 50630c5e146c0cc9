"""Allowed roots (issue 23): the folders and prefixes a worker may read inputs from and write
outputs to, whatever a message says. A broker message is input: a forged one must not make a
worker read ``/etc/passwd`` or write ``s3://other-bucket/x``.

``AllowedRoots`` holds ``VEIL_INPUT_ROOTS`` and ``VEIL_OUTPUT_ROOTS``: URI prefixes, compared by
path segment (``s3://b/in`` holds ``s3://b/in/x.jpg``, not ``s3://b/in2/x.jpg``); a local root
and a local URI are both compared by real path, so a symlink inside a root that leads out of it
is outside. No roots of a kind: that kind is not restricted (``restricted`` is False).

``check_job``: a message's job must be the one whose spec put it there (its input under the
spec's input, its output under the spec's output), so a forged ``job_id`` cannot move another
job's counters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import OutsideAllowedRootsError
from shared.messages import JobSpec
from shared.storage import is_local, is_under


def _real(uri: str) -> str:
    """A local path's real path (symlinks resolved, also in the parts that exist); an object URI as is."""
    return os.path.realpath(uri) if is_local(uri) else uri


def under(root: str, uri: str) -> bool:
    """``uri`` lies inside ``root`` (a local pair by real path; never across schemes)."""
    if is_local(root) != is_local(uri):
        return False
    if is_local(root):
        real_root, real = _real(root), _real(uri)
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
    return is_under(root, uri)


@dataclass(frozen=True)
class AllowedRoots:
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, inputs: Iterable[str], outputs: Iterable[str]) -> AllowedRoots:
        return cls(tuple(inputs), tuple(outputs))

    @property
    def restricted(self) -> bool:
        return bool(self.inputs or self.outputs)

    def input_allowed(self, uri: str) -> bool:
        return not self.inputs or any(under(root, uri) for root in self.inputs)

    def output_allowed(self, uri: str) -> bool:
        return not self.outputs or any(under(root, uri) for root in self.outputs)

    def check_input(self, uri: str, what: str = "input") -> None:
        if not self.input_allowed(uri):
            raise OutsideAllowedRootsError(f"{what} {uri!r} is outside VEIL_INPUT_ROOTS {list(self.inputs)}")

    def check_output(self, uri: str, what: str = "output") -> None:
        if not self.output_allowed(uri):
            raise OutsideAllowedRootsError(f"{what} {uri!r} is outside VEIL_OUTPUT_ROOTS {list(self.outputs)}")


def check_job(spec: JobSpec | None, job_id: str, output_uri: str, *, required: bool) -> None:
    """The message's job put its output there (under the spec's output). A job without a spec
    is refused when ``required`` (roots are set)."""
    if spec is None:
        if required:
            raise OutsideAllowedRootsError(f"job {job_id!r} has no spec in Redis: no message of it is taken")
        return
    if spec.job_id != job_id:
        raise OutsideAllowedRootsError(f"job {job_id!r}: its spec names job {spec.job_id!r}")
    if not under(spec.output, output_uri):
        raise OutsideAllowedRootsError(f"output {output_uri!r} is outside job {job_id!r}'s output {spec.output!r}")


def check_job_input(spec: JobSpec | None, job_id: str, input_uri: str) -> None:
    """The message's input lies under its job's input (when the job has a spec)."""
    if spec is not None and not under(spec.input, input_uri):
        raise OutsideAllowedRootsError(f"input {input_uri!r} is outside job {job_id!r}'s input {spec.input!r}")


def check_job_roots(roots: AllowedRoots, inputs: Iterable[str], output: str) -> None:
    """``veil submit`` and ``veil run``: a job whose input or output lies outside the allowed
    roots is refused before anything is written (``OutsideAllowedRootsError``). ``inputs``: the
    job's input root, or (``veil run``) each listed input."""
    roots.check_output(output, "OUTPUT")
    if roots.inputs:
        for uri in inputs:
            roots.check_input(uri, "INPUT")
