"""Nipype workflows that execute a plan table.

``init_tumsyn_wf`` builds one sub-workflow per participant/session; inside it each planned job is
a chain ``check -> synthesize -> postprocess -> sink``. The synthesis node is a GPU node
(``use_gpu``), so MultiProc runs at most ``n_gpu_procs`` of them at once while the CPU nodes of
other participants proceed. Other pipelines can embed :func:`init_synthesis_wf` directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.derivatives import subject_log_dir
from ..interfaces import CheckImage, DerivativesSink, Postprocess, Synthesize
from ..model.inference import resolve_device
from ..model.text_encoder import DEFAULT_TEXT_HEADS


@dataclass(frozen=True)
class ModelSpec:
    """The weights and inference settings every synthesis node uses."""

    checkpoint: str
    text_encoder: str
    text_heads: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    patch_size: tuple[int, int, int] = (60, 60, 60)
    overlap: float = 0.5
    batch_size: int = 1
    reference: bool = False
    mem_gb: float = 4.0
    #: CPU threads of a synthesis node (torch intra-op threads; MultiProc reserves as many).
    num_threads: int | None = None

    @property
    def heads(self) -> int:
        """Text-tower heads to record: the given value or the published default."""
        return self.text_heads or DEFAULT_TEXT_HEADS

    @property
    def use_gpu(self) -> bool:
        """Whether synthesis nodes take one of MultiProc's GPU slots."""
        if self.device == "auto":
            return resolve_device("auto").type == "cuda"
        return self.device == "cuda"

    def synthesize_inputs(self) -> dict[str, Any]:
        """Inputs of the :class:`Synthesize` interface that this spec fixes."""
        inputs = {
            "checkpoint": self.checkpoint,
            "text_encoder": self.text_encoder,
            "patch_size": tuple(self.patch_size),
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "device": self.device,
            "precision": self.precision,
            "reference": self.reference,
            "use_gpu": self.use_gpu,
        }
        if self.text_heads:
            inputs["text_heads"] = self.text_heads
        if self.num_threads:
            inputs["num_threads"] = self.num_threads
        return inputs


def _safe(label: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", label or "")


def init_synthesis_wf(
    model: ModelSpec,
    name: str = "synthesis_wf",
    output_dir: str | None = None,
    relpath: str | None = None,
    sidecar: Mapping[str, Any] | None = None,
) -> pe.Workflow:
    """Synthesize one image: ``inputnode.source_file`` + ``inputnode.prompt`` -> ``out_file``.

    ``inputnode.scale_ijk`` sets the output grid (1, 1, 1 = the source grid). With
    ``output_dir``/``relpath``/``sidecar`` a sink stores the result as a BIDS derivative.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "prompt", "scale_ijk"]), name="inputnode"
    )
    inputnode.inputs.scale_ijk = (1.0, 1.0, 1.0)
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="outputnode")
    check = pe.Node(CheckImage(), name="check_image")
    synth = pe.Node(
        Synthesize(**model.synthesize_inputs()),
        name="synthesize",
        mem_gb=model.mem_gb,
        n_procs=model.num_threads or 1,
    )
    post = pe.Node(Postprocess(), name="postprocess")
    wf.connect([
        (inputnode, check, [("source_file", "in_file")]),
        (inputnode, synth, [("prompt", "prompt"), ("scale_ijk", "scale_ijk")]),
        (check, synth, [("out_file", "in_file")]),
        (synth, post, [("out_file", "in_file")]),
        (inputnode, post, [("source_file", "reference"), ("scale_ijk", "scale_ijk")]),
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


def init_tumsyn_wf(
    plan: pd.DataFrame,
    bids_dir: str | Path,
    output_dir: str | Path,
    work_dir: str | Path,
    model: ModelSpec,
    sidecars: Mapping[str, Mapping[str, Any]],
) -> pe.Workflow:
    """The whole run: one sub-workflow per participant/session with a job per planned row.

    ``sidecars`` maps each output path (plan column ``output``) to its JSON sidecar. Crash
    files of a participant's nodes go to :func:`subject_log_dir`, where users look for them.
    """
    wf = pe.Workflow(name="tumsyn_wf", base_dir=str(work_dir))
    planned = plan[plan["status"] == "planned"]
    for (subject, session), rows in planned.groupby(
        [planned["subject"], planned["session"].fillna("")], sort=True
    ):
        sub_name = f"sub_{_safe(subject)}" + (f"_ses_{_safe(session)}" if session else "") + "_wf"
        sub_wf = pe.Workflow(name=sub_name)
        for i, row in enumerate(rows.itertuples(index=False)):
            job = init_synthesis_wf(
                model,
                name=f"{_safe(row.source_suffix)}_to_{_safe(row.target_suffix)}_{i}_wf",
                output_dir=str(output_dir),
                relpath=row.output,
                sidecar=sidecars[row.output],
            )
            job.inputs.inputnode.source_file = str(Path(bids_dir) / row.source)
            job.inputs.inputnode.prompt = row.target_prompt
            job.inputs.inputnode.scale_ijk = tuple(float(s) for s in row.scale_ijk)
            sub_wf.add_nodes([job])
        # Per node: nipype reads crashdump_dir from each node's own config, and the config of a
        # nested workflow is not passed down to its nodes.
        crash_dir = str(subject_log_dir(output_dir, subject))
        for node in sub_wf._get_all_nodes():
            node.config = {"execution": {"crashdump_dir": crash_dir, "crashfile_format": "txt"}}
        wf.add_nodes([sub_wf])
    return wf
