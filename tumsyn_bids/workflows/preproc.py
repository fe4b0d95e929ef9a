"""Anatomical preprocessing of one source image before synthesis.

:func:`init_preproc_wf` builds the sub-workflow; the interfaces are in
:mod:`tumsyn_bids.interfaces.preproc`, the work and its rules in :mod:`tumsyn_bids.preproc`.
"""

from __future__ import annotations

from importlib.metadata import version

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import PREPROC_MODES, SKULL_STRIP_MODES
from ..interfaces.preproc import (
    ApplyMask,
    BrainMask,
    Conform,
    MaskMargin,
    N4Correct,
    PreprocSummary,
    ToSourceGrid,
)
from ..preproc.inu import FIT_SPACING_MM, N4_SETTINGS

__all__ = ["PREPROC_MODES", "REFERENCES", "init_preproc_wf"]

#: References the methods paragraph (``__desc__``) cites, by the keys it uses.
REFERENCES: dict[str, str] = {
    "deepbet": (
        "Fisch L., Zumdick S., Barkhau C., et al. deepbet: Fast brain extraction of "
        "T1-weighted MRI using Convolutional Neural Networks. Computers in Biology and "
        "Medicine 179:108845 (2024). doi:10.1016/j.compbiomed.2024.108845"
    ),
    "n4": (
        "Tustison N.J., Avants B.B., Cook P.A., Zheng Y., Egan A., Yushkevich P.A., Gee J.C. "
        "N4ITK: Improved N3 Bias Correction. IEEE Transactions on Medical Imaging "
        "29(6):1310-1320 (2010). doi:10.1109/TMI.2010.2046908"
    ),
    "ants": (
        "Avants B.B., Tustison N.J., Song G., Cook P.A., Klein A., Gee J.C. A reproducible "
        "evaluation of ANTs similarity metric performance in brain image registration. "
        "NeuroImage 54(3):2033-2044 (2011). doi:10.1016/j.neuroimage.2010.09.025"
    ),
}

_OUTPUTS = [
    "preproc_file",
    "brain_file",
    "mask_file",
    "synthesis_mask",
    "mask_source",
    "bias_file",
    "orientation",
    "summary",
    "warnings",
    "skull_stripped",
]


def _describe(source_suffix: str, skull_strip_source: str, inu: bool, preproc: str) -> str:
    """The methods paragraph of one configuration (software versions included)."""
    if preproc == "none":
        return (
            f"The {source_suffix} source images were given to the network as stored, without "
            "reorientation, intensity non-uniformity correction or brain extraction."
        )
    text = [
        f"Each {source_suffix} source image was reoriented to the RAS+ axis order by axis "
        f"permutations and flips only (NiBabel {version('nibabel')}; no resampling), and "
        "results were mapped back onto the source grid by the inverse permutation."
    ]
    if skull_strip_source == "skip":
        text.append(
            "Source images were taken to be brain-extracted already; their brain masks are "
            "their non-zero voxels."
        )
    else:
        how = (
            f"A brain mask was computed with deepbet {version('deepbet')} [@deepbet]"
            if source_suffix == "T1w"
            else (
                "The brain mask of a T1-weighted image of the same session was carried over "
                "(reoriented when both images share a grid, otherwise after a rigid "
                f"registration with antsRegistration [@ants] through ANTsPy "
                f"{version('antspyx')}); without one, deepbet {version('deepbet')} "
                "[@deepbet] was run on the source itself"
            )
        )
        if skull_strip_source == "auto":
            how += (
                "; images found to be brain-extracted already (at least 30% of voxels exactly "
                "zero and a non-zero support of at most 2.2 l) kept their non-zero voxels as "
                "the mask instead"
            )
        text.append(how + ".")
    if inu:
        text.append(
            "Intensity non-uniformity was corrected with N4 [@n4] from ANTs [@ants] through "
            f"ANTsPy {version('antspyx')}, fit within the brain mask on the image shrunk to "
            f"voxels of about {FIT_SPACING_MM:g} mm."
        )
    text.append(
        "Voxels outside the brain mask grown by one voxel (its face neighbours, so that the "
        "partial-volume voxels of the brain's surface are kept) were set to zero before "
        "synthesis."
    )
    return " ".join(text)


