"""Preprocessing nodes: conform, brain mask, N4, masking, and the way back to the source grid.

Each interface reads and writes NIfTI files and calls one function of
:mod:`tumsyn_bids.preproc`, where the work, the rules and the library choices are documented;
:func:`tumsyn_bids.workflows.preproc.init_preproc_wf` chains them. Images written here are
float32 (images) or uint8 (masks) with gzip compression and no timestamps, so reruns give the
same bytes.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..config import SKULL_STRIP_MODES
from ..preproc.masks import (
    SYNTHESIS_MARGIN_VOXELS,
    check_brain_extracted,
    dilate_mask,
    mask_from_nonzero,
    mask_on_grid,
)
from ..preproc.orientation import OrientationRecord, conform, to_source_axes, to_source_grid

__all__ = [
    "ApplyMask",
    "BrainMask",
    "Conform",
    "MaskMargin",
    "N4Correct",
    "PreprocSummary",
    "ToSourceGrid",
]


def _save(img: nib.Nifti1Image, path: str, description: str) -> str:
    img.header["descrip"] = description.encode()[:79]
    nib.save(img, path)
    return path


def _like(data: np.ndarray, img: nib.Nifti1Image, dtype: type) -> nib.Nifti1Image:
    """``data`` on ``img``'s grid and header geometry, stored as ``dtype`` without scaling."""
    header = img.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    return nib.Nifti1Image(np.asarray(data).astype(dtype), img.affine, header)


# --------------------------------------------------------------------------------------------
# Conform and back
# --------------------------------------------------------------------------------------------


class _ConformInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="source image (3-D NIfTI)")
    reorient = traits.Bool(
        True, usedefault=True, desc="reorient to RAS+; False keeps the voxel order"
    )


class _ConformOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="float32 image in RAS+ voxel order, not resampled")
    orientation = File(exists=True, desc="JSON orientation record (source <-> conformed grid)")
    source_axcodes = traits.Str(desc="axis codes of the source, e.g. LPS")


class Conform(SimpleInterface):
    """Reorient to RAS+ by axis permutations and flips only (:func:`~tumsyn_bids.preproc.
    orientation.conform`), and record the transform for :class:`ToSourceGrid`.

    Raises ``ValueError`` (with the file name) for non-3-D images, non-invertible affines and
    images whose voxels are all zero or not finite.
    """

    input_spec = _ConformInputSpec
    output_spec = _ConformOutputSpec

    def _run_interface(self, runtime):
        name = self.inputs.in_file
        img = nib.load(name)
        out, record = conform(img, name=name, reorient=self.inputs.reorient)
        data = np.asarray(out.dataobj)
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{name}: the image holds NaN or infinite values")
        if not np.any(data):
            raise ValueError(f"{name}: every voxel is zero")
        self._results["out_file"] = _save(
            out, os.path.join(runtime.cwd, "conformed.nii.gz"), "tumsyn-bids conformed (RAS+)"
        )
        path = os.path.join(runtime.cwd, "orientation.json")
        record.save(path)
        self._results["orientation"] = path
        self._results["source_axcodes"] = record.source_axcodes
        return runtime


class _ToSourceGridInputSpec(BaseInterfaceInputSpec):
    in_file = File(
        exists=True,
        mandatory=True,
        desc="image on the conformed grid (or on a grid "
        "derived from it, such as a requested output grid)",
    )
    orientation = File(exists=True, mandatory=True, desc="record written by Conform")
    reference = File(exists=True, mandatory=True, desc="the source image (its header is kept)")
    dtype = traits.Enum("keep", "uint8", "float32", usedefault=True, desc="stored data type")


class _ToSourceGridOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image in the source's voxel order")


