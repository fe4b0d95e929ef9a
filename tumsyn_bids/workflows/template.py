"""Template spaces (``--output-spaces``): registration of a source to a template, and its
outputs resampled into the template.

:func:`init_template_wf` is built once per source image and template: it registers the
preprocessed source brain to the template's brain (:class:`~tumsyn_bids.interfaces.
registration.RegisterToTemplate`), stores both transforms with sMRIPrep's names, resamples the
source's brain mask into every requested resolution of the template and writes the registration
reportlet. :func:`add_output_spaces` adds to a synthesis job (:func:`~tumsyn_bids.workflows.
base.init_job_wf`) the resampling of its result into each template space: once, from the source
grid straight onto the template grid, through the composite transform.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.metadata import version

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces import DerivativesSink
from ..interfaces.registration import SETTINGS, ApplyTemplateTransform, RegisterToTemplate
from ..interfaces.reports import RegistrationReport
from ..interfaces.sink import FileSink, FinishSidecar, SpaceSidecar
from ..templates.spaces import OutputSpace
from .literate import LiterateWorkflow

__all__ = [
    "REFERENCES",
    "TEMPLATE_OUTPUTS",
    "add_output_spaces",
    "init_template_wf",
    "registration_desc",
    "source_space",
    "space_node_name",
]

#: References the methods paragraph cites (merged into
#: :data:`tumsyn_bids.workflows.citation.REFERENCES`).
REFERENCES: dict[str, str] = {
    "syn": (
        "Avants B.B., Epstein C.L., Grossman M., Gee J.C. Symmetric diffeomorphic image "
        "registration with cross-correlation: evaluating automated labeling of elderly and "
        "neurodegenerative brain. Medical Image Analysis 12(1):26-41 (2008). "
        "doi:10.1016/j.media.2007.06.004"
    ),
    "templateflow": (
        "Ciric R., Thompson W.H., Lorenz R., et al. TemplateFlow: FAIR-sharing of multi-scale, "
        "multi-species brain models. Nature Methods 19:1568-1571 (2022). "
        "doi:10.1038/s41592-022-01681-2"
    ),
    "mni2009": (
        "Fonov V.S., Evans A.C., McKinstry R.C., Almli C.R., Collins D.L. Unbiased nonlinear "
        "average age-appropriate brain templates from birth to adulthood. NeuroImage 47:S102 "
        "(2009). doi:10.1016/S1053-8119(09)70884-5"
    ),
}

#: Outputs of :func:`init_template_wf`.
TEMPLATE_OUTPUTS = ["forward_transform", "reverse_transform", "dice"]

#: The ``.bidsignore`` pattern of the transforms (BIDS has no name for them yet: BEP014).
XFM_IGNORE = "*_xfm.h5"
#: Memory MultiProc reserves for a registration node: antsRegistration's peak resident set was
#: 1.0 GB (``/usr/bin/time -v``, default settings, 1 mm template, one thread).
REGISTRATION_MEM_GB = 1.5
#: How images and masks are interpolated into a template space.
IMAGE_INTERPOLATION = "linear"
MASK_INTERPOLATION = "genericLabel"


def source_space(source_suffix: str) -> str:
    """The label of a source image's own space in transform names: its suffix (``T1w``, as in
    sMRIPrep's ``from-T1w_to-<template>``; ``FLAIR`` for a FLAIR source, which is registered
    itself)."""
    return "".join(ch for ch in source_suffix if ch.isalnum())


def space_node_name(kind: str, space: OutputSpace) -> str:
    """``to_MNI152NLin2009aSym_res2``: names of the per-space nodes of a workflow."""
    return f"{kind}_{space.name}_res{space.resolution}"


def _levels(values: Sequence[float]) -> str:
    return ", ".join(f"{float(v):g}" for v in values)


def registration_desc(
    source_suffix: str, template: str, spaces: Sequence[OutputSpace], settings: str = "default"
) -> str:
    """The methods paragraph of :func:`init_template_wf` (stages from
    :data:`~tumsyn_bids.interfaces.registration.SETTINGS`, software versions included)."""
    rigid, affine, syn = SETTINGS[settings]
    cited = " [@mni2009]" if template.startswith("MNI152NLin2009") else ""
    matched = (
        " and histograms matched (a T1w source and a T1w template)"
        if source_suffix == "T1w"
        else " (no histogram matching: the source's contrast differs from the template's)"
    )
    resolutions = ", ".join(
        f"res-{s.resolution}" for s in sorted(spaces, key=lambda s: s.resolution)
    )
    syn_metric = (
        f"Mattes mutual information ({syn.param} bins, every voxel)"
        if syn.metric == "Mattes"
        else f"neighbourhood cross-correlation (radius {syn.param} voxels)"
    )
    return (
        f"Each {source_suffix} source image was registered to the {template} template{cited}, "
        f"read from a local TemplateFlow [@templateflow] home, with antsRegistration "
        f"[@ants] through ANTsPy {version('antspyx')}: the preprocessed, brain-extracted source "
        "was aligned with the template's brain image (voxels outside both brain masks set to "
        "zero) by rigid, affine and symmetric normalization (SyN [@syn]) stages, starting from "
        f"aligned centres of mass, with intensities winsorized to their 0.5-99.5% quantiles"
        f"{matched}. The rigid and affine stages used Mattes mutual information "
        f"({rigid.param} bins, regular sampling of {rigid.sampling:.0%} of the voxels); SyN "
        f"(gradient step {syn.step:g}, update field smoothing {syn.update_sigma:g} voxels) "
        f"used {syn_metric}. Each stage ran at {_levels(syn.levels_mm)} mm voxel levels with "
        f"Gaussian smoothing of {_levels(syn.smoothing_mm)} mm, on one thread with a fixed "
        "random seed (identical transforms on every rerun). The registration's quality was "
        "summarised by the Dice coefficient of the warped brain mask against the template's "
        f"brain mask. Synthesized images were resampled into the template ({resolutions}) "
        "once, from their source grid straight onto the template grid through the composite "
        "forward transform, with linear interpolation; brain masks with ANTs' "
        "label-preserving nearest-neighbour interpolation (genericLabel). The forward and "
        "inverse transforms were stored as ITK composite files (from-/to- names as in "
        "sMRIPrep)."
    )


def init_template_wf(
    *,
    template: str,
    spaces: Sequence[OutputSpace],
    source_suffix: str,
    settings: str = "default",
    num_threads: int = 1,
    output_dir: str | None = None,
    subject: str | None = None,
    source_relpath: str | None = None,
    reference_relpath: str | None = None,
    name: str = "template_wf",
) -> LiterateWorkflow:
    """Register one preprocessed source image to ``template`` and store what that gives.

    Workflow graph (derivatives and report only with ``output_dir``)::

        brain_file, mask_file ─► register ─► forward/reverse transform ─► ds_xfm_forward/reverse
        mask_source ──────────────┴─► mask_<template>_res<r> ─► ds_mask_<template>_res<r>
        summary ─► mask_sidecar ─► space_mask_sidecar_<template>_res<r> ────┘
                                   register ─► registration_report (figure + record)

    ``register`` (:class:`~tumsyn_bids.interfaces.registration.RegisterToTemplate`) aligns
    ``inputnode.brain_file`` (the anat workflow's brain-extracted, INU-corrected image on the
    conformed grid) with its ``mask_file`` to the template's res-1 brain (``settings`` of
    :data:`~tumsyn_bids.interfaces.registration.SETTINGS`, ``num_threads`` ITK threads: 1
    gives identical transforms on reruns). The conformed grid has the source's world
    coordinates, so the transforms apply to anything on the source grid.

    ``spaces``: the :class:`~tumsyn_bids.templates.spaces.OutputSpace` entries of this template;
    the brain mask on the source grid (``mask_source``) is resampled once into each
    (``genericLabel``, uint8) and stored as ``space-<template>_res-<r>_desc-brain_mask``.
    With ``output_dir``, ``subject`` and ``source_relpath`` the transforms are stored as
    ``<source entities>_from-<suffix>_to-<template>_mode-image_xfm.h5`` and the reverse
    (:func:`~tumsyn_bids.bids.names.transform_relpath`), and the registration figure and record
    go to ``sub-XX/figures`` and ``sub-XX/log``; ``reference_relpath`` is the T1w whose brain
    mask the source took (for the mask sidecar's ``Sources``).

    Inputs: ``brain_file``, ``mask_file``, ``mask_source``, ``summary`` (:func:`~tumsyn_bids.
    workflows.anat.init_anat_wf` outputs). Outputs (:data:`TEMPLATE_OUTPUTS`):
    ``forward_transform`` (source -> template), ``reverse_transform``, ``dice``.
    """
    wf = LiterateWorkflow(name=name)
    wf.__desc__ = registration_desc(source_suffix, template, spaces, settings)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["brain_file", "mask_file", "mask_source", "summary"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=TEMPLATE_OUTPUTS), name="outputnode")
    src = source_space(source_suffix)
    register = pe.Node(
        RegisterToTemplate(
            template=template,
            source_space=src,
            settings=settings,
            num_threads=num_threads,
            histogram_matching=source_suffix == "T1w",  # the templates' images are T1w
        ),
        name="register",
        n_procs=num_threads,
        mem_gb=REGISTRATION_MEM_GB,
    )
    wf.connect([
        (inputnode, register, [("brain_file", "moving_image"), ("mask_file", "moving_mask")]),
        (register, outputnode, [("forward_transform", "forward_transform"),
                                ("reverse_transform", "reverse_transform"),
                                ("dice", "dice")]),
    ])  # fmt: skip
    if output_dir is None or subject is None or source_relpath is None:
        return wf

    from ..bids.names import bids_uri, brain_mask_relpath, transform_relpath
    from ..reports.collect import source_stem

    forward = transform_relpath(source_relpath, src, template)
    reverse = transform_relpath(source_relpath, template, src)
    for direction, relpath in (("forward", forward), ("reverse", reverse)):
        sink = pe.Node(
            FileSink(output_dir=str(output_dir), relpath=relpath, bidsignore=[XFM_IGNORE]),
            name=f"ds_xfm_{direction}",
            run_without_submitting=True,
        )
        wf.connect(register, f"{direction}_transform", sink, "in_file")

    base = {"source": source_relpath}
    if reference_relpath:
        base["reference"] = reference_relpath
    mask_sidecar = pe.Node(
        FinishSidecar(kind="mask", base=json.dumps(base, sort_keys=True)),
        name="mask_sidecar",
        run_without_submitting=True,
    )
    wf.connect(inputnode, "summary", mask_sidecar, "summary")
    mask_uri = bids_uri(brain_mask_relpath(source_relpath), "")
    for space in spaces:
        resample = pe.Node(
            ApplyTemplateTransform(
                template=template,
                resolution=space.resolution,
                interpolation=MASK_INTERPOLATION,
                dtype="uint8",
            ),
            name=space_node_name("mask", space),
        )
        sidecar = pe.Node(
            SpaceSidecar(
                space=str(space),
                sources=[mask_uri, bids_uri(forward, "")],
                interpolation=MASK_INTERPOLATION,
            ),
            name=space_node_name("space_mask_sidecar", space),
            run_without_submitting=True,
        )
        relpath = brain_mask_relpath(source_relpath, space=space.name, res=str(space.resolution))
        sink = pe.Node(
            DerivativesSink(output_dir=str(output_dir), relpath=relpath),
            name=space_node_name("ds_mask", space),
            run_without_submitting=True,
        )
        wf.connect([
            (inputnode, resample, [("mask_source", "in_file")]),
            (register, resample, [("forward_transform", "transform")]),
            (mask_sidecar, sidecar, [("sidecar", "sidecar")]),
            (resample, sidecar, [("grid_source", "grid_source")]),
            (resample, sink, [("out_file", "in_file")]),
            (sidecar, sink, [("sidecar", "sidecar")]),
        ])  # fmt: skip

    report = pe.Node(
        RegistrationReport(
            output_dir=str(output_dir),
            subject=subject,
            stem=source_stem(source_relpath),
            template=template,
            record={
                "Source": bids_uri(source_relpath),
                "Settings": settings,
                "Threads": num_threads,
                "Transforms": [bids_uri(forward, ""), bids_uri(reverse, "")],
            },
        ),
        name="registration_report",
    )
    wf.connect([
        (register, report, [("warped_image", "warped_image"),
                            ("template_mask", "template_mask"),
                            ("dice", "dice"),
                            ("elapsed", "elapsed"),
                            ("cpu_time", "cpu_time")]),
    ])  # fmt: skip
    return wf


def add_output_spaces(
    job: pe.Workflow,
    spaces: Sequence[OutputSpace],
    *,
    output_dir: str,
    relpath: str,
    source_relpath: str,
    source_suffix: str,
    target_suffix: str,
) -> dict[str, list[str]]:
    """Add to a synthesis job (:func:`~tumsyn_bids.workflows.base.init_job_wf` with
    preprocessing and ``output_dir``) its result in each template space of ``spaces``.

    Per space: ``to_<template>_res<r>`` (:class:`~tumsyn_bids.interfaces.registration.
    ApplyTemplateTransform`) resamples the job's ``postprocess`` output (on the source grid,
    checked) once into the template grid with linear interpolation; ``space_sidecar_...``
    (:class:`~tumsyn_bids.interfaces.sink.SpaceSidecar`) copies the job's finished sidecar with
    the space's fields; ``ds_<template>_res<r>`` stores
    ``<source entities>_space-<template>_res-<r>_desc-tumsynFrom<source>_<target>.nii.gz``.
    The job's own sink (``ds_synthesized``) waits for these, so a finished source-grid output
    (what reruns check) means a finished job.

    Returns, per template, the names of the job's nodes whose ``transform`` input the caller
    connects to that template's :func:`init_template_wf` ``outputnode.forward_transform``.
    """
    from ..bids.names import bids_uri, derivative_relpath, transform_relpath

    post = job.get_node("postprocess")
    finish = job.get_node("sidecar")
    ds_main = job.get_node("ds_synthesized")
    if post is None or finish is None or ds_main is None:
        raise ValueError(f"{job.name}: not a job workflow with preprocessing and a sink")
    templates = [s for s in spaces if s.is_template]
    wait = pe.Node(niu.Merge(len(templates)), name="space_outputs", run_without_submitting=True)
    needs: dict[str, list[str]] = {}
    for i, space in enumerate(templates, start=1):
        forward = transform_relpath(source_relpath, source_space(source_suffix), space.name)
        resample = pe.Node(
            ApplyTemplateTransform(
                template=space.name,
                resolution=space.resolution,
                interpolation=IMAGE_INTERPOLATION,
                dtype="float32",
            ),
            name=space_node_name("to", space),
        )
        sidecar = pe.Node(
            SpaceSidecar(
                space=str(space),
                sources=[bids_uri(relpath, ""), bids_uri(forward, "")],
                interpolation=IMAGE_INTERPOLATION,
            ),
            name=space_node_name("space_sidecar", space),
            run_without_submitting=True,
        )
        out = derivative_relpath(
            source_relpath,
            target_suffix,
            source_suffix,
            space=space.name,
            res=str(space.resolution),
        )
        sink = pe.Node(
            DerivativesSink(output_dir=str(output_dir), relpath=out),
            name=space_node_name("ds", space),
            run_without_submitting=True,
        )
        job.connect([
            (post, resample, [("out_file", "in_file")]),
            (finish, sidecar, [("sidecar", "sidecar")]),
            (resample, sidecar, [("grid_source", "grid_source")]),
            (resample, sink, [("out_file", "in_file")]),
            (sidecar, sink, [("sidecar", "sidecar")]),
            (sink, wait, [("out_file", f"in{i}")]),
        ])  # fmt: skip
        needs.setdefault(space.name, []).append(resample.name)
    if templates:
        job.connect(wait, "out", ds_main, "wait_for")
    return needs