def init_preproc_wf(
    *,
    source_suffix: str = "T1w",
    skull_strip_source: str = "auto",
    inu: bool = True,
    preproc: str = "full",
    omp_nthreads: int = 1,
    name: str = "preproc_wf",
) -> pe.Workflow:
    """Preprocess one anatomical source image into the network's input, with its brain mask.

    Workflow graph (``preproc="full"``; the ``n4`` node only with ``inu=True``)::

        source_file ──► conform ──► brain_mask ──► n4 ──► apply_mask ──► brain_file
        t1w_file ───────────────────┤  │  │  │      │         ▲
        t1w_mask ───────────────────┘  │  │  │      └──► preproc_file, bias_file
                                       │  │  └──► synthesis_mask ──┴──► synthesis_mask
                                       │  └──► mask_file
                        conform ───────┴──► mask_to_source ──► mask_source
        source_file (reference grid) ──────┘
        conform, brain_mask ──► summary ──► summary, warnings, skull_stripped
        conform ──► orientation

    (n4 and apply_mask read conform's image; n4 reads brain_mask's mask, apply_mask the
    synthesis mask.)

    1. **conform** (:class:`~tumsyn_bids.interfaces.preproc.Conform`): float32, RAS+ voxel
       order by permutations and flips only; the orientation record maps back exactly.
    2. **brain_mask** (:class:`~tumsyn_bids.interfaces.preproc.BrainMask`): per
       ``skull_strip_source``; deepbet for T1w, the T1w mask carried over for other suffixes
       when ``t1w_file``/``t1w_mask`` are connected, deepbet with a warning otherwise.
    3. **n4** (:class:`~tumsyn_bids.interfaces.preproc.N4Correct`): N4 within the brain mask.
    4. **synthesis_mask** (:class:`~tumsyn_bids.interfaces.preproc.MaskMargin`): the brain
       mask grown by one voxel (:data:`~tumsyn_bids.preproc.masks.SYNTHESIS_MARGIN_VOXELS`);
       **apply_mask**: zero outside it (the image the network reads).
    5. **mask_to_source**: the mask on the source grid, with the source's header geometry.

    With ``preproc="none"`` only a float32 copy of the source in its stored voxel order is made
    (today's behaviour without preprocessing): ``preproc_file`` and ``brain_file`` are that
    copy, the orientation record is the identity, and the mask and bias outputs stay undefined.

    Parameters
    ----------
    source_suffix
        BIDS suffix of the source (``T1w``, ``T2w``, ``FLAIR``, ...); deepbet is trained on T1w.
    skull_strip_source
        ``--skull-strip-source``: ``auto`` strips unless the image is already brain-extracted
        (:mod:`tumsyn_bids.preproc.masks`), ``force`` always strips, ``skip`` never strips
        (the mask is the image's non-zero voxels).
    inu
        False for ``--no-inu``: no N4 (``bias_file`` stays undefined).
    preproc
        ``--preproc``: ``full`` or ``none``.
    omp_nthreads
        torch CPU threads of the brain-mask node (deepbet). ANTs (N4, registration) always
        runs single-threaded, in a child process, so that its output is the same everywhere.
    name
        Workflow name.

    Inputs
    ------
    source_file
        The source image (3-D NIfTI, any axis order).
    t1w_file, t1w_mask
        Optional, for non-T1w sources: a T1w of the same session and its brain mask on the
        T1w's grid (e.g. the T1w's ``mask_source``).

    Outputs
    -------
    preproc_file
        Conformed, INU-corrected image, not masked (float32; sMRIPrep's ``desc-preproc``).
    brain_file
        ``preproc_file`` with zeros outside the brain mask: the synthesis input.
    mask_file
        Brain mask (uint8) on the conformed grid.
    synthesis_mask
        ``mask_file`` grown by one voxel: what the network reads and the output keeps.
    mask_source
        The same mask on the source grid (the source's affine bit for bit): ``desc-brain_mask``.
    bias_file
        N4's multiplicative bias field on the conformed grid.
    orientation
        JSON orientation record; ``ToSourceGrid`` maps conformed results back with it.
    summary
        JSON: steps, software versions, mask method, the already-extracted verdict, warnings.
    warnings
        List of report warnings (e.g. deepbet on a non-T1w source).
    skull_stripped
        Whether ``brain_file`` is brain-extracted.

    Raises ``ValueError`` for an unknown ``skull_strip_source`` or ``preproc``.
    """
    if skull_strip_source not in SKULL_STRIP_MODES:
        raise ValueError(
            f"skull_strip_source must be one of {', '.join(SKULL_STRIP_MODES)}, got "
            f"{skull_strip_source!r}"
        )
    if preproc not in PREPROC_MODES:
        raise ValueError(f"preproc must be one of {', '.join(PREPROC_MODES)}, got {preproc!r}")
    wf = pe.Workflow(name=name)
    wf.__desc__ = _describe(source_suffix, skull_strip_source, inu, preproc)
    wf.__postdesc__ = ""
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "t1w_file", "t1w_mask"]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUTS), name="outputnode")
    full = preproc == "full"
    conform = pe.Node(Conform(reorient=full), name="conform")
    steps = ["conform", "brain_mask"] + (["inu"] if inu else []) + ["apply_mask"] if full else []
    summary = pe.Node(PreprocSummary(steps=steps), name="summary", run_without_submitting=True)
    wf.connect([
        (inputnode, conform, [("source_file", "in_file")]),
        (conform, summary, [("orientation", "orientation")]),
        (conform, outputnode, [("orientation", "orientation")]),
        (summary, outputnode, [
            ("out_file", "summary"),
            ("warnings", "warnings"),
            ("skull_stripped", "skull_stripped"),
        ]),
    ])  # fmt: skip
    if not full:
        wf.connect([
            (conform, outputnode, [("out_file", "preproc_file"), ("out_file", "brain_file")]),
        ])  # fmt: skip
        return wf

    brain_mask = pe.Node(
        BrainMask(suffix=source_suffix, mode=skull_strip_source, num_threads=omp_nthreads),
        name="brain_mask",
        n_procs=omp_nthreads,
        mem_gb=1.5,  # deepbet peaked at 1.1 GB on a 1 mm head
    )
    margin = pe.Node(MaskMargin(), name="synthesis_mask")
    apply_mask = pe.Node(ApplyMask(), name="apply_mask")
    mask_to_source = pe.Node(ToSourceGrid(dtype="uint8"), name="mask_to_source")
    wf.connect([
        (conform, brain_mask, [("out_file", "in_file")]),
        (inputnode, brain_mask, [("t1w_file", "t1w_file"), ("t1w_mask", "t1w_mask")]),
        (brain_mask, margin, [("mask_file", "in_file")]),
        (margin, apply_mask, [("out_file", "mask_file")]),
        (margin, outputnode, [("out_file", "synthesis_mask")]),
        (brain_mask, mask_to_source, [("mask_file", "in_file")]),
        (conform, mask_to_source, [("orientation", "orientation")]),
        (inputnode, mask_to_source, [("source_file", "reference")]),
        (brain_mask, summary, [
            ("method", "mask_method"), ("check", "check"), ("warning", "warning"),
        ]),
        (brain_mask, outputnode, [("mask_file", "mask_file")]),
        (mask_to_source, outputnode, [("out_file", "mask_source")]),
        (apply_mask, outputnode, [("out_file", "brain_file")]),
    ])  # fmt: skip
    if inu:
        n4 = pe.Node(
            N4Correct(
                iterations=list(N4_SETTINGS["iterations"]),
                convergence_threshold=N4_SETTINGS["convergence_threshold"],
            ),
            name="n4",
            mem_gb=1.0,  # 0.65 GB peak on a 1 mm head
        )
        wf.connect([
            (conform, n4, [("out_file", "in_file")]),
            (brain_mask, n4, [("mask_file", "mask_file")]),
            (n4, apply_mask, [("out_file", "in_file")]),
            (n4, outputnode, [("out_file", "preproc_file"), ("bias_file", "bias_file")]),
        ])  # fmt: skip
    else:
        wf.connect([
            (conform, apply_mask, [("out_file", "in_file")]),
            (conform, outputnode, [("out_file", "preproc_file")]),
        ])  # fmt: skip
    return wf
