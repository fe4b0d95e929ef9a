"""Nipype workflows that execute a plan table.

``init_tumsyn_wf`` builds one sub-workflow per participant/session; inside it each planned job is
a chain ``check -> synthesize -> postprocess -> sink``. The synthesis node is a GPU node
(``use_gpu``), so MultiProc runs at most ``n_gpu_procs`` of them at once while the CPU nodes of
other participants proceed. Other pipelines can embed :func:`init_synthesis_wf` directly.
Every setting comes from one :class:`~tumsyn_bids.config.InferenceConfig`; every output grid
from the plan's :class:`~tumsyn_bids.model.grid.OutputGrid`.

Each factory returns a :class:`~tumsyn_bids.workflows.literate.LiterateWorkflow` whose
``__desc__`` is the methods paragraph of its step, formatted with the settings it was built
with; ``logs/CITATION.md`` is assembled from them (:mod:`tumsyn_bids.workflows.citation`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .. import __version__
from ..batch import node_plugin_args
from ..bids.names import subject_log_dir
from ..config import SUPPORTED_TARGETS, InferenceConfig, SynthesisRequest
from ..interfaces import CheckImage, DerivativesSink, Postprocess, Synthesize
from .literate import LiterateWorkflow


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
        "speed": inference.speed,
        "use_gpu": inference.use_gpu,
    }
    if inference.text_heads:
        inputs["text_heads"] = inference.text_heads
    if inference.num_threads:
        inputs["num_threads"] = inference.num_threads
    return inputs


def _safe(label: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", label or "")


def _words(items: Iterable[str]) -> str:
    """``["T2w"]`` -> ``T2w``; ``["T2w", "FLAIR", "PDw"]`` -> ``T2w, FLAIR and PDw``."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sizes(values: Sequence[float]) -> str:
    """``(0.7, 0.7, 1.0)`` -> ``0.7 x 0.7 x 1``."""
    return " x ".join(f"{float(v):g}" for v in values)


def synthesis_desc(
    inference: InferenceConfig,
    output_resolution: Sequence[float] | None = None,
    stored: bool = True,
    brain_mask: bool = False,
) -> str:
    """The methods paragraph of :func:`init_synthesis_wf` for these settings.

    ``output_resolution`` is the voxel size the run requests (mm, i, j, k; None: the source
    grid) and selects the sentence stating the output grid rule of
    :mod:`tumsyn_bids.model.grid` (default or reference mode); ``stored`` adds how results are
    stored as derivatives; ``brain_mask`` says that synthesis is given a brain mask (the
    ``--speed`` sentences about skipped patches).
    """
    text = (
        "For every source image, a text prompt describing it (subject age and sex, field "
        "strength and manufacturer, modality, voxel size, and repetition, echo and inversion "
        "times and flip angle) was assembled from its BIDS sidecar metadata and the "
        "participants table, and a second prompt described the image to be synthesized with "
        "its target protocol. The source image was read as float32 data in its stored voxel "
        "order (not reoriented), and its intensities were clipped to its 0.01 and 99.9 "
        "percentiles (the lower one raised to 0 if negative) and scaled to [0, 1]. The TUMSyn "
        "network [@tumsyn], conditioned on the target prompt, was "
        "applied with PyTorch [@pytorch] to overlapping patches of "
        f"{_sizes(inference.patch_size)} voxels (overlap ratio {float(inference.overlap):g}), "
        "averaging the predictions where patches overlap, in "
        f"{inference.precision} precision"
    )
    if inference.reference:
        text += (
            ", following the authors' reference inference procedure exactly (their patch "
            "placement and output-grid arithmetic)"
        )
    text += ". " + _speed_desc(inference.speed, brain_mask)
    if output_resolution is None:
        text += "Each output is on the voxel grid of its source image."
    elif inference.reference:
        text += (
            f"Outputs were resampled towards the requested {_sizes(output_resolution)} mm voxels "
            "with the authors' rounding: per patch, the number of output samples along an axis "
            "is the patch size times the requested scale, rounded to a whole number, so the "
            "voxel size written (stated in each image's header and sidecar) can differ slightly "
            "from the request."
        )
    else:
        text += (
            f"Outputs were sampled at exactly {_sizes(output_resolution)} mm voxels over the "
            "field of view of their source image: along each axis, the number of voxels is the "
            "field of view divided by the voxel size, rounded to a whole voxel, with the output "
            "field of view centred on the source's, and the network was queried at these voxel "
            "centres."
        )
    if stored:
        text += (
            " Each result was checked to lie on its planned grid and stored as a BIDS "
            "derivative [@bids-derivatives] labeled desc-tumsynFrom<source contrast>, with a "
            "JSON sidecar recording the source image, both prompts, checkpoint digests, "
            "inference settings and software versions."
        )
    return text


