"""Nipype workflows that execute a plan table.

``init_tumsyn_wf`` builds one sub-workflow per participant/session. Inside it, every source image
is checked and preprocessed once (:func:`tumsyn_bids.workflows.anat.init_anat_wf`), and each
planned job is a chain ``synthesize -> mask -> back to the source grid -> postprocess -> sink``
reading that source's outputs (:func:`~tumsyn_bids.workflows.synthesis.init_job_wf`). The
synthesis node is a GPU node (``use_gpu``), so MultiProc runs at most ``n_gpu_procs`` of them
at once while the CPU nodes of other participants proceed. Other pipelines can embed
:func:`~tumsyn_bids.workflows.synthesis.init_synthesis_wf` (one image, no preprocessing).
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
from nipype.pipeline import engine as pe

from .. import __version__
from ..bids.names import subject_log_dir
from ..config import SUPPORTED_TARGETS, InferenceConfig, PreprocConfig, SynthesisRequest
from .anat import init_anat_wf
from .literate import LiterateWorkflow
from .synthesis import init_job_wf


def _safe(label: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", label or "")


def _words(items: Iterable[str]) -> str:
    """``["T2w"]`` -> ``T2w``; ``["T2w", "FLAIR", "PDw"]`` -> ``T2w, FLAIR and PDw``."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


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


def template_workflow_name(relpath: str, template: str) -> str:
    """``anat_sub_01_T1w_to_MNI152NLin2009aSym_wf``: the registration of one source image to a
    template (:func:`~tumsyn_bids.workflows.template.init_template_wf`), next to its anat
    workflow."""
    return f"{anat_workflow_name(relpath)[: -len('_wf')]}_to_{_safe(template)}_wf"


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
    output_spaces: Sequence[str] = ("T1w",),
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
    :func:`~tumsyn_bids.workflows.synthesis.synthesis_desc`); the plan alone decides what runs.
    Workflow names are :func:`job_workflows`' and :func:`anat_workflow_name`'s.

    ``output_spaces`` (``--output-spaces``, e.g. ``("MNI152NLin2009aSym:res-2", "T1w")``;
    template spaces need preprocessing): every source image is registered to each template
    (:func:`~tumsyn_bids.workflows.template.init_template_wf`, named
    ``<anat wf>_to_<template>``) and each job's result is also written in every template space
    (:func:`~tumsyn_bids.workflows.template.add_output_spaces`). The source grid (``T1w``) is
    always written.
    """
    import nibabel as nib

    from ..preproc.orientation import orientation_record, to_conformed_axes
    from ..templates.spaces import parse_output_spaces
    from .template import add_output_spaces, init_template_wf

    full = preproc is not None and preproc.full
    spaces = [s for s in parse_output_spaces(output_spaces) if s.is_template]
    if spaces and not full:
        raise ValueError("template output spaces need preprocessing (--preproc full)")
    templates = list(dict.fromkeys(s.name for s in spaces))
    template_wfs: dict[tuple[str, str, str], pe.Workflow] = {}
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
            for template in templates if source else ():
                reg = init_template_wf(
                    template=template,
                    spaces=[s for s in spaces if s.name == template],
                    source_suffix=suffix,
                    output_dir=str(output_dir),
                    subject=subject,
                    source_relpath=relpath,
                    reference_relpath=ref,
                    name=template_workflow_name(relpath, template),
                )
                sub_wfs[sub_name].connect([
                    (node, reg, [("outputnode.brain_file", "inputnode.brain_file"),
                                 ("outputnode.mask_file", "inputnode.mask_file"),
                                 ("outputnode.mask_source", "inputnode.mask_source"),
                                 ("outputnode.summary", "inputnode.summary")]),
                ])  # fmt: skip
                template_wfs[(sub_name, relpath, template)] = reg
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
        if spaces:
            needs = add_output_spaces(
                job,
                spaces,
                output_dir=str(output_dir),
                relpath=row.output,
                source_relpath=row.source,
                source_suffix=row.source_suffix,
                target_suffix=row.target_suffix,
            )
            for template, nodes in needs.items():
                reg = template_wfs[(sub_name, row.source, template)]
                session_wf.connect([
                    (reg, job, [("outputnode.forward_transform", f"{n}.transform")
                                for n in nodes]),
                ])  # fmt: skip
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
                ("outputnode.synthesis_mask", "inputnode.mask_file"),
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
