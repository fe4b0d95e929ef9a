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

from ..model.volume import load_volume


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


class _PostprocessOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class Postprocess(SimpleInterface):
    """Give the synthesized image the source's header conventions on its output grid.

    The synthesis node already writes the exact output grid; this keeps the source's qform and
    sform codes and spatial/temporal units so that downstream tools treat both images alike.
    """

    input_spec = _PostprocessInputSpec
    output_spec = _PostprocessOutputSpec

    def _run_interface(self, runtime):
        ref = nib.load(self.inputs.reference)
        img = nib.load(self.inputs.in_file)
        data = np.asarray(img.dataobj, dtype=np.float32)
        out_img = nib.Nifti1Image(data, img.affine)
        out_img.header.set_xyzt_units(*ref.header.get_xyzt_units())
        out_img.set_qform(img.affine, code=int(ref.header["qform_code"]) or 1)
        out_img.set_sform(img.affine, code=int(ref.header["sform_code"]) or 1)
        out_img.header["descrip"] = b"tumsyn-bids synthesized image"
        out = os.path.join(runtime.cwd, "synthesized.nii.gz")
        nib.save(out_img, out)
        self._results["out_file"] = out
        return runtime
