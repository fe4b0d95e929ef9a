"""Execute a plan table: provenance, the nipype run, and the record of what happened.

The command line (:mod:`tumsyn_bids.cli.run`) parses, validates and decides exit codes; this
module only runs what it is given and returns the plan with every job's final status:

* ``done``: the output and its sidecar exist (message: a repair the check made, if any);
* ``error``: the ``CheckImage`` node refused the voxel data of the source, or of the T1w whose
  brain mask it takes (a data problem: the message is the check's one line,
  ``sub-XX/.../file.nii.gz: reason``);
* ``failed``: a node crashed (message: the node, the exception's last line and the crash file
  that holds the traceback).

Nipype's own log goes to the run's ``logs/run-<run_id>/nipype.log``; on the terminal its error
records (the tracebacks of failed nodes) are held back, since the command line lists every
failed job in one line each (:func:`quiet_nipype_errors`).
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .batch import graph_plugin_args, prepare_environment, wait_for_graph_jobs
from .bids.dataset import detect_container, write_dataset_description
from .bids.io import atomic_write_json, atomic_write_text, is_finished
from .bids.names import bids_uri, brain_mask_relpath, subject_log_dir
from .bids.sidecars import inference_record, model_record, software_versions, synthesis_sidecar
from .config import RunConfig
from .interfaces.images import DATA_ERROR_FILE
from .locking import output_lock
from .model.metadata import DEFAULT_TEXT_HEADS, checkpoint_metadata, file_sha256
from .plan import write_plan_tsv
from .runlog import run_log_dir
from .workflows import init_tumsyn_wf
from .workflows.base import anat_workflow_name, job_dir, job_workflows, template_workflow_name
from .workflows.citation import write_citation

LOGGER = logging.getLogger("tumsyn_bids.pipeline")

#: Columns of ``sub-XX/log/jobs.tsv``, the per-participant record of every job's last outcome
#: (the reports read it; each run's ``logs/run-<run_id>/prompts.tsv`` holds that run's plan).
JOB_COLUMNS = ("output", "source", "target_suffix", "status", "message", "seconds", "finished_at")


def job_runtimes(work_dir: Path) -> dict[str, dict[str, Any]]:
    """Compute time of every job nipype ran under ``work_dir``, keyed by output path.

    Each job ends in a sink node whose inputs name the output; the job's time is the sum of
    its nodes' durations (queueing excluded), read from nipype's own result files. Jobs served
    from nipype's cache keep the time of the run that computed them.
    """
    from nipype.utils.filemanip import loadpkl

    times: dict[str, dict[str, Any]] = {}
    for sink in sorted(Path(work_dir).glob("tumsyn_wf/*/*/ds_synthesized/result_*.pklz")):
        try:
            relpath = loadpkl(sink).inputs["relpath"]
            results = [loadpkl(f) for f in sink.parents[1].glob("*/result_*.pklz")]
            seconds = sum(float(r.runtime.duration) for r in results)
            finished = max(str(r.runtime.endTime) for r in results)
        except Exception as exc:  # an unreadable or partial result file must not fail the run
            LOGGER.debug("no run time from %s: %s", sink, exc)
            continue
        times[relpath] = {"seconds": round(seconds, 2), "finished_at": finished}
    return times


def write_job_records(final: pd.DataFrame, output_dir: Path, work_dir: Path) -> list[Path]:
    """Merge this run's job outcomes into each participant's ``sub-XX/log/jobs.tsv``.

    One file per participant; the read-merge-write of each holds the output folder's lock
    (:func:`tumsyn_bids.locking.output_lock`), so runs of different sessions of one participant
    running at the same time both keep their rows. Rows of outputs this run did not touch
    (another session, another target) are kept; outputs found finished at planning time keep
    their earlier record.
    """
    times = job_runtimes(work_dir)
    written = []
    for subject, rows in final.groupby("subject", sort=True):
        with output_lock(output_dir):
            written.append(_merge_jobs(subject, rows, output_dir, times))
    return written


def _merge_jobs(
    subject: str, rows: pd.DataFrame, output_dir: Path, times: dict[str, dict[str, Any]]
) -> Path:
    """Merge ``rows`` into one participant's ``jobs.tsv`` (the caller holds the lock)."""
    path = subject_log_dir(output_dir, subject) / "jobs.tsv"
    old = pd.DataFrame(columns=list(JOB_COLUMNS))
    if path.is_file():
        old = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    new = []
    for row in rows.itertuples(index=False):
        key = row.output if isinstance(row.output, str) and row.output else row.source
        if row.status == "done" and key in set(old["output"]) and key not in times:
            continue
        record = {c: "" for c in JOB_COLUMNS}
        record.update(
            output=key,
            source=row.source,
            target_suffix=row.target_suffix or "",
            status=row.status,
            message=row.message or "",
            **{k: str(v) for k, v in times.get(key, {}).items()},
        )
        new.append(record)
    keep = old[~old["output"].isin([r["output"] for r in new])]
    merged = pd.concat([keep, pd.DataFrame(new, columns=list(JOB_COLUMNS))])
    merged = merged.sort_values("output")[list(JOB_COLUMNS)]
    return atomic_write_text(path, merged.to_csv(sep="\t", index=False))


