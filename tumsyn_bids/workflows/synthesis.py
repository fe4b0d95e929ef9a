"""The synthesis steps of the BIDS App's workflow, and the one-image workflow other pipelines embed.

:func:`init_job_wf` is one planned job of :func:`tumsyn_bids.workflows.base.init_tumsyn_wf`:
``synthesize -> mask -> back to the source grid -> postprocess -> sink``, reading what
:func:`tumsyn_bids.workflows.anat.init_anat_wf` prepared. :func:`init_synthesis_wf` is one image
without preprocessing. Every setting comes from one :class:`~tumsyn_bids.config.InferenceConfig`;
every output grid from the plan's :class:`~tumsyn_bids.model.grid.OutputGrid`.
:func:`synthesis_desc` is their methods paragraph (``__desc__``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..batch import node_plugin_args
from ..config import InferenceConfig, PreprocConfig
from ..interfaces import CheckImage, DerivativesSink, Postprocess, Synthesize
from ..interfaces.preproc import ApplyMask, ToSourceGrid
from ..interfaces.sink import FinishSidecar
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
            "the grown brain mask, sampled onto the output grid by nearest neighbour"
            if resampled
            else "the grown brain mask"
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
    synth.plugin_args = node_plugin_args(inference.use_gpu)  # --gres=gpu:1 under SLURM
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
