"""Nipype workflows that execute a plan table.

``init_tumsyn_wf`` builds one sub-workflow per participant/session; inside it each planned job is
a chain ``check -> synthesize -> postprocess -> sink``. The synthesis node is a GPU node
(``use_gpu``), so MultiProc runs at most ``n_gpu_procs`` of them at once while the CPU nodes of
other participants proceed. Other pipelines can embed :func:`init_synthesis_wf` directly.
Every setting comes from one :class:`~tumsyn_bids.config.InferenceConfig`; every output grid
from the plan's :class:`~tumsyn_bids.model.grid.OutputGrid`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.derivatives import subject_log_dir
from ..config import InferenceConfig
from ..interfaces import CheckImage, DerivativesSink, Postprocess, Synthesize


def synthesize_inputs(inference: InferenceConfig) -> dict[str, Any]:
    """Inputs of the :class:`Synthesize` interface that the configuration fixes."""
    inputs = {
        "checkpoint": inference.checkpoint,
        "text_encoder": inference.text_encoder,
        "patch_size": tuple(inference.patch_size),
        "overlap": inference.overlap,
        "batch_size": inference.batch_size,
        "device": inference.device_type or inference.device,
        "precision": inference.precision,
        "reference": inference.reference,
        "use_gpu": inference.use_gpu,
    }
    if inference.text_heads:
        inputs["text_heads"] = inference.text_heads
    if inference.num_threads:
        inputs["num_threads"] = inference.num_threads
    return inputs


def _safe(label: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", label or "")


def init_synthesis_wf(
    inference: InferenceConfig,
    name: str = "synthesis_wf",
    output_dir: str | None = None,
    relpath: str | None = None,
    sidecar: Mapping[str, Any] | None = None,
) -> pe.Workflow:
    """Synthesize one image: ``inputnode.source_file`` + ``inputnode.prompt`` -> ``out_file``.

    ``inputnode.source_name`` (optional) names the source in the check's messages (the plan
    gives its dataset-relative path). ``inputnode.voxel_size`` (mm, i, j, k) asks for that
    exact voxel size over the source's field of view (unset: the source grid);
    ``inputnode.expected_grid`` (an
    :meth:`OutputGrid.record <tumsyn_bids.model.grid.OutputGrid.record>` as JSON, e.g. the
    plan's) makes the post-processing check the written grid against it. With
    ``output_dir``/``relpath``/``sidecar`` a sink stores the result as a BIDS derivative.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["source_file", "source_name", "prompt", "voxel_size", "expected_grid"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="outputnode")
    check = pe.Node(CheckImage(), name="check_image")
    synth = pe.Node(
        Synthesize(**synthesize_inputs(inference)),
        name="synthesize",
        mem_gb=inference.mem_gb,
        n_procs=inference.num_threads or 1,
    )
    post = pe.Node(Postprocess(), name="postprocess")
    wf.connect([
        (inputnode, check, [("source_file", "in_file"), ("source_name", "display_name")]),
        (inputnode, synth, [("prompt", "prompt"), ("voxel_size", "voxel_size")]),
        (check, synth, [("out_file", "in_file")]),
        (synth, post, [("out_file", "in_file")]),
        (inputnode, post, [("source_file", "reference"), ("voxel_size", "voxel_size"),
                           ("expected_grid", "expected_grid")]),
        (post, outputnode, [("out_file", "out_file")]),
    ])  # fmt: skip
    if output_dir is not None:
        sink = pe.Node(
            DerivativesSink(
                output_dir=str(output_dir),
                relpath=relpath,
                sidecar=json.dumps(dict(sidecar or {}), sort_keys=True),
            ),
            name="ds_synthesized",
            run_without_submitting=True,
        )
        wf.connect(post, "out_file", sink, "in_file")
    return wf


def job_workflows(plan: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Output path -> (participant/session workflow name, job workflow name) of every planned
    row: the names :func:`init_tumsyn_wf` gives, so a job's nodes can be found in the work dir
    (``<work_dir>/tumsyn_wf/<session wf>/<job wf>/<node>``, :func:`job_dir`)."""
    names: dict[str, tuple[str, str]] = {}
    planned = plan[plan["status"] == "planned"]
    for (subject, session), rows in planned.groupby(
        [planned["subject"], planned["session"].fillna("")], sort=True
    ):
        sub_name = f"sub_{_safe(subject)}" + (f"_ses_{_safe(session)}" if session else "") + "_wf"
        for i, row in enumerate(rows.itertuples(index=False)):
            job_name = f"{_safe(row.source_suffix)}_to_{_safe(row.target_suffix)}_{i}_wf"
            names[row.output] = (sub_name, job_name)
    return names


def job_dir(work_dir: str | Path, names: tuple[str, str]) -> Path:
    """The work-dir folder of one job (``names`` from :func:`job_workflows`); its nodes'
    folders are ``check_image``, ``synthesize``, ``postprocess`` and ``ds_synthesized``."""
    return Path(work_dir) / "tumsyn_wf" / names[0] / names[1]


def init_tumsyn_wf(
    plan: pd.DataFrame,
    bids_dir: str | Path,
    output_dir: str | Path,
    work_dir: str | Path,
    inference: InferenceConfig,
    sidecars: Mapping[str, Mapping[str, Any]],
) -> pe.Workflow:
    """The whole run: one sub-workflow per participant/session with a job per planned row.

    ``sidecars`` maps each output path (plan column ``output``) to its JSON sidecar. Crash
    files of a participant's nodes go to :func:`subject_log_dir`, where users look for them.
    Workflow names are :func:`job_workflows`'.
    """
    wf = pe.Workflow(name="tumsyn_wf", base_dir=str(work_dir))
    planned = plan[plan["status"] == "planned"]
    names = job_workflows(plan)
    sub_wfs: dict[str, pe.Workflow] = {}
    for row in planned.itertuples(index=False):
        sub_name, job_name = names[row.output]
        if sub_name not in sub_wfs:
            sub_wfs[sub_name] = pe.Workflow(name=sub_name)
        job = init_synthesis_wf(
            inference,
            name=job_name,
            output_dir=str(output_dir),
            relpath=row.output,
            sidecar=sidecars[row.output],
        )
        job.inputs.inputnode.source_file = str(Path(bids_dir) / row.source)
        job.inputs.inputnode.source_name = row.source
        job.inputs.inputnode.prompt = row.target_prompt
        grid = row.output_grid
        if not grid.is_identity:
            job.inputs.inputnode.voxel_size = tuple(grid.voxel_size)
        job.inputs.inputnode.expected_grid = json.dumps(grid.record())
        sub_wfs[sub_name].add_nodes([job])
        # Per node: nipype reads crashdump_dir from each node's own config, and the config of a
        # nested workflow is not passed down to its nodes.
        crash_dir = str(subject_log_dir(output_dir, row.subject))
        for node in job._get_all_nodes():
            node.config = {"execution": {"crashdump_dir": crash_dir, "crashfile_format": "txt"}}
    for sub_name in sorted(sub_wfs):
        wf.add_nodes([sub_wfs[sub_name]])
    return wf
