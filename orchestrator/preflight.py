"""``veil run``'s checks, in the order a user's mistakes should be answered, before anything
heavy is imported: torch and diffusers take 20-80 s to import on a small machine, and a typo in
INPUT used to be answered after them, and with "model weights missing" (issue 25).

1. INPUT: there, and listable (a folder, glob, list file or ``s3://`` prefix);
2. OUTPUT: outside INPUT, and writable;
3. both inside the allowed roots (``VEIL_INPUT_ROOTS`` / ``VEIL_OUTPUT_ROOTS``; SECURITY.md);
4. INPUT's whole listing planned: every output under OUTPUT, one input per output;
5. the model weights the method needs (last: they are the most expensive to fix).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from models.weights import missing_files
from orchestrator.listing import Listing, check_whole_listing, open_listing
from orchestrator.outputcheck import check_output_outside_input, check_output_writable
from shared.errors import InputError, MissingWeightsError
from shared.keys import spec_for
from shared.messages import JobSpec
from shared.roots import AllowedRoots, check_job_roots
from shared.settings import Method, Settings
from shared.storage import Storage


@dataclass(frozen=True)
class Checked:
    """What the checks built and ``veil run`` goes on with."""

    listing: Listing
    spec: JobSpec


def check_run(
    input_spec: str,
    output: str,
    settings: Settings,
    storage: Storage,
    *,
    overwrite: bool = False,
    page_size: int = 1000,
) -> Checked:
    # 1. INPUT
    listing = open_listing(input_spec, storage, page_size)
    # 2. OUTPUT
    check_output_outside_input(input_spec, output)
    check_output_writable(output)
    # 3. Allowed roots (unset: this run's own INPUT and OUTPUT); every key lies under the listing's root
    check_job_roots(AllowedRoots.of(settings.input_roots, settings.output_roots), [listing.root, input_spec], output)
    # 4. The whole listing planned
    spec = spec_for(uuid.uuid4().hex[:12], "veil-run", listing.root, input_spec, output, settings, overwrite=overwrite)
    if check_whole_listing(listing, spec) == 0:
        raise InputError(f"INPUT: no images found in {input_spec!r}")
    # 5. The weights (a classical method needs the detector only: MTCNN's ship in its wheel)
    missing = [] if settings.method is not Method.SD else missing_files(Path(settings.models_dir))
    if missing:
        raise MissingWeightsError([str(p) for p in missing], str(settings.models_dir))
    return Checked(listing, spec)
