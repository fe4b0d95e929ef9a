"""Opening the input dataset for a participant-level run: validation, index, participant list.

Without ``--bids-database-dir`` every run validates the dataset (unless
``--skip-bids-validation``) and indexes it itself. With it, the index and the validator's verdict
are built once and shared (:mod:`tumsyn_bids.bids.database`): ``--index-only`` builds them ahead
of a cluster array, and every task reuses them while the files it reads are unchanged. The
recipes are in docs/hpc.md.

``--list-participants [FILE]`` writes the labels a run with the same selection options would
process (one per line, without ``sub-``; the participants of the plan, so ``.bidsignore``,
``--participant-label``, ``--session-label``, ``--bids-filter-file`` and ``--source`` apply as
in a run) and exits: 0, or 66 when none is selected.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import errors
from .errors import CLIError

if TYPE_CHECKING:
    import pandas as pd
    from bids import BIDSLayout

    from ..bids.database import Verdict
    from ..config import RunConfig

LOGGER = logging.getLogger("tumsyn_bids")


def validation_verdict(bids_dir: Path) -> Verdict:
    """Run the BIDS validator on ``bids_dir``; exit 16 when it cannot run."""
    from ..bids.database import Verdict
    from ..bids.validation import (
        ValidatorError,
        ValidatorNotFound,
        validate_bids,
        validator_version,
    )

    started = time.monotonic()
    try:
        result = validate_bids(bids_dir)
    except (ValidatorNotFound, ValidatorError) as exc:
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"cannot validate {bids_dir}: {exc}; install bids-validator-deno or pass "
            "--skip-bids-validation",
        ) from None
    seconds = time.monotonic() - started
    LOGGER.info("BIDS validation %s in %.1f s", "passed" if result.ok else "failed", seconds)
    return Verdict(
        ok=result.ok,
        errors=tuple(result.errors),
        validator=validator_version(),
        validated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def check_verdict(verdict: Verdict, bids_dir: Path, recorded_in: Path | None = None) -> None:
    """Exit 16 with the validator's first errors when ``verdict`` is a failure."""
    if verdict.ok:
        return
    listing = "\n  ".join(verdict.errors[:20])
    where = f" (verdict of {verdict.validated_at} recorded in {recorded_in})" if recorded_in else ""
    raise CLIError(
        errors.EX_INVALID_DATASET,
        f"{bids_dir} is not a valid BIDS dataset{where}:\n  {listing}\n(fix the dataset, or pass "
        "--skip-bids-validation to run anyway)",
    )


def open_dataset(config: RunConfig) -> BIDSLayout | None:
    """Validate (or reuse the recorded verdict) and open the index of ``config.bids_dir``.

    Returns a PyBIDS layout from the shared index with ``--bids-database-dir``, else None (the
    caller indexes the dataset itself). Exit 16 for an invalid dataset, 73 for an unusable
    database folder.
    """
    from ..bids.database import DatabaseError, open_shared_index

    validate = None
    if not config.skip_bids_validation:
        validate = functools.partial(validation_verdict, config.bids_dir)
    if config.bids_database_dir is None:
        if validate is not None:
            check_verdict(validate(), config.bids_dir)
        return None
    subjects = None if config.index_only else config.participant_label
    try:
        layout, shared = open_shared_index(
            config.bids_dir, config.bids_database_dir, subjects=subjects, validate=validate
        )
    except DatabaseError as exc:
        raise CLIError(errors.EX_CANTCREAT, str(exc)) from None
    except (OSError, ValueError) as exc:  # PyBIDS: an unreadable JSON file, a broken layout
        raise CLIError(errors.EX_NOINPUT, f"cannot index {config.bids_dir}: {exc}") from None
    if validate is not None:
        verdict = shared.verdict
        if verdict is None:
            LOGGER.info(
                "no validation recorded in %s (it was built with --skip-bids-validation): "
                "validating the dataset in this run",
                config.bids_database_dir,
            )
            verdict = validate()
        elif not shared.built:
            LOGGER.info(
                "BIDS validation: reusing the verdict of %s (%s) recorded in %s",
                verdict.validated_at,
                "passed" if verdict.ok else "failed",
                config.bids_database_dir,
            )
        check_verdict(verdict, config.bids_dir, None if shared.built else shared.database_dir)
    return layout


def write_participant_list(config: RunConfig, plan: pd.DataFrame) -> int:
    """``--list-participants``: the plan's participant labels, one per line; 66 when none."""
    from ..bids.io import atomic_write_text

    labels = sorted(set(plan["subject"])) if len(plan) else []
    if not labels:
        raise CLIError(
            errors.EX_NOINPUT,
            f"no participant selected in {config.bids_dir}: none has an anatomical image of a "
            f"source modality ({', '.join(config.request.sources)}) matching the selection",
        )
    text = "".join(f"{label}\n" for label in labels)
    if config.list_participants == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        path = atomic_write_text(Path(config.list_participants), text)
        LOGGER.info("wrote %d participant label(s) to %s", len(labels), path)
    return errors.EX_OK
