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
    """Run the BIDS validator; exit 16 when the dataset is invalid or cannot be validated."""
    from .inputs import check_verdict, validation_verdict

    check_verdict(validation_verdict(bids_dir), bids_dir)


def _print_plan(plan) -> None:
    cols = ["subject", "session", "source", "target_suffix", "status", "output"]
    print(plan[cols].to_string(index=False))
    for row in plan.itertuples(index=False):
        if row.status == "error":
            print(f"ERROR {row.message}")
        elif row.target_prompt:
            print(f"{row.output}\n  source: {row.source_prompt}\n  target: {row.target_prompt}")


def exit_code(plan) -> int:
    """The run's exit code from its plan: 1 when a job crashed (``failed``), 65 when a job
    could not run because of its data (``error``), else 0. A dry run's plan gives the code the
    real run would give for what it can check without the model."""
    statuses = set(plan["status"])
    if "failed" in statuses:
        return errors.EX_FAILURE
    return errors.EX_DATAERR if "error" in statuses else errors.EX_OK


def failure_lines(plan) -> list[str]:
    """One line per job that could not run, ``sub-XX/.../file.nii.gz: reason``: the message
    of its row, as in ``prompts.tsv``, ``jobs.tsv`` and the report; a source refused for
    several targets is listed once, a multi-line message (several problems of one image) gives
    one line per problem."""
    lines: list[str] = []
    for message in plan.loc[plan["status"].isin(["error", "failed"]), "message"]:
        for line in str(message).splitlines():
            if line.strip() and line not in lines:
                lines.append(line)
    return lines


def print_failures(lines: list[str], code: int) -> None:
    """The run's last lines: what could not run, one job per line (nothing when all ran)."""
    if not lines:
        return
    what = "crashed or could not run" if code == errors.EX_FAILURE else "could not run"
    print(f"tumsyn: error: jobs {what} (exit {code}); one line per image or job:", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)


def _claim_keys(plan) -> list[str]:
    planned = plan[plan["status"] == "planned"]
    return [
        f"sub-{s}" + (f"_ses-{t}" if isinstance(t, str) and t else "")
        for s, t in zip(planned["subject"], planned["session"], strict=True)
    ]


def run_participant(config: RunConfig) -> int:
    """Participant level (see :func:`participant_level`); prints the failed jobs last."""
    code, lines = participant_level(config)
    print_failures(lines, code)
    return code


def participant_level(config: RunConfig) -> tuple[int, list[str]]:
    """Validate, index, plan; then a dry run, the reports, or the run.

    Returns the exit code and :func:`failure_lines`. A real run claims the participants and
    sessions it writes (another run writing one of them: exit 73), removes leftovers of
    interrupted runs (:func:`tumsyn_bids.bids.io.remove_stale_temporaries`), and records its
    plan, configuration and run time in its own ``logs/run-<run_id>/``
    (:mod:`tumsyn_bids.runlog`).
    """
    from ..bids.layout import BIDSIndexError, index_anatomical
    from ..plan import PlanError, build_plan, write_plan_tsv
    from ..preflight import check_memory, check_source_data, memory_limit_bytes
    from ..runlog import run_log_dir
    from .inputs import open_dataset, write_participant_list

    layout = open_dataset(config)  # validates, or reuses the verdict of --bids-database-dir
    if config.index_only and not config.list_participants:
        return errors.EX_OK, []
    inference = config.inference
    try:
        index = index_anatomical(
            layout if layout is not None else config.bids_dir,
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
            preprocess=config.preproc.full,
            output_spaces=config.output_spaces,
        )
    except BIDSIndexError as exc:
        raise CLIError(errors.EX_NOINPUT, str(exc)) from None
    except PlanError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    if config.list_participants:
        return write_participant_list(config, plan), []
    if config.reports_only:
        return write_reports(config, sorted(set(plan["subject"]))), []
    if plan.empty:
        raise CLIError(
            errors.EX_NOINPUT,
            f"no anatomical image of a source modality ({', '.join(config.request.sources)}) "
            f"was selected in {config.bids_dir}",
        )
    mem_gb = config.execution.mem_gb
    plan = check_memory(
        plan,
        {r.relpath: r.shape for r in index},
        memory_limit_bytes(mem_gb),
        "--mem-gb allows" if mem_gb else "this machine has",
    )
    run_dir = run_log_dir(config.output_dir, config.run_id)
    if config.dry_run:
        plan = check_source_data(plan, config.bids_dir)
        write_plan_tsv(plan, run_dir / "prompts.tsv")
        write_config(config)
        _print_plan(plan)
        return exit_code(plan), failure_lines(plan)
    final = _run_claimed(plan, config)
    write_reports(config, sorted(set(plan["subject"])))
    return exit_code(final), failure_lines(final)


def _run_claimed(plan, config: RunConfig):
    """Claim the plan's sessions, clear leftovers, record the plan and configuration, run."""
    from ..bids.io import remove_stale_temporaries
    from ..locking import ClaimedError, claim, output_lock
    from ..plan import write_plan_tsv
    from ..runlog import run_log_dir

    try:
        held = claim(config.output_dir, _claim_keys(plan))
    except ClaimedError as exc:
        raise CLIError(errors.EX_CANTCREAT, str(exc)) from None
    with held:
        with output_lock(config.output_dir):  # shared files' leftovers: no writer holds them
            remove_stale_temporaries(config.output_dir, sorted(set(plan["subject"])))
        write_plan_tsv(plan, run_log_dir(config.output_dir, config.run_id) / "prompts.tsv")
        write_config(config)
        return run_plan(plan, config)


def write_config(config: RunConfig) -> Path:
    """Record the run configuration in the run's ``logs/run-<run_id>/config.json``."""
    from ..bids.io import atomic_write_json
    from ..runlog import run_log_dir

    folder = run_log_dir(config.output_dir, config.run_id)
    return atomic_write_json(folder / "config.json", config.to_json())


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


def run_plan(plan, config: RunConfig):
    """Execute the plan; return it with every job's outcome (:func:`exit_code` and
    :func:`failure_lines` turn it into the exit code and the closing lines)."""
    from ..pipeline import execute_plan

    final = execute_plan(plan, config)
    counts = final["status"].value_counts().to_dict()
    LOGGER.info("outputs: %s", json.dumps(counts, sort_keys=True))
    return final


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tumsyn``; returns the exit code."""
    # Our own handler only: nipype configures its loggers itself, a root handler would echo them.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    start = time.time()
    lines: list[str] = []
    try:
        config, verbose = parse_config(argv)
        LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
        if config.analysis_level == "group":
            code = run_group(config)
        else:
            code, lines = participant_level(config)
    except CLIError as exc:
        print(f"tumsyn: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("tumsyn: interrupted", file=sys.stderr)
        return 130
    LOGGER.info("finished in %.1f s", time.time() - start)
    print_failures(lines, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
