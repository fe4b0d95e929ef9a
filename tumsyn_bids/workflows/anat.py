"""One anatomical image of a session, made ready for synthesis: checked, then preprocessed.

:func:`init_anat_wf` is built once per source image (and once per T1w that only lends its brain
mask to another contrast), whatever the number of targets synthesized from it: every synthesis
job of that source reads its outputs. Its outputs (the brain-extracted image, the brain mask on
the conformed and on the source grid, the orientation record) are what later steps, such as a
registration to a template, hang off.
"""

from __future__ import annotations

import json

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import PreprocConfig
from ..interfaces import CheckImage, DerivativesSink
from ..interfaces.preproc import ToSourceGrid
from ..interfaces.reports import PreprocReport
from ..interfaces.sink import FinishSidecar
from .literate import LiterateWorkflow
from .preproc import init_preproc_wf

__all__ = ["ANAT_OUTPUTS", "init_anat_wf"]

#: Outputs of :func:`init_anat_wf` (see its docstring).
ANAT_OUTPUTS = [
    "checked_file",
    "brain_file",
    "preproc_file",
    "mask_file",
    "synthesis_mask",
    "mask_source",
    "bias_file",
    "orientation",
    "summary",
    "warnings",
    "skull_stripped",
]


def init_anat_wf(
    *,
    source_suffix: str,
    preproc: PreprocConfig | None = None,
    omp_nthreads: int = 1,
    output_dir: str | None = None,
    subject: str | None = None,
    source_relpath: str | None = None,
    reference_relpath: str | None = None,
    name: str = "anat_wf",
) -> LiterateWorkflow:
    """Check one anatomical image and preprocess it (:func:`init_preproc_wf`).

    Workflow graph (``--preproc full``; derivatives only with ``output_dir``)::

        source_file ─► check_image ─► preproc_wf ─► brain_file, mask_file, ... (outputnode)
        t1w_file, t1w_mask ──────────────┘    ├─► ds_brain_mask   (desc-brain_mask)
                                              ├─► ds_preproc      (desc-preproc, --save-preproc)
                                              └─► preproc_report  (figures, sub-XX/log record)

    ``check_image`` (:class:`~tumsyn_bids.interfaces.images.CheckImage`) refuses voxel data
    that cannot be used with one line (exit 65) and hands on a float32 copy in the stored
    voxel order; with ``preproc.preproc == "none"`` that copy is what the network reads
    (``brain_file``) and nothing else runs.

    Parameters: ``source_suffix`` (BIDS suffix), ``preproc`` (:class:`~tumsyn_bids.config.
    PreprocConfig`; None is ``--preproc none``), ``omp_nthreads`` (deepbet's torch threads).
    With ``output_dir``, ``subject`` and ``source_relpath`` (the image's path in the input
    dataset) the brain mask is stored as ``desc-brain_mask`` (and the preprocessed image as
    ``desc-preproc_<suffix>`` with ``save_preproc``), and the report's figures and record are
    written; ``reference_relpath`` names the T1w whose mask was carried over, for ``Sources``.

    Inputs: ``source_file``, ``source_name`` (the name in messages), and for non-T1w sources
    optionally ``t1w_file``/``t1w_mask`` (a T1w of the session, e.g. another
    ``init_anat_wf``'s ``checked_file`` and ``mask_source``).

    Outputs (:data:`ANAT_OUTPUTS`): ``checked_file`` (the checked float32 copy on the source
    grid), and :func:`init_preproc_wf`'s: ``brain_file`` (the network's input), ``preproc_file``,
    ``mask_file`` (conformed grid), ``mask_source`` (source grid), ``bias_file``,
    ``orientation``, ``summary``, ``warnings``, ``skull_stripped``; without preprocessing only
    ``checked_file`` and ``brain_file`` (the same file).
    """
    preproc = preproc or PreprocConfig(preproc="none")
    wf = LiterateWorkflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "source_name", "t1w_file", "t1w_mask"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=ANAT_OUTPUTS), name="outputnode")
    check = pe.Node(CheckImage(), name="check_image")
    wf.connect([
        (inputnode, check, [("source_file", "in_file"), ("source_name", "display_name")]),
        (check, outputnode, [("out_file", "checked_file")]),
    ])  # fmt: skip
    if not preproc.full:  # the synthesis step's text says that the source was read as stored
        wf.connect(check, "out_file", outputnode, "brain_file")
        return wf

    prep = init_preproc_wf(
        source_suffix=source_suffix,
        skull_strip_source=preproc.skull_strip_source,
        inu=preproc.inu,
        preproc="full",
        omp_nthreads=omp_nthreads,
    )
    outputs = [f for f in ANAT_OUTPUTS if f != "checked_file"]
    if not preproc.inu:
        outputs.remove("bias_file")
    wf.connect([
        (check, prep, [("out_file", "inputnode.source_file")]),
        (inputnode, prep, [("t1w_file", "inputnode.t1w_file"),
                           ("t1w_mask", "inputnode.t1w_mask")]),
        (prep, outputnode, [(f"outputnode.{f}", f) for f in outputs]),
    ])  # fmt: skip
    if output_dir is None or source_relpath is None or subject is None:
        return wf

    from ..bids.names import brain_mask_relpath, preproc_relpath
    from ..reports.collect import source_stem

    base = {"source": source_relpath}
    if reference_relpath:
        base["reference"] = reference_relpath
    mask_sidecar = pe.Node(
        FinishSidecar(kind="mask", base=json.dumps(base, sort_keys=True)),
        name="mask_sidecar",
        run_without_submitting=True,
    )
    ds_mask = pe.Node(
        DerivativesSink(output_dir=str(output_dir), relpath=brain_mask_relpath(source_relpath)),
        name="ds_brain_mask",
        run_without_submitting=True,
    )
    report = pe.Node(
        PreprocReport(
            output_dir=str(output_dir), subject=subject, stem=source_stem(source_relpath)
        ),
        name="preproc_report",
    )
    wf.connect([
        (prep, mask_sidecar, [("outputnode.summary", "summary")]),
        (prep, ds_mask, [("outputnode.mask_source", "in_file")]),
        (mask_sidecar, ds_mask, [("sidecar", "sidecar")]),
        (prep, report, [("outputnode.preproc_file", "in_file"),
                        ("outputnode.mask_file", "mask_file"),
                        ("outputnode.summary", "summary")]),
    ])  # fmt: skip
    if preproc.inu:
        wf.connect(prep, "outputnode.bias_file", report, "bias_file")
    if preproc.save_preproc:
        to_source = pe.Node(ToSourceGrid(dtype="float32"), name="preproc_to_source")
        preproc_sidecar = pe.Node(
            FinishSidecar(kind="preproc", base=json.dumps(base, sort_keys=True)),
            name="preproc_sidecar",
            run_without_submitting=True,
        )
        ds_preproc = pe.Node(
            DerivativesSink(output_dir=str(output_dir), relpath=preproc_relpath(source_relpath)),
            name="ds_preproc",
            run_without_submitting=True,
        )
        wf.connect([
            (prep, to_source, [("outputnode.preproc_file", "in_file"),
                               ("outputnode.orientation", "orientation")]),
            (check, to_source, [("out_file", "reference")]),
            (prep, preproc_sidecar, [("outputnode.summary", "summary")]),
            (to_source, ds_preproc, [("out_file", "in_file")]),
            (preproc_sidecar, ds_preproc, [("sidecar", "sidecar")]),
        ])  # fmt: skip
    return wf
