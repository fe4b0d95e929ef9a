"""Execute a plan table: provenance, the nipype run, and the record of what happened.

The command line (:mod:`tumsyn_bids.cli.run`) parses, validates and decides exit codes; this
module only runs what it is given and returns the plan with every job's final status.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .bids.dataset import detect_container, write_dataset_description
from .bids.io import atomic_write_json, atomic_write_text, is_finished
from .bids.names import subject_log_dir
from .bids.sidecars import inference_record, model_record, software_versions, synthesis_sidecar
from .config import RunConfig
from .model.metadata import DEFAULT_TEXT_HEADS, checkpoint_metadata, file_sha256
from .plan import write_plan_tsv
from .workflows import init_tumsyn_wf
from .workflows.citation import write_citation

LOGGER = logging.getLogger("tumsyn_bids.pipeline")

#: Columns of ``sub-XX/log/jobs.tsv``, the per-participant record of every job's last outcome
#: (the reports read it; ``logs/prompts.tsv`` only holds the latest run's selection).
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

    One file per participant, so participant-level runs launched in parallel for different
    participants never write the same file. Rows of outputs this run did not touch (another
    session, another target) are kept; outputs found finished at planning time keep their
    earlier record.
    """
    times = job_runtimes(work_dir)
    written = []
    for subject, rows in final.groupby("subject", sort=True):
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
        written.append(atomic_write_text(path, merged.to_csv(sep="\t", index=False)))
    return written


def build_sidecars(plan: pd.DataFrame, config: RunConfig) -> dict[str, dict[str, Any]]:
    """The JSON sidecar of every planned output (nothing in it depends on the run's timing)."""
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
        )
    return sidecars


def execute_plan(plan: pd.DataFrame, config: RunConfig) -> pd.DataFrame:
    """Run every planned job of ``plan`` as ``config`` says; return the plan with
    ``done``/``failed`` statuses filled in."""
    from nipype import config as nipype_config

    output_dir, work_dir = config.output_dir, config.execution.work_dir
    execution = config.execution
    sidecars = build_sidecars(plan, config)
    write_dataset_description(
        output_dir, config.bids_dir, __version__, container=detect_container()
    )

    nipype_config.set(
        "execution", "stop_on_first_crash", str(execution.stop_on_first_crash).lower()
    )
    nipype_config.set("execution", "remove_unnecessary_outputs", "false")
    workflow = init_tumsyn_wf(
        plan, config.bids_dir, output_dir, work_dir, config.inference, sidecars, config.request
    )
    if workflow.list_node_names():
        # The methods text of the steps this run takes; a run with nothing left to do keeps
        # the text of the run that made the outputs.
        write_citation(output_dir, workflow)
    if execution.write_graph:
        try:
            workflow.write_graph(graph2use="colored", format="svg", simple_form=True)
        except OSError as exc:  # graphviz's `dot` is missing: the .dot file is still written
            LOGGER.warning("graph written as .dot only under %s (%s)", work_dir, exc)
    started = time.time()
    if workflow.list_node_names():
        try:
            workflow.run(plugin=execution.plugin, plugin_args=dict(execution.plugin_args))
        except Exception as exc:  # nipype raises RuntimeError listing the crashed nodes
            LOGGER.warning("nipype reported: %s", exc)
    final = plan.copy()
    for i, row in final[final["status"] == "planned"].iterrows():
        if is_finished(output_dir, row["output"]):
            final.at[i, "status"] = "done"
        else:
            final.at[i, "status"] = "failed"
            final.at[i, "message"] = f"{row['output']}: synthesis failed (see crash files)"
    write_plan_tsv(final, output_dir)
    write_job_records(final, output_dir, work_dir)
    atomic_write_json(
        output_dir / "logs" / "runtime.json",
        {
            "seconds": round(time.time() - started, 2),
            "host": platform.node(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return final