class ToSourceGrid(SimpleInterface):
    """Map an image on the conformed grid back onto the source grid exactly (no interpolation).

    The inverse permutation and flips of :class:`Conform`. An image on the conformed grid gets
    the source's header geometry verbatim (:func:`~tumsyn_bids.preproc.orientation.
    to_source_grid`: the source's affine bit for bit); an image on another grid over the
    conformed axes (a synthesized image at a requested voxel size) is put back in the source's
    axis order with its own affine reoriented (:func:`~tumsyn_bids.preproc.orientation.
    to_source_axes`).
    """

    input_spec = _ToSourceGridInputSpec
    output_spec = _ToSourceGridOutputSpec

    def _run_interface(self, runtime):
        record = OrientationRecord.load(self.inputs.orientation)
        img = nib.load(self.inputs.in_file)
        dtype = None if self.inputs.dtype == "keep" else np.dtype(self.inputs.dtype)
        on_conformed = tuple(img.shape[:3]) == tuple(record.conformed_shape) and np.allclose(
            img.affine, record.conformed_affine, rtol=0, atol=1e-4
        )
        if on_conformed:
            out = to_source_grid(img, record, nib.load(self.inputs.reference), dtype=dtype)
        else:
            out = to_source_axes(img, record)
            if dtype is not None:
                out.set_data_dtype(dtype)
        base = os.path.basename(self.inputs.in_file).split(".")[0]
        description = img.header["descrip"].item().decode("utf-8", "replace")
        self._results["out_file"] = _save(
            out, os.path.join(runtime.cwd, f"{base}_source.nii.gz"), description
        )
        return runtime


# --------------------------------------------------------------------------------------------
# Brain mask
# --------------------------------------------------------------------------------------------


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="conformed source image")
    suffix = traits.Str("T1w", usedefault=True, desc="BIDS suffix of the source (T1w, T2w, ...)")
    mode = traits.Enum(
        *SKULL_STRIP_MODES,
        usedefault=True,
        desc="auto: strip unless already brain-extracted; force: always strip; skip: never "
        "strip (the mask is the image's non-zero voxels)",
    )
    t1w_file = File(exists=True, desc="a T1w image of the same session (non-T1w sources)")
    t1w_mask = File(exists=True, desc="the brain mask of t1w_file, on t1w_file's grid")
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads of deepbet")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="uint8 brain mask on in_file's grid")
    method = traits.Enum(
        "deepbet",
        "already-extracted",
        "skip",
        "t1w-same-grid",
        "t1w-rigid",
        desc="how the mask was obtained",
    )
    check = traits.Str(desc="the already-brain-extracted rule's verdict and numbers")
    warning = traits.Str(desc="report warning ('' when none)")


class BrainMask(SimpleInterface):
    """The brain mask of a conformed source image, by the rules of ``--skull-strip-source``.

    * ``skip``, or ``auto`` on an image the rule of :mod:`tumsyn_bids.preproc.masks` finds
      already brain-extracted: the image's non-zero voxels, cleaned.
    * otherwise, for a T1w source: deepbet (:mod:`tumsyn_bids.preproc.skullstrip`);
    * for another suffix with ``t1w_file`` and ``t1w_mask``: the T1w mask carried over
      (:mod:`tumsyn_bids.preproc.register`: reoriented on the same grid, rigid registration
      otherwise);
    * for another suffix without them: deepbet on the image itself, with a warning.
    """

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        img = nib.load(inputs.in_file)
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
        check = check_brain_extracted(data, img.header.get_zooms()[:3])
        warning = ""
        if inputs.mode == "skip" or (inputs.mode == "auto" and check.brain_extracted):
            mask = mask_from_nonzero(data)
            method = "skip" if inputs.mode == "skip" else "already-extracted"
        elif inputs.suffix != "T1w" and isdefined(inputs.t1w_mask):
            from ..preproc.register import transfer_mask

            if not isdefined(inputs.t1w_file):
                raise ValueError("t1w_mask was given without the t1w_file it was drawn on")
            mask, how = transfer_mask(nib.load(inputs.t1w_mask), nib.load(inputs.t1w_file), img)
            method = f"t1w-{how}"
        else:
            from ..preproc.skullstrip import NON_T1W_WARNING, deepbet_mask

            mask = deepbet_mask(img, threads=inputs.num_threads)
            method = "deepbet"
            if inputs.suffix != "T1w":
                warning = NON_T1W_WARNING.format(suffix=inputs.suffix)
        if not mask.any():
            raise ValueError(f"{inputs.in_file}: the brain mask ({method}) is empty")
        self._results["mask_file"] = _save(
            _like(mask, img, np.uint8),
            os.path.join(runtime.cwd, "brain_mask.nii.gz"),
            f"tumsyn-bids brain mask ({method})",
        )
        self._results["method"] = method
        self._results["check"] = check.describe()
        self._results["warning"] = warning
        return runtime


