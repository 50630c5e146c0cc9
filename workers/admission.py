"""The message validation step of both tiers (issue 23, house rule 11: a message is input,
checked before anything is read or written). ``workers.cpu.tasks`` and ``workers.gpu.tasks``
call ``admit`` on every parsed message, before their first storage call; stage code never sees a
message that did not pass.

``admit`` checks, in order: the output URI's form (``check_output_uri``); the input, the output
and its sidecar against ``VEIL_INPUT_ROOTS`` / ``VEIL_OUTPUT_ROOTS`` (``shared/roots.py``, local
paths by real path); the message's job (its spec's input and output must hold the message's, so a
forged ``job_id`` cannot move another job's counters; with roots set, a job must have a spec);
and the bounds of a GPU message (faces per image, prompt length: a prompt is cut to
``VEIL_MAX_PROMPT_CHARS`` here, before any tokeniser, and the cut text is what the record keeps).

A refused message ends alone with reason ``outside_allowed_roots`` (or ``unsafe_key``,
``message_too_large``): a failed sidecar, counted for its job, only where that sidecar lies under
the allowed roots and under the job's own output; otherwise nothing is written or counted, the
refusal is logged and counted in ``veil_failures_total``.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import redis

from shared.errors import BrokerError, MessageBoundsError, PermanentError
from shared.messages import ImageTask, JobSpec, PromptTask
from shared.results import error_record, sidecar_uri
from shared.roots import AllowedRoots, check_job, check_job_input, under
from shared.storage import check_output_uri
from workers import metrics
from workers.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T", ImageTask, PromptTask)

#: job id -> spec, for the specs this process has read (a spec never changes once written)
_SPECS: dict[str, JobSpec] = {}
_SPECS_MAX = 4096


class Refused(Exception):
    """A message ``admit`` refused: ``error`` says why; ``sidecar_ok`` whether its failed sidecar
    may be written (and the key counted for its job)."""

    def __init__(self, error: PermanentError, sidecar_ok: bool):
        super().__init__(str(error))
        self.error, self.sidecar_ok = error, sidecar_ok


def job_spec(rt: Runtime, job_id: str) -> JobSpec | None:
    """The job's spec (cached once read); ``BrokerError`` when Redis does not answer."""
    if (spec := _SPECS.get(job_id)) is not None:
        return spec
    try:
        spec = rt.jobs.spec(job_id)
    except (redis.RedisError, OSError) as exc:
        raise BrokerError(f"job {job_id!r}'s spec not read: {type(exc).__name__}: {exc}") from exc
    if spec is not None:
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        _SPECS[job_id] = spec
    return spec


def admit(rt: Runtime, task: T) -> T:
    """``task`` as the worker will use it (a GPU message's prompts cut), or ``Refused``."""
    settings = rt.settings
    roots = AllowedRoots.of(settings.input_roots, settings.output_roots)
    # 1. The output URI's form, and the roots: nothing outside them is read or written
    try:
        check_output_uri(task.output_uri)
        roots.check_output(task.output_uri)
        roots.check_output(sidecar_uri(task.output_uri), "sidecar")
    except PermanentError as exc:
        raise Refused(exc, sidecar_ok=False) from None
    spec = job_spec(rt, task.job_id)
    # 2. The job: its own spec put this input and output there
    try:
        check_job(spec, task.job_id, task.output_uri, required=roots.restricted)
    except PermanentError as exc:
        raise Refused(exc, sidecar_ok=False) from None
    record_ok = spec is not None and under(spec.output, task.output_uri) or spec is None and not roots.restricted
    try:
        check_job_input(spec, task.job_id, task.input_uri)
        roots.check_input(task.input_uri)
        # 3. A GPU message's bounds: faces per image, prompt text cut before tokenising
        if isinstance(task, PromptTask):
            return _bounded(task, settings.max_faces, settings.max_prompt_chars)  # type: ignore[return-value]
    except PermanentError as exc:
        raise Refused(exc, sidecar_ok=record_ok) from None
    return task


def _bounded(task: PromptTask, max_faces: int, max_chars: int) -> PromptTask:
    if len(task.faces) > max_faces:
        raise MessageBoundsError(f"{len(task.faces)} faces in one message, more than VEIL_MAX_FACES={max_faces}")
    return cut_prompts(task, max_chars)


def cut_prompts(task: PromptTask, max_chars: int) -> PromptTask:
    """``task`` with every prompt text cut to ``max_chars`` (logged when one was longer)."""
    texts = [task.prompt, task.negative_prompt, *(t for f in task.faces for t in (f.prompt, f.negative_prompt))]
    if all(len(text) <= max_chars for text in texts):
        return task
    log.warning("%s: prompt text cut to VEIL_MAX_PROMPT_CHARS=%d before tokenising", task.input_uri, max_chars)
    faces = [
        f.model_copy(update={"prompt": f.prompt[:max_chars], "negative_prompt": f.negative_prompt[:max_chars]})
        for f in task.faces[:1000]
    ]
    return task.model_copy(
        update={"prompt": task.prompt[:max_chars], "negative_prompt": task.negative_prompt[:max_chars], "faces": faces}
    )


def refused(rt: Runtime, task: ImageTask | PromptTask, refusal: Refused, task_name: str, queue: str) -> str:
    """Ends a refused message: its failed sidecar where ``sidecar_ok``, else a log line and a count.
    ``BrokerError`` when even that cannot be settled (the caller gives the message back)."""
    from workers.retries import settle, tier_of  # retries imports the Celery app; so does its caller

    exc = refusal.error
    log.error(
        "refused %s message (job %r, input %r, output %r): %s: %s",
        task_name,
        task.job_id,
        task.input_uri,
        task.output_uri,
        exc.reason,
        exc,
    )
    if refusal.sidecar_ok:
        if isinstance(task, PromptTask):  # the record repeats the prompts: never a huge sidecar
            task = cut_prompts(task.model_copy(update={"faces": task.faces[:1]}), rt.settings.max_prompt_chars)
        return settle(rt, task, task_name, queue, record=error_record(task, exc))
    metrics.failure(tier_of(task_name), exc.reason)
    return "failed"