def build_sidecars(plan: pd.DataFrame, config: RunConfig) -> dict[str, dict[str, Any]]:
    """The JSON sidecar of every planned output (nothing in it depends on the run's timing).

    With preprocessing, ``Sources`` also names the source's brain mask (a BIDS URI into this
    dataset); what preprocessing found is added when it has run
    (:func:`tumsyn_bids.bids.sidecars.complete_sidecar`).
    """
    inference = config.inference
    recorded = checkpoint_metadata(inference.checkpoint)
    heads = inference.text_heads or checkpoint_metadata(inference.text_encoder).get(
        "transformer_heads"
    )
    model_info = model_record(
        Path(inference.checkpoint).name,
        file_sha256(inference.checkpoint),
        Path(inference.text_encoder).name,
        file_sha256(inference.text_encoder),
        text_heads=int(heads or DEFAULT_TEXT_HEADS),
        # Files written by tumsyn-train record their settings; unnamed ones are not the
        # published weights either, so they must not be credited to Zenodo's record.
        name=recorded.get("model_name") or ("TUMSyn (tumsyn-train)" if recorded else None),
        intended_use=recorded.get("intended_use"),
    )
    versions = software_versions()
    sidecars = {}
    for row in plan[plan["status"] == "planned"].itertuples(index=False):
        grid = row.output_grid
        voxel = None if grid.is_identity else list(grid.voxel_size)
        record = inference_record(
            patch_size=inference.patch_size,
            overlap=inference.overlap,
            batch_size=inference.batch_size,
            device=inference.device_type or inference.device,
            precision=inference.precision,
            reference=inference.reference,
            output_voxel_size=voxel,
            speed=inference.speed,
        )
        sidecars[row.output] = synthesis_sidecar(
            source_relpath=row.source,
            target_suffix=row.target_suffix,
            source_prompt=row.source_prompt,
            target_prompt=row.target_prompt,
            model=model_info,
            inference=record,
            software=versions,
            target_protocol={**row.target_protocol, "VoxelSize": list(grid.voxel_size)},
            output_voxel_size=voxel,
            extra_sources=[bids_uri(brain_mask_relpath(row.source), "")]
            if config.preproc.full
            else [],
        )
    return sidecars


class _HoldNodeErrors(logging.Filter):
    """Drops nipype's records about failed nodes (tracebacks, crash-file notices)."""

    _WARNINGS = ("[Node] Error on", "Storing result file without outputs")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return False
        return not (
            record.levelno == logging.WARNING and str(record.msg).startswith(self._WARNINGS)
        )


