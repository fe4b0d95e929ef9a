"""``tumsyn bids_dir output_dir {participant,group}``: the BIDS App.

:mod:`.parser` turns the command line into one frozen :class:`~tumsyn_bids.config.RunConfig`;
this module runs it: validate and index the dataset, build the plan table, run it as a nipype
workflow, write the reports. Exit codes follow the BIDS Apps execution spec (see
:mod:`tumsyn_bids.cli.errors`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no telemetry, ever; before nipype is imported

from . import errors  # noqa: E402
from .errors import CLIError  # noqa: E402
from .parser import build_parser, parse_config  # noqa: E402, F401 - build_parser: public API

if TYPE_CHECKING:
    from ..config import RunConfig

LOGGER = logging.getLogger("tumsyn_bids")


def validate_input(bids_dir: Path) -> None:
    from ..bids.validation import ValidatorNotFound, validate_bids

    try:
        result = validate_bids(bids_dir)
    except ValidatorNotFound as exc:
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"cannot validate {bids_dir}: {exc}; install bids-validator-deno or pass "
            "--skip-bids-validation",
        ) from None
    if not result.ok:
        listing = "\n  ".join(result.errors[:20])
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"{bids_dir} is not a valid BIDS dataset:\n  {listing}\n(fix the dataset, or pass "
            "--skip-bids-validation to run anyway)",
        )


def _print_plan(plan) -> None:
    cols = ["subject", "session", "source", "target_suffix", "status", "output"]
    print(plan[cols].to_string(index=False))
    for row in plan.itertuples(index=False):
        if row.status == "error":
            print(f"ERROR {row.message}")
        elif row.target_prompt:
            print(f"{row.output}\n  source: {row.source_prompt}\n  target: {row.target_prompt}")


def run_participant(config: RunConfig) -> int:
    """Participant level: validate, index, plan; then a dry run, the reports, or the run."""
    from ..bids.layout import BIDSIndexError, index_anatomical
    from ..plan import PlanError, build_plan, write_plan_tsv

    if not config.skip_bids_validation:
        validate_input(config.bids_dir)
    inference = config.inference
    try:
        index = index_anatomical(
            config.bids_dir,
            participant_labels=config.participant_label,
            session_labels=config.session_label,
            bids_filters=config.bids_filters,
            database_dir=config.bids_database_dir,
        )
        plan = build_plan(
            index,
            config.request,
            config.output_dir,
            overwrite=config.execution.overwrite,
            patch_size=inference.patch_size if inference else None,
            reference=bool(inference and inference.reference),
        )
    except BIDSIndexError as exc:
        raise CLIError(errors.EX_NOINPUT, str(exc)) from None
    except PlanError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    if config.reports_only:
        return write_reports(config, sorted(set(plan["subject"])))
    if plan.empty:
        raise CLIError(
            errors.EX_NOINPUT,
            f"no anatomical image of a source modality ({', '.join(config.request.sources)}) "
            f"was selected in {config.bids_dir}",
        )
    write_plan_tsv(plan, config.output_dir)
    write_config(config)
    if config.dry_run:
        _print_plan(plan)
        return errors.EX_OK
    code = run_plan(plan, config)
    write_reports(config, sorted(set(plan["subject"])))
    return code


def write_config(config: RunConfig) -> Path:
    """Record the run configuration in ``logs/config.json`` (written once per run)."""
    from ..bids.io import atomic_write_json

    return atomic_write_json(config.output_dir / "logs" / "config.json", config.to_json())


def write_reports(config: RunConfig, subjects: list[str]) -> int:
    """Write ``sub-XX.html`` for ``subjects`` from what the output folder holds.

    A report that cannot be written is logged, never turned into a failed run: the images are
    the product, the report is a view of them.
    """
    from ..reports import build_subject_report

    if not subjects:
        raise CLIError(errors.EX_NOINPUT, f"no participant selected in {config.bids_dir}")
    for subject in subjects:
        try:
            path = build_subject_report(config.output_dir, subject, config.bids_dir)
        except Exception as exc:  # noqa: BLE001 - reported, the run's outcome stands
            LOGGER.error("report of sub-%s failed: %s", subject, exc)
            continue
        LOGGER.info("report: %s", path)
    return errors.EX_OK


def run_group(config: RunConfig) -> int:
    """Group level: ``group_synthesis.tsv`` and ``group.html`` over every participant's outputs."""
    from ..reports import build_group_report, list_subjects

    if not list_subjects(config.output_dir):
        raise CLIError(
            errors.EX_NOINPUT,
            f"{config.output_dir} holds no participant outputs; run the participant level first",
        )
    summary = build_group_report(config.output_dir, config.bids_dir)
    table = summary["table"]
    LOGGER.info("group: %s (%d rows), %s", summary["tsv"], len(table), summary["html"])
    if summary["missing"]:
        LOGGER.warning(
            "participants without outputs: %s", ", ".join(f"sub-{m}" for m in summary["missing"])
        )
    outliers = table.loc[table["outlier"].eq("yes"), "output"] if len(table) else []
    for output in outliers:
        LOGGER.warning("intensity outlier: %s", output)
    return errors.EX_OK


def run_plan(plan, config: RunConfig) -> int:
    """Execute the plan and turn its outcome into messages and an exit code."""
    from ..bids.names import subject_log_dir
    from ..pipeline import execute_plan

    final = execute_plan(plan, config)
    counts = final["status"].value_counts().to_dict()
    LOGGER.info("outputs: %s", json.dumps(counts, sort_keys=True))
    for message in final.loc[final["status"] == "error", "message"]:
        print(f"tumsyn: error: {message}", file=sys.stderr)
    failed = sorted(set(final.loc[final["status"] == "failed", "subject"]))
    if failed:
        where = ", ".join(str(subject_log_dir(config.output_dir, s)) for s in failed)
        print(
            f"tumsyn: error: {counts['failed']} synthesis job(s) failed for "
            f"{', '.join('sub-' + s for s in failed)}; crash files in {where}",
            file=sys.stderr,
        )
        return errors.EX_FAILURE
    return errors.EX_DATAERR if counts.get("error") else errors.EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tumsyn``; returns the exit code."""
    # Our own handler only: nipype configures its loggers itself, a root handler would echo them.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    start = time.time()
    try:
        config, verbose = parse_config(argv)
        LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
        if config.analysis_level == "group":
            code = run_group(config)
        else:
            code = run_participant(config)
    except CLIError as exc:
        print(f"tumsyn: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("tumsyn: interrupted", file=sys.stderr)
        return 130
    LOGGER.info("finished in %.1f s", time.time() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
