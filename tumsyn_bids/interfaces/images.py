"""Image checks before synthesis and header clean-up after it."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..model.volume import load_volume, scaled_affine


class _CheckImageInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="source NIfTI image")


class _CheckImageOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="conformed float32 3-D copy of the image")
    zooms = traits.Tuple(traits.Float, traits.Float, traits.Float, desc="voxel size (i, j, k)")


class CheckImage(SimpleInterface):
    """Refuse what the model cannot read (not 3-D, non-finite, empty) and conform the header.

    Conforming means: float32 data, a singleton 4th dimension dropped, the original affine and
    voxel order kept (TUMSyn was trained on images as stored, so nothing is reoriented).
    """

    input_spec = _CheckImageInputSpec
    output_spec = _CheckImageOutputSpec

    def _run_interface(self, runtime):
        volume = load_volume(self.inputs.in_file)  # raises InputImageError with the file name
        if not np.any(volume.data):
            raise ValueError(f"{self.inputs.in_file}: every voxel is zero")
        out = os.path.join(runtime.cwd, "conformed.nii.gz")
        img = nib.Nifti1Image(volume.data.T, volume.affine, volume.header)
        img.set_data_dtype(np.float32)
        nib.save(img, out)
        self._results["out_file"] = out
        self._results["zooms"] = volume.zooms
        return runtime


class _PostprocessInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="synthesized image on the model's grid")
    reference = File(exists=True, mandatory=True, desc="the source image")
    scale_ijk = traits.Tuple(
        traits.Float, traits.Float, traits.Float, mandatory=True, desc="output samples per voxel"
    )


class _PostprocessOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class Postprocess(SimpleInterface):
    """Check that the synthesized image lies on the grid requested of it, and label it.

    The synthesis node writes the output grid itself (:func:`tumsyn_bids.model.volume.to_nifti`);
    this guard catches any mismatch with the source's field of view before the image becomes a
    derivative, and marks the header so the image cannot pass for an acquired one.
    """

    input_spec = _PostprocessInputSpec
    output_spec = _PostprocessOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_file)
        ref = nib.load(self.inputs.reference)
        # Scales are rounded to whole query samples per patch: allow that much voxel-size slack.
        expected = scaled_affine(ref.affine, self.inputs.scale_ijk)
        slack = 0.02 * max(ref.header.get_zooms()[:3])
        if not np.allclose(img.affine, expected, rtol=0.02, atol=slack):
            raise ValueError(
                f"synthesized image of {self.inputs.reference} is not on the requested grid: "
                f"affine {img.affine.tolist()} vs expected {expected.tolist()}"
            )
        img.header["descrip"] = b"tumsyn-bids synthesized image"
        out = os.path.join(runtime.cwd, "synthesized.nii.gz")
        nib.save(img, out)
        self._results["out_file"] = out
        return runtime
