"""Execute a plan table: provenance, the nipype run, and the record of what happened.

The command line (:mod:`tumsyn_bids.cli.run`) parses, validates and decides exit codes; this
module only runs what it is given and returns the plan with every job's final status.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .bids.derivatives import (
    atomic_write_json,
    detect_container,
    inference_record,
    is_finished,
    model_record,
    software_versions,
    synthesis_sidecar,
    write_citation,
    write_dataset_description,
)
from .model.checkpoints import checkpoint_metadata, file_sha256
from .model.inference import resolve_device
from .plan import write_plan_tsv
from .workflows import ModelSpec, init_tumsyn_wf

LOGGER = logging.getLogger("tumsyn_bids.pipeline")


def build_sidecars(
    plan: pd.DataFrame, model: ModelSpec, device_type: str
) -> dict[str, dict[str, Any]]:
    """The JSON sidecar of every planned output (nothing in it depends on the run's timing)."""
    recorded = checkpoint_metadata(model.checkpoint)
    heads = model.text_heads or checkpoint_metadata(model.text_encoder).get("transformer_heads")
    model_info = model_record(
        Path(model.checkpoint).name,
        file_sha256(model.checkpoint),
        Path(model.text_encoder).name,
        file_sha256(model.text_encoder),
        text_heads=int(heads or model.heads),
        # Files written by tumsyn-train record their settings; unnamed ones are not the
        # published weights either, so they must not be credited to Zenodo's record.
        name=recorded.get("model_name") or ("TUMSyn (tumsyn-train)" if recorded else None),
        intended_use=recorded.get("intended_use"),
    )
    versions = software_versions()
    sidecars = {}
    for row in plan[plan["status"] == "planned"].itertuples(index=False):
        resampled = any(abs(s - 1.0) > 1e-9 for s in row.scale_ijk)
        voxel = list(row.output_voxel_size) if resampled else None
        inference = inference_record(
            patch_size=model.patch_size,
            overlap=model.overlap,
            batch_size=model.batch_size,
            device=device_type,
            precision=model.precision,
            reference=model.reference,
            output_voxel_size=voxel,
        )
        sidecars[row.output] = synthesis_sidecar(
            source_relpath=row.source,
            target_suffix=row.target_suffix,
            source_prompt=row.source_prompt,
            target_prompt=row.target_prompt,
            model=model_info,
            inference=inference,
            software=versions,
            target_protocol={**row.target_protocol, "VoxelSize": list(row.output_voxel_size)},
            output_voxel_size=voxel,
        )
    return sidecars


def execute_plan(
    plan: pd.DataFrame,
    *,
    bids_dir: Path,
    output_dir: Path,
    work_dir: Path,
    model: ModelSpec,
    plugin: str,
    plugin_args: dict[str, Any],
    run_config: dict[str, Any],
    write_graph: bool = False,
    stop_on_first_crash: bool = False,
) -> pd.DataFrame:
    """Run every planned job; return the plan with ``done``/``failed`` statuses filled in."""
    from nipype import config as nipype_config

    device_type = resolve_device(model.device).type
    sidecars = build_sidecars(plan, model, device_type)
    settings = {
        k: v
        for k, v in dataclasses.asdict(model).items()
        if k not in ("checkpoint", "text_encoder")
    }
    settings["device"] = device_type

    write_dataset_description(output_dir, bids_dir, __version__, container=detect_container())
    write_citation(output_dir, __version__, settings)
    atomic_write_json(output_dir / "logs" / "config.json", {**run_config, "inference": settings})

    nipype_config.set("execution", "stop_on_first_crash", str(stop_on_first_crash).lower())
    nipype_config.set("execution", "remove_unnecessary_outputs", "false")
    workflow = init_tumsyn_wf(plan, bids_dir, output_dir, work_dir, model, sidecars)
    if write_graph:
        try:
            workflow.write_graph(graph2use="colored", format="svg", simple_form=True)
        except OSError as exc:  # graphviz's `dot` is missing: the .dot file is still written
            LOGGER.warning("graph written as .dot only under %s (%s)", work_dir, exc)
    started = time.time()
    if workflow.list_node_names():
        try:
            workflow.run(plugin=plugin, plugin_args=plugin_args)
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
    atomic_write_json(
        output_dir / "logs" / "runtime.json",
        {
            "seconds": round(time.time() - started, 2),
            "host": platform.node(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return final
