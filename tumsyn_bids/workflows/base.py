"""Nipype workflows that execute a plan table.

``init_tumsyn_wf`` builds one sub-workflow per participant/session. Inside it, every source image
is checked and preprocessed once (:func:`tumsyn_bids.workflows.anat.init_anat_wf`), and each
planned job is a chain ``synthesize -> mask -> back to the source grid -> postprocess -> sink``
reading that source's outputs (:func:`init_job_wf`). The synthesis node is a GPU node
(``use_gpu``), so MultiProc runs at most ``n_gpu_procs`` of them at once while the CPU nodes of
other participants proceed. Other pipelines can embed :func:`init_synthesis_wf` (one image,
no preprocessing) directly.
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
from pathlib import Path, PurePath
from typing import Any

import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .. import __version__
from ..batch import node_plugin_args
from ..bids.names import subject_log_dir
from ..config import SUPPORTED_TARGETS, InferenceConfig, PreprocConfig, SynthesisRequest
from ..interfaces import CheckImage, DerivativesSink, Postprocess, Synthesize
from ..interfaces.preproc import ApplyMask, ToSourceGrid
from ..interfaces.sink import FinishSidecar
from .anat import init_anat_wf
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
    preproc: PreprocConfig | None = None,
) -> str:
    """The methods paragraph of :func:`init_synthesis_wf` and :func:`init_job_wf`.

    ``output_resolution`` is the voxel size the run requests (mm, i, j, k; None: the source
    grid) and selects the sentence stating the output grid rule of
    :mod:`tumsyn_bids.model.grid` (default or reference mode); ``stored`` adds how results are
    stored as derivatives; ``preproc`` (``--preproc full``) says that the network read the
    preprocessed image, and how its output was masked and put back on the source grid; with a
    brain mask given to synthesis, the ``--speed`` preset's sentences on skipped patches are
    added.
    """
    full = preproc is not None and preproc.full
    read = (
        "The network read the preprocessed source image (RAS+ voxel order, brain-extracted), "
        "whose intensities were clipped"
        if full
        else "The source image was read as float32 data in its stored voxel order (not "
        "reoriented), and its intensities were clipped"
    )
    text = (
        "For every source image, a text prompt describing it (subject age and sex, field "
        "strength and manufacturer, modality, voxel size, and repetition, echo and inversion "
        "times and flip angle) was assembled from its BIDS sidecar metadata and the "
        "participants table, and a second prompt described the image to be synthesized with "
        f"its target protocol. {read} to its 0.01 and 99.9 "
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
    brain_mask = full and preproc.mask_output
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
    if full:
        text += " " + _masking_desc(inference, preproc, output_resolution is not None)
    if stored:
        text += (
            " Each result was checked to lie on its planned grid and stored as a BIDS "
            "derivative [@bids-derivatives] labeled desc-tumsynFrom<source contrast>, with a "
            "JSON sidecar recording the source image, both prompts, checkpoint digests, "
            "inference settings and software versions."
        )
    return text


def _masking_desc(inference: InferenceConfig, preproc: PreprocConfig, resampled: bool) -> str:
    """The sentences of :func:`synthesis_desc` on masking and reorientation."""
    parts = []
    if preproc.mask_output:
        where = (
            "the brain mask, sampled onto the output grid by nearest neighbour"
            if resampled
            else "the brain mask"
        )
        parts.append(f"Voxels outside {where} were set to zero.")
    parts.append(
        "The result was put back into the source image's voxel order by the inverse axis "
        "permutation, without interpolation."
    )
    return " ".join(parts)


def _speed_desc(speed: str | None, brain_mask: bool) -> str:
    """The sentences of the methods paragraph that the ``--speed`` preset adds."""
    text = (
        "The network was run as an inference-only copy with its batch normalization layers "
        "folded into the preceding convolutions, which computes the same function up to "
        "floating-point rounding. "
    )
    if speed == "reference" or not brain_mask:
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


def init_job_wf(
    inference: InferenceConfig,
    *,
    preproc: PreprocConfig | None = None,
    name: str = "job_wf",
    output_dir: str | None = None,
    relpath: str | None = None,
    sidecar: Mapping[str, Any] | None = None,
    output_resolution: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
) -> LiterateWorkflow:
    """One synthesis job of the BIDS App, reading a source that :func:`init_anat_wf` prepared.

    Workflow graph (``--preproc full``)::

        in_file, mask_file ─► synthesize ─► mask_output ─► to_source ─► postprocess ─► ds
                              (foreground   (0 outside     (inverse     (grid check)    │
                               patches)      the mask)      permutation)                │
        summary + synthesize's patch counts ─► sidecar ─────────────────────────────────┘

    ``synthesize`` (:class:`~tumsyn_bids.interfaces.synthesis.Synthesize`) reads
    ``inputnode.in_file`` (the anat workflow's ``brain_file``: conformed and brain-extracted)
    with ``inputnode.mask_file`` as its foreground (which patches that lets it skip is the
    ``--speed`` preset's: none with ``reference``, which keeps the authors' averaging bit for
    bit); with ``--no-mask-output`` the raw output is computed everywhere.
    ``model_voxel_size`` is the requested voxel size along the conformed axes and
    ``patch_size`` the patch edges along them (i.e. reordered from the source's (i, j, k);
    default: the configuration's). ``mask_output`` (:class:`~tumsyn_bids.interfaces.
    preproc.ApplyMask`) zeroes the output outside the brain mask (nearest neighbour on another
    output grid); ``to_source`` (:class:`~tumsyn_bids.interfaces.preproc.ToSourceGrid`) puts it
    back in the source's voxel order; ``postprocess`` checks it against ``expected_grid`` (the
    plan's) and ``voxel_size`` (the request, source axes). The sidecar is finished with the
    preprocessing summary and the patch counts (:class:`~tumsyn_bids.interfaces.sink.
    FinishSidecar`) before ``ds_synthesized`` stores image and sidecar.

    Without preprocessing (``preproc`` None or ``none``) the chain is ``synthesize ->
    postprocess -> ds_synthesized`` on ``in_file`` as stored, with the sidecar as given: the
    behaviour before preprocessing existed.

    Inputs: ``in_file``, ``mask_file``, ``orientation``, ``summary`` (anat workflow outputs),
    ``source_file`` (the source image), ``prompt``, ``voxel_size`` and ``model_voxel_size``
    (unset: the source grid), ``expected_grid`` (:meth:`OutputGrid.record
    <tumsyn_bids.model.grid.OutputGrid.record>` as JSON). Output: ``out_file``.
    """
    full = preproc is not None and preproc.full
    wf = LiterateWorkflow(name=name)
    wf.__desc__ = synthesis_desc(
        inference, output_resolution, stored=output_dir is not None, preproc=preproc
    )
    fields = ["in_file", "mask_file", "orientation", "summary", "source_file", "prompt",
              "voxel_size", "model_voxel_size", "expected_grid"]  # fmt: skip
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="outputnode")
    settings = synthesize_inputs(inference)
    if patch_size is not None:
        settings["patch_size"] = tuple(int(p) for p in patch_size)
    synth = pe.Node(
        Synthesize(**settings),
        name="synthesize",
        mem_gb=inference.mem_gb,
        n_procs=inference.num_threads or 1,
    )
    post = pe.Node(Postprocess(), name="postprocess")
    wf.connect([
        (inputnode, synth, [("in_file", "in_file"), ("prompt", "prompt")]),
        (inputnode, post, [("source_file", "reference"), ("voxel_size", "voxel_size"),
                           ("expected_grid", "expected_grid")]),
        (post, outputnode, [("out_file", "out_file")]),
    ])  # fmt: skip
    if not full:
        wf.connect([
            (inputnode, synth, [("voxel_size", "voxel_size")]),
            (synth, post, [("out_file", "in_file")]),
        ])  # fmt: skip
    else:
        to_source = pe.Node(ToSourceGrid(dtype="float32"), name="to_source")
        wf.connect([
            (inputnode, synth, [("model_voxel_size", "voxel_size")]),
            (inputnode, to_source, [("orientation", "orientation"), ("source_file", "reference")]),
            (to_source, post, [("out_file", "in_file")]),
        ])  # fmt: skip
        if preproc.mask_output:
            # the --speed preset decides which patches the mask lets the engine skip (none in
            # reference mode) and that only voxels next to the mask need decoding
            synth.inputs.masked_output = True
            wf.connect(inputnode, "mask_file", synth, "mask_file")
            mask = pe.Node(
                ApplyMask(
                    resample=True,
                    out_name="synthesized_masked.nii.gz",
                    description="tumsyn-bids synthesized image",
                ),
                name="mask_output",
            )
            wf.connect([
                (synth, mask, [("out_file", "in_file")]),
                (inputnode, mask, [("mask_file", "mask_file")]),
                (mask, to_source, [("out_file", "in_file")]),
            ])  # fmt: skip
        else:
            wf.connect(synth, "out_file", to_source, "in_file")
    if output_dir is None:
        return wf
    sink = pe.Node(
        DerivativesSink(output_dir=str(output_dir), relpath=relpath),
        name="ds_synthesized",
        run_without_submitting=True,
    )
    wf.connect(post, "out_file", sink, "in_file")
    text = json.dumps(dict(sidecar or {}), sort_keys=True)
    if not full:
        sink.inputs.sidecar = text
        return wf
    finish = pe.Node(
        FinishSidecar(kind="synthesized", base=text, masked_output=preproc.mask_output),
        name="sidecar",
        run_without_submitting=True,
    )
    wf.connect([
        (inputnode, finish, [("summary", "summary")]),
        (synth, finish, [("patches_computed", "patches_computed"),
                         ("patches_skipped", "patches_skipped")]),
        (finish, sink, [("sidecar", "sidecar")]),
    ])  # fmt: skip
    return wf


def node_config(crash_dir: str | Path) -> dict[str, dict[str, str]]:
    """The nipype settings of every node a run builds: crash files (as text) in ``crash_dir``
    and every output kept. Keeping outputs also keeps each node's hash free of which outputs
    its workflow reads, so the app and ``tumsyn-train --preproc``, whose workflows read
    different outputs of the same preprocessing nodes, share a work folder's cache."""
    return {
        "execution": {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "remove_unnecessary_outputs": "false",
        }
    }


def session_workflow_name(subject: str, session: str | None) -> str:
    """``sub_01_ses_1_wf``: the workflow of one participant/session."""
    return f"sub_{_safe(subject)}" + (f"_ses_{_safe(session)}" if session else "") + "_wf"


def anat_workflow_name(relpath: str) -> str:
    """``anat_sub_01_T1w_wf``: the :func:`init_anat_wf` of one image, named after its file, so
    the app and ``tumsyn-train --preproc`` build the same nodes (and share a work folder's
    cache)."""
    stem = PurePath(relpath).name.split(".")[0]
    return f"anat_{re.sub(r'[^A-Za-z0-9]', '_', stem)}_wf"


def job_workflows(plan: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Output path -> (participant/session workflow name, job workflow name) of every planned
    row: the names :func:`init_tumsyn_wf` gives, so a job's nodes can be found in the work dir
    (``<work_dir>/tumsyn_wf/<session wf>/<job wf>/<node>``, :func:`job_dir`). The job's source
    is prepared in ``<session wf>/<anat wf>`` (:func:`anat_workflow_name`)."""
    names: dict[str, tuple[str, str]] = {}
    planned = plan[plan["status"] == "planned"]
    for (subject, session), rows in planned.groupby(
        [planned["subject"], planned["session"].fillna("")], sort=True
    ):
        sub_name = session_workflow_name(subject, session or None)
        for i, row in enumerate(rows.itertuples(index=False)):
            job_name = f"{_safe(row.source_suffix)}_to_{_safe(row.target_suffix)}_{i}_wf"
            names[row.output] = (sub_name, job_name)
    return names


def job_dir(work_dir: str | Path, names: tuple[str, str]) -> Path:
    """The work-dir folder of one job (``names`` from :func:`job_workflows`), or of one anat
    workflow (``(session wf, anat wf)``)."""
    return Path(work_dir) / "tumsyn_wf" / names[0] / names[1]


def _reference(row: Any) -> str | None:
    value = getattr(row, "anat_reference", None)
    return value if isinstance(value, str) and value else None


def init_tumsyn_wf(
    plan: pd.DataFrame,
    bids_dir: str | Path,
    output_dir: str | Path,
    work_dir: str | Path,
    inference: InferenceConfig,
    sidecars: Mapping[str, Mapping[str, Any]],
    request: SynthesisRequest | None = None,
    preproc: PreprocConfig | None = None,
    omp_nthreads: int = 1,
) -> LiterateWorkflow:
    """The whole run: one sub-workflow per participant/session, holding an
    :func:`init_anat_wf` per source image (and per T1w named in the plan's ``anat_reference``)
    and an :func:`init_job_wf` per planned row.

    ``sidecars`` maps each output path (plan column ``output``) to its JSON sidecar.
    ``preproc`` (:class:`~tumsyn_bids.config.PreprocConfig`; None: no preprocessing) and
    ``omp_nthreads`` (threads of deepbet) set up the anat workflows. With preprocessing, the
    requested voxel size and the patch size are reordered along each source's conformed axes
    (read from its header) for the synthesis node. Crash files of a participant's nodes go to
    :func:`subject_log_dir`, where users look for them. ``request`` (what was asked for, with
    the requested output resolution) words the methods text (:func:`run_desc`,
    :func:`synthesis_desc`); the plan alone decides what runs. Workflow names are
    :func:`job_workflows`' and :func:`anat_workflow_name`'s.
    """
    import nibabel as nib

    from ..preproc.orientation import orientation_record, to_conformed_axes

    full = preproc is not None and preproc.full
    wf = LiterateWorkflow(name="tumsyn_wf", base_dir=str(work_dir))
    wf.__desc__ = run_desc(request)
    wf.__postdesc__ = "Synthesized images are predictions of a model, not acquired data."
    resolution = request.output_resolution if request is not None else None
    planned = plan[plan["status"] == "planned"]
    names = job_workflows(plan)
    sub_wfs: dict[str, pe.Workflow] = {}
    anat_wfs: dict[tuple[str, str], pe.Workflow] = {}
    linked: set[tuple[str, str]] = set()  # sources connected to their T1w reference

    def anat(sub_name: str, relpath: str, suffix: str, subject: str, source: bool, ref=None):
        key = (sub_name, relpath)
        if key not in anat_wfs:
            node = init_anat_wf(
                source_suffix=suffix,
                preproc=preproc,
                omp_nthreads=omp_nthreads,
                output_dir=str(output_dir) if source else None,
                subject=subject,
                source_relpath=relpath if source else None,
                reference_relpath=ref,
                name=anat_workflow_name(relpath),
            )
            node.inputs.inputnode.source_file = str(Path(bids_dir) / relpath)
            node.inputs.inputnode.source_name = relpath
            sub_wfs[sub_name].add_nodes([node])
            anat_wfs[key] = node
        return anat_wfs[key]

    for row in planned.itertuples(index=False):
        sub_name, job_name = names[row.output]
        if sub_name not in sub_wfs:
            sub_wfs[sub_name] = pe.Workflow(name=sub_name)
        session_wf = sub_wfs[sub_name]
        reference = _reference(row) if full else None
        source_wf = anat(sub_name, row.source, row.source_suffix, row.subject, True, reference)
        if reference is not None and (sub_name, row.source) not in linked:
            linked.add((sub_name, row.source))
            ref_wf = anat(sub_name, reference, "T1w", row.subject, False)
            session_wf.connect([
                (ref_wf, source_wf, [("outputnode.checked_file", "inputnode.t1w_file"),
                                     ("outputnode.mask_source", "inputnode.t1w_mask")]),
            ])  # fmt: skip
        grid = row.output_grid
        patch = None
        model_voxel = None
        if full:
            record = orientation_record(nib.load(str(Path(bids_dir) / row.source)), row.source)
            patch = to_conformed_axes(tuple(inference.patch_size), record)
            if not grid.is_identity:
                model_voxel = to_conformed_axes(tuple(grid.voxel_size), record)
        job = init_job_wf(
            inference,
            preproc=preproc,
            name=job_name,
            output_dir=str(output_dir),
            relpath=row.output,
            sidecar=sidecars[row.output],
            output_resolution=resolution,
            patch_size=patch,
        )
        job.inputs.inputnode.source_file = str(Path(bids_dir) / row.source)
        job.inputs.inputnode.prompt = row.target_prompt
        if not grid.is_identity:
            job.inputs.inputnode.voxel_size = tuple(grid.voxel_size)
            if model_voxel is not None:
                job.inputs.inputnode.model_voxel_size = tuple(model_voxel)
        job.inputs.inputnode.expected_grid = json.dumps(grid.record())
        links = [("outputnode.brain_file", "inputnode.in_file")]
        if full:
            links += [
                ("outputnode.mask_file", "inputnode.mask_file"),
                ("outputnode.orientation", "inputnode.orientation"),
                ("outputnode.summary", "inputnode.summary"),
            ]
        session_wf.connect([(source_wf, job, links)])
    crash_dirs = {}
    for row in planned.itertuples(index=False):
        crash_dirs[names[row.output][0]] = str(subject_log_dir(output_dir, row.subject))
    for sub_name in sorted(sub_wfs):
        # Per node: nipype reads crashdump_dir from each node's own config, and the config of a
        # nested workflow is not passed down to its nodes.
        for node in sub_wfs[sub_name]._get_all_nodes():
            node.config = node_config(crash_dirs[sub_name])
        wf.add_nodes([sub_wfs[sub_name]])
    return wf
