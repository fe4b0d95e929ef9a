"""Execute a plan table: weights, provenance, the nipype run, and the record of what happened.

Kept apart from :mod:`tumsyn_bids.cli.run` so that the command line only parses and validates;
this module needs torch (checksums, CUDA detection) and nipype.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
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
from .cli import errors
from .cli.run import CLIError, write_prompts_tsv
from .model.checkpoints import file_sha256
from .workflows import ModelSpec, init_tumsyn_wf

LOGGER = logging.getLogger("tumsyn_bids.pipeline")


def resolve_weights(args: argparse.Namespace) -> tuple[Path, Path]:
    if not args.checkpoint or not args.text_encoder:
        raise CLIError(
            errors.EX_USAGE,
            "no model: give --checkpoint and --text-encoder (or TUMSYN_CHECKPOINT and "
            "TUMSYN_TEXT_ENCODER); the official weights are in Zenodo record 13119176",
        )
    paths = Path(args.checkpoint), Path(args.text_encoder)
    for path in paths:
        if not path.is_file():
            raise CLIError(errors.EX_NOINPUT, f"weights file not found: {path}")
    return paths


def _plugin(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.use_plugin:
        import yaml

        try:
            spec = yaml.safe_load(args.use_plugin.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CLIError(errors.EX_USAGE, f"--use-plugin {args.use_plugin}: {exc}") from None
        return spec.get("plugin", "MultiProc"), dict(spec.get("plugin_args") or {})
    plugin_args: dict[str, Any] = {"n_procs": args.nprocs, "raise_insufficient": False}
    if args.mem_gb:
        plugin_args["memory_gb"] = args.mem_gb
    if args.nprocs == 1:
        return "Linear", {}
    return "MultiProc", plugin_args


def execute_plan(plan: pd.DataFrame, args: argparse.Namespace) -> int:
    import torch
    from nipype import config as nipype_config

    checkpoint, text_encoder = resolve_weights(args)
    if args.omp_nthreads:
        torch.set_num_threads(args.omp_nthreads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    output_dir = Path(args.output_dir).resolve()
    bids_dir = Path(args.bids_dir).resolve()
    text_heads = args.text_heads or 8
    model_info = model_record(
        checkpoint.name,
        file_sha256(checkpoint),
        text_encoder.name,
        file_sha256(text_encoder),
        text_heads=text_heads,
    )
    versions = software_versions()
    sidecars = {}
    for row in plan[plan["status"] == "planned"].itertuples(index=False):
        resampled = any(abs(s - 1.0) > 1e-9 for s in row.scale_ijk)
        voxel = list(row.output_voxel_size) if resampled else None
        inference = inference_record(
            patch_size=args.patch_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device=device,
            precision=args.precision,
            reference=args.reference,
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
    settings = {
        "patch_size": list(args.patch_size),
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "device": device,
        "precision": args.precision,
        "reference": bool(args.reference),
        "text_heads": text_heads,
    }

    write_dataset_description(output_dir, bids_dir, __version__, container=detect_container())
    logs = output_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    write_citation(output_dir, __version__, settings)
    run_config = {
        "bids_dir": str(bids_dir),
        "output_dir": str(output_dir),
        "work_dir": str(Path(args.work_dir).resolve()),
        "model": model_info,
        "inference": settings,
        "targets": list(args.target),
        "sources": list(args.source),
        "output_resolution": args.output_resolution,
        "participant_label": args.participant_label,
        "session_label": args.session_label,
        "versions": versions,
    }
    atomic_write_json(logs / "config.json", run_config)

    crash_dirs = {}
    for subject in sorted(set(plan["subject"])):
        crash_dirs[subject] = str(output_dir / f"sub-{subject}" / "log")
    spec = ModelSpec(
        checkpoint=str(checkpoint.resolve()),
        text_encoder=str(text_encoder.resolve()),
        text_heads=args.text_heads,
        device=args.device,
        precision=args.precision,
        patch_size=tuple(args.patch_size),
        overlap=args.overlap,
        batch_size=args.batch_size,
        reference=args.reference,
    )
    nipype_config.set("execution", "stop_on_first_crash", str(args.stop_on_first_crash).lower())
    nipype_config.set("execution", "crashfile_format", "txt")
    nipype_config.set("execution", "remove_unnecessary_outputs", "false")
    workflow = init_tumsyn_wf(
        plan, bids_dir, output_dir, Path(args.work_dir).resolve(), spec, sidecars, crash_dirs
    )
    if args.write_graph:
        workflow.write_graph(graph2use="colored", format="svg", simple_form=True)
    started = time.time()
    crashed = None
    if len(workflow.list_node_names()):
        plugin, plugin_args = _plugin(args)
        try:
            workflow.run(plugin=plugin, plugin_args=plugin_args)
        except Exception as exc:  # nipype raises RuntimeError listing crashed nodes
            crashed = exc
    final = _final_status(plan, output_dir)
    write_prompts_tsv(final, output_dir)
    atomic_write_json(
        logs / "runtime.json",
        {
            "seconds": round(time.time() - started, 2),
            "host": platform.node(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return _summarize(final, crashed, crash_dirs)


def _final_status(plan: pd.DataFrame, output_dir: Path) -> pd.DataFrame:
    final = plan.copy()
    for i, row in final.iterrows():
        if row["status"] == "planned":
            done = is_finished(output_dir, row["output"])
            final.at[i, "status"] = "done" if done else "failed"
            if not done:
                final.at[i, "message"] = f"{row['output']}: synthesis failed (see crash files)"
    return final


def _summarize(final: pd.DataFrame, crashed: Exception | None, crash_dirs: dict) -> int:
    counts = final["status"].value_counts().to_dict()
    LOGGER.info("outputs: %s", json.dumps(counts, sort_keys=True))
    for row in final.itertuples(index=False):
        if row.status == "error":
            print(f"tumsyn: error: {row.message}", file=sys.stderr)
    failed = final[final["status"] == "failed"]
    if len(failed):
        subjects = sorted(set(failed["subject"]))
        where = ", ".join(crash_dirs[s] for s in subjects)
        print(
            f"tumsyn: error: {len(failed)} synthesis job(s) failed for "
            f"{', '.join('sub-' + s for s in subjects)}; crash files in {where}",
            file=sys.stderr,
        )
        return 1
    if crashed is not None:
        LOGGER.warning("nipype reported: %s", crashed)
    if counts.get("error"):
        return errors.EX_DATAERR
    return errors.EX_OK