@contextmanager
def quiet_nipype_errors(log_file: Path) -> Iterator[None]:
    """While running: everything nipype logs also goes to ``log_file``, and its terminal
    handlers drop the records about failed nodes (:class:`_HoldNodeErrors`), whose tracebacks
    stay in that file and in the crash files. Handlers are restored afterwards."""
    nipype_logger = logging.getLogger("nipype")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    hold = _HoldNodeErrors()
    terminal = list(nipype_logger.handlers)
    for handler in terminal:
        handler.addFilter(hold)
    nipype_logger.addHandler(to_file)
    try:
        yield
    finally:
        nipype_logger.removeHandler(to_file)
        to_file.close()
        for handler in terminal:
            handler.removeFilter(hold)


def job_folders(work_dir: Path, names: tuple[str, str], row: Any) -> list[Path]:
    """The work-dir folders whose nodes a job depends on, upstream first: the T1w reference's
    anat workflow (if any), the source's anat workflow, the job's own workflow."""
    folders = []
    reference = getattr(row, "anat_reference", None)
    if isinstance(reference, str) and reference:
        folders.append(job_dir(work_dir, (names[0], anat_workflow_name(reference))))
    folders.append(job_dir(work_dir, (names[0], anat_workflow_name(row.source))))
    folders.append(job_dir(work_dir, names))
    return folders