def _speed_desc(speed: str | None, brain_mask: bool) -> str:
    """The sentences of the methods paragraph that the ``--speed`` preset adds."""
    if speed == "reference":
        return ""
    text = (
        "The network was run as an inference-only copy with its batch normalization layers "
        "folded into the preceding convolutions, which computes the same function up to "
        "floating-point rounding. "
    )
    if not brain_mask:
        return text
    text += "Patches without any brain-mask voxel, which do not contribute inside the brain, "
    if speed == "fast":
        from ..model.speed import FAST_MIN_FOREGROUND

        text += (
            f"and patches with fewer than {FAST_MIN_FOREGROUND:.0%} brain-mask voxels whose "
            "brain voxels were all covered by other patches were not computed (a speed "
            "setting that changes the result slightly: brain voxels near the brain edge are "
            "averaged over fewer patches). "
        )
    else:
        text += "were not computed. "
    return text


def run_desc(request: SynthesisRequest | None = None, version: str = __version__) -> str:
    """The opening methods paragraph of :func:`init_tumsyn_wf`: what was synthesized from what.

    Worded from the request (targets, source preference), not from the plan's rows, so that
    runs of the same command on different participants, or reruns that find some outputs
    finished, state the same thing.
    """
    what, source = "Images", ""
    if request is not None:
        explicit = [t for t in request.targets if t != "missing"]
        like = request.target_like["suffix"] if request.target_like else None
        if like is not None and like not in explicit:
            explicit.append(like)
        parts = [f"{_words(explicit)} images"] if explicit else []
        if "missing" in request.targets:
            parts.append(
                f"images of the supported contrasts ({_words(SUPPORTED_TARGETS)}) that each "
                "session lacked"
            )
        what = _words(parts) if parts else what
        what = what[0].upper() + what[1:]
        sources = list(request.sources)
        if len(sources) == 1:
            source = f" The source images were the acquired {sources[0]} images of each session."
        else:
            source = (
                " In each session, the source images were the acquired images of the first "
                f"available contrast among {_words(sources)}, in that order of preference."
            )
    return (
        f"{what} were synthesized with tumsyn-bids {version}, a BIDS App [@bids-apps] "
        "implementing TUMSyn, a text-guided model for customized multimodal brain MRI "
        f"synthesis [@tumsyn].{source} The input dataset, organized according to the Brain "
        "Imaging Data Structure [@bids], was queried with PyBIDS [@pybids], the processing was "
        "organized as Nipype workflows [@nipype], and images were read and written with "
        "NiBabel [@nibabel]."
    )


def init_synthesis_wf(
    inference: InferenceConfig,
    name: str = "synthesis_wf",
    output_dir: str | None = None,
    relpath: str | None = None,
    sidecar: Mapping[str, Any] | None = None,
    output_resolution: Sequence[float] | None = None,
) -> LiterateWorkflow:
    """Synthesize one image: ``inputnode.source_file`` + ``inputnode.prompt`` -> ``out_file``.

    ``inputnode.source_name`` (optional) names the source in the check's messages (the plan
    gives its dataset-relative path). ``inputnode.voxel_size`` (mm, i, j, k) asks for that
    exact voxel size over the source's field of view (unset: the source grid);
    ``inputnode.expected_grid`` (an
    :meth:`OutputGrid.record <tumsyn_bids.model.grid.OutputGrid.record>` as JSON, e.g. the
    plan's) makes the post-processing check the written grid against it. With
    ``output_dir``/``relpath``/``sidecar`` a sink stores the result as a BIDS derivative.
    ``output_resolution`` (mm, i, j, k) is the voxel size the run requests, used only for the
    methods text (:func:`synthesis_desc`); each job's grid comes through ``inputnode``.
    """
    wf = LiterateWorkflow(name=name)
    wf.__desc__ = synthesis_desc(inference, output_resolution, stored=output_dir is not None)
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
    # nipype's SLURM plugins: the GPU node asks sbatch for a GPU, CPU nodes do not
    synth.plugin_args = node_plugin_args(inference.use_gpu)
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
    request: SynthesisRequest | None = None,
) -> LiterateWorkflow:
    """The whole run: one sub-workflow per participant/session with a job per planned row.

    ``sidecars`` maps each output path (plan column ``output``) to its JSON sidecar. Crash
    files of a participant's nodes go to :func:`subject_log_dir`, where users look for them.
    ``request`` (what was asked for, with the requested output resolution) words the methods
    text (:func:`run_desc`, :func:`synthesis_desc`); the plan alone decides what runs.
    Workflow names are :func:`job_workflows`'.
    """
    wf = LiterateWorkflow(name="tumsyn_wf", base_dir=str(work_dir))
    wf.__desc__ = run_desc(request)
    wf.__postdesc__ = "Synthesized images are predictions of a model, not acquired data."
    resolution = request.output_resolution if request is not None else None
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
            output_resolution=resolution,
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