# --------------------------------------------------------------------------------------------
# N4 and masking
# --------------------------------------------------------------------------------------------


class _N4CorrectInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to correct")
    mask_file = File(exists=True, desc="mask of the fit (brain mask); all voxels when absent")
    shrink_factor = traits.Int(desc="shrink per axis for the fit (default: to about 6 mm)")
    iterations = traits.List(
        traits.Int, value=[50, 50, 50, 50], usedefault=True, desc="iterations per fitting level"
    )
    convergence_threshold = traits.Float(1e-7, usedefault=True)


class _N4CorrectOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="INU-corrected image (float32): in_file / bias_file")
    bias_file = File(exists=True, desc="the estimated multiplicative bias field (float32)")


class N4Correct(SimpleInterface):
    """N4 intensity non-uniformity correction with ANTsPy (:mod:`tumsyn_bids.preproc.inu`).

    Single-threaded in a child process, so its output does not depend on the machine.
    """

    input_spec = _N4CorrectInputSpec
    output_spec = _N4CorrectOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.inu import n4_correct

        img = nib.load(self.inputs.in_file)
        mask = None
        if isdefined(self.inputs.mask_file):
            mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        corrected, bias = n4_correct(
            img,
            mask,
            shrink_factor=self.inputs.shrink_factor
            if isdefined(self.inputs.shrink_factor)
            else None,
            iterations=tuple(self.inputs.iterations),
            convergence_threshold=self.inputs.convergence_threshold,
        )
        self._results["out_file"] = _save(
            _like(corrected, img, np.float32),
            os.path.join(runtime.cwd, "inu_corrected.nii.gz"),
            "tumsyn-bids N4-corrected",
        )
        self._results["bias_file"] = _save(
            _like(bias, img, np.float32),
            os.path.join(runtime.cwd, "bias_field.nii.gz"),
            "tumsyn-bids N4 bias field",
        )
        return runtime


class _MaskMarginInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="brain mask")
    voxels = traits.Range(
        low=0, value=SYNTHESIS_MARGIN_VOXELS, usedefault=True, desc="margin, voxels"
    )


class _MaskMarginOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the grown mask (uint8, same grid)")


class MaskMargin(SimpleInterface):
    """The synthesis mask: the brain mask grown by ``voxels`` face-neighbour steps
    (:func:`~tumsyn_bids.preproc.masks.dilate_mask`), on the same grid and header."""

    input_spec = _MaskMarginInputSpec
    output_spec = _MaskMarginOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_file)
        mask = np.asarray(img.dataobj).reshape(img.shape[:3]) > 0
        self._results["out_file"] = _save(
            _like(dilate_mask(mask, self.inputs.voxels), img, np.uint8),
            os.path.join(runtime.cwd, "synthesis_mask.nii.gz"),
            f"tumsyn-bids brain mask + {self.inputs.voxels} voxel margin",
        )
        return runtime


class _ApplyMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image")
    mask_file = File(exists=True, mandatory=True, desc="mask on the image's grid")
    resample = traits.Bool(
        False,
        usedefault=True,
        desc="the mask may lie on another grid sharing the image's axes (the conformed grid of "
        "a synthesized image at another voxel size): sample it nearest-neighbour",
    )
    out_name = traits.Str("brain.nii.gz", usedefault=True, desc="output file name")
    description = traits.Str(
        "tumsyn-bids brain-extracted", usedefault=True, desc="the header's descrip field"
    )


class _ApplyMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="float32 image, 0 outside the mask")