def _crash_line(
    output: str, folders: list[Path], crash_dir: Path, output_dir: Path, since: float
) -> str:
    """One line for a job that crashed: the node, the exception and its crash file. Crash
    files of the folders' nodes are searched upstream first (a failed preprocessing node is
    why the synthesis never ran)."""
    crashes = sorted(crash_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)
    texts = []
    for crash in crashes:
        if crash.stat().st_mtime < since - 1:
            break
        texts.append((crash, crash.read_text(encoding="utf-8", errors="replace")))
    for folder in folders:
        for crash, text in texts:
            where_run = next(
                (ln.split(": ", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith("Working directory: ")),
                "",
            )  # fmt: skip
            if not where_run.startswith(f"{folder}/"):
                continue
            node = Path(where_run).name
            last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
            try:
                where = crash.relative_to(output_dir).as_posix()
            except ValueError:
                where = str(crash)
            return f"{output}: synthesis crashed in node {node} ({last}); traceback in {where}"
    return (
        f"{output}: not synthesized (the workflow stopped before this job finished; see "
        f"{crash_dir} and the run's nipype.log)"
    )


def job_outcomes(plan: pd.DataFrame, config: RunConfig, since: float) -> pd.DataFrame:
    """The plan with the outcome of every planned job after the workflow ran (module
    docstring): ``done``, ``error`` (the check's one line, from ``data_error.txt`` in the
    job's check node) or ``failed`` (see :func:`_crash_line`). ``since`` is when the workflow
    started; files older than that belong to earlier runs and are not read."""
    from nipype.utils.filemanip import loadpkl

    output_dir, work_dir = config.output_dir, config.execution.work_dir
    names = job_workflows(plan)
    final = plan.copy()
    for i, row in final[final["status"] == "planned"].iterrows():
        folders = job_folders(work_dir, names[row["output"]], row)
        if is_finished(output_dir, row["output"]):
            final.at[i, "status"] = "done"
            for result in (folders[-2] / "check_image").glob("result_*.pklz"):
                try:
                    warning = loadpkl(result).outputs.warning
                except Exception:  # noqa: BLE001 - the message is a courtesy
                    continue
                final.at[i, "message"] = warning or ""
            continue
        refusals = [f / "check_image" / DATA_ERROR_FILE for f in folders[:-1]]
        refusal = next(
            (r for r in reversed(refusals) if r.is_file() and r.stat().st_mtime >= since - 1),
            None,
        )
        if refusal is not None:
            final.at[i, "status"] = "error"
            message = refusal.read_text(encoding="utf-8").strip()
            if refusal != refusals[-1]:
                message = (
                    f"{row['output']}: the T1w whose brain mask it takes is unusable: {message}"
                )
            final.at[i, "message"] = message
            continue
        final.at[i, "status"] = "failed"
        crash_dir = subject_log_dir(output_dir, row["subject"])
        # the source's registrations to templates (--output-spaces) come before the job
        pattern = template_workflow_name(row["source"], "TEMPLATE").replace("TEMPLATE", "*")
        registrations = sorted(folders[-1].parent.glob(pattern))
        folders = [*folders[:-1], *registrations, folders[-1]]
        final.at[i, "message"] = _crash_line(row["output"], folders, crash_dir, output_dir, since)
    return final


def preproc_threads(config: RunConfig) -> int:
    """Threads of a brain-extraction node: ``--omp-nthreads``, else all of ``--nprocs`` up to
    8 (fMRIPrep's rule; the masks do not depend on it)."""
    execution = config.execution
    return int(execution.omp_nthreads or max(1, min(execution.nprocs, 8)))


def execute_plan(plan: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """Run every planned job of ``plan`` as ``config`` says; return the plan with ``done``,
    ``error`` and ``failed`` statuses filled in (:func:`job_outcomes`).

    Writes the shared files under the output lock (``dataset_description.json``,
    ``logs/CITATION.md``, then every participant's ``jobs.tsv``) and the run's own log folder
    (:mod:`tumsyn_bids.runlog`: ``prompts.tsv`` as executed, ``runtime.json``, ``nipype.log``).
    """
    from nipype import config as nipype_config

    output_dir, work_dir = config.output_dir, config.execution.work_dir
    execution = config.execution
    run_dir = run_log_dir(output_dir, config.run_id)
    sidecars = build_sidecars(plan, config)
    with output_lock(output_dir):
        write_dataset_description(
            output_dir, config.bids_dir, __version__, container=detect_container()
        )

    nipype_config.set(
        "execution", "stop_on_first_crash", str(execution.stop_on_first_crash).lower()
    )
    nipype_config.set("execution", "remove_unnecessary_outputs", "false")
    workflow = init_tumsyn_wf(
        plan,
        config.bids_dir,
        output_dir,
        work_dir,
        config.inference,
        sidecars,
        config.request,
        preproc=config.preproc,
        omp_nthreads=preproc_threads(config),
        output_spaces=config.output_spaces,
    )
    if workflow.list_node_names():
        # The methods text of the steps this run takes; a run with nothing left to do keeps
        # the text of the run that made the outputs.
        with output_lock(output_dir):
            write_citation(output_dir, workflow)
    if execution.write_graph:
        try:
            workflow.write_graph(graph2use="colored", format="svg", simple_form=True)
        except OSError as exc:  # graphviz's `dot` is missing: the .dot file is still written
            LOGGER.warning("graph written as .dot only under %s (%s)", work_dir, exc)
    started = time.time()
    if workflow.list_node_names():
        prepare_environment(execution.plugin)  # LOGNAME for nipype's SLURM plugins
        plugin_args, tag = graph_plugin_args(execution.plugin, execution.plugin_args)
        with quiet_nipype_errors(run_dir / "nipype.log"):
            try:
                workflow.run(plugin=execution.plugin, plugin_args=plugin_args)
            except Exception as exc:  # nipype raises RuntimeError listing the crashed nodes
                first = str(exc).strip().splitlines()[:1]
                LOGGER.debug("nipype reported: %s", first[0] if first else type(exc).__name__)
        wait_for_graph_jobs(tag)  # SLURMGraph returns when its jobs are submitted
    final = job_outcomes(plan, config, started)
    write_plan_tsv(final, run_dir / "prompts.tsv")
    write_job_records(final, output_dir, work_dir)
    atomic_write_json(
        run_dir / "runtime.json",
        {
            "seconds": round(time.time() - started, 2),
            "host": platform.node(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return final