class ApplyMask(SimpleInterface):
    """Set every voxel outside the mask to 0: the brain-extracted image the model reads, and
    the synthesized image outside the brain (``--no-mask-output`` skips that).

    With ``resample``, a mask on another grid over the same axes is sampled nearest-neighbour
    onto the image's grid first (:func:`~tumsyn_bids.preproc.masks.mask_on_grid`); otherwise
    a mask off the image's grid raises ``ValueError``.
    """

    input_spec = _ApplyMaskInputSpec
    output_spec = _ApplyMaskOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_file)
        mask_img = nib.load(self.inputs.mask_file)
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(img.shape[:3])
        mask = np.asarray(mask_img.dataobj).reshape(mask_img.shape[:3]) > 0
        same = mask_img.shape[:3] == img.shape[:3] and np.allclose(
            mask_img.affine, img.affine, rtol=0, atol=1e-4
        )
        if not same:
            if not self.inputs.resample:
                raise ValueError(
                    f"{self.inputs.mask_file} is not on the grid of {self.inputs.in_file}"
                )
            mask = mask_on_grid(mask, mask_img.affine, img.shape[:3], img.affine)
        data = np.where(mask, data, np.float32(0.0))
        self._results["out_file"] = _save(
            _like(data, img, np.float32),
            os.path.join(runtime.cwd, self.inputs.out_name),
            self.inputs.description,
        )
        return runtime


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _software(steps: list[str], mask_method: str) -> dict[str, str]:
    """The libraries behind the steps that ran, with their installed versions."""
    from importlib.metadata import version

    names = {"nibabel"} if steps else set()
    if "inu" in steps or mask_method == "t1w-rigid":
        names.add("antspyx")
    if mask_method == "deepbet":
        names.update({"deepbet", "torch"})
    return {name: version(name) for name in sorted(names)}


class _PreprocSummaryInputSpec(BaseInterfaceInputSpec):
    steps = traits.List(traits.Str, mandatory=True, desc="steps run, in order")
    orientation = File(exists=True, desc="Conform's record")
    mask_method = traits.Str(desc="BrainMask's method")
    check = traits.Str(desc="BrainMask's already-extracted verdict")
    warning = traits.Str("", usedefault=True, desc="BrainMask's warning")


class _PreprocSummaryOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="JSON: steps, software versions, decisions, warnings")
    warnings = traits.List(traits.Str, desc="warnings for the report")
    skull_stripped = traits.Bool(desc="whether the model input is brain-extracted")


class PreprocSummary(SimpleInterface):
    """What preprocessing did to one source, for sidecars, the report and the citation text."""

    input_spec = _PreprocSummaryInputSpec
    output_spec = _PreprocSummaryOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        steps = list(inputs.steps)
        method = inputs.mask_method if isdefined(inputs.mask_method) else ""
        summary: dict = {"Steps": steps, "Software": _software(steps, method)}
        if isdefined(inputs.orientation):
            record = OrientationRecord.load(inputs.orientation)
            summary["Conform"] = {
                "SourceAxisCodes": record.source_axcodes,
                "SourceToRAS": record.to_dict()["SourceToRAS"],
                "Reoriented": not record.is_identity,
            }
        if isdefined(inputs.mask_method) and inputs.mask_method:
            summary["BrainMask"] = {"Method": inputs.mask_method}
            if "apply_mask" in steps:  # what the network read and the output keeps
                summary["BrainMask"]["SynthesisMarginVoxels"] = SYNTHESIS_MARGIN_VOXELS
            if isdefined(inputs.check) and inputs.check:
                summary["BrainMask"]["AlreadyExtractedCheck"] = inputs.check
        warnings = [inputs.warning] if inputs.warning else []
        summary["Warnings"] = warnings
        summary["SkullStripped"] = "apply_mask" in steps
        path = os.path.join(runtime.cwd, "preproc.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
            fh.write("\n")
        self._results["out_file"] = path
        self._results["warnings"] = warnings
        self._results["skull_stripped"] = summary["SkullStripped"]
        return runtime
