"""Image checks before synthesis and header clean-up after it."""

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

from ..model.grid import GRID_ATOL, GRID_RTOL, same_grid, voxel_sizes
from ..model.volume import from_model_order, load_volume


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
        img = nib.Nifti1Image(from_model_order(volume.data), volume.affine, volume.header)
        img.set_data_dtype(np.float32)
        nib.save(img, out)
        self._results["out_file"] = out
        self._results["zooms"] = volume.zooms
        return runtime


class _PostprocessInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="synthesized image on the model's grid")
    reference = File(exists=True, mandatory=True, desc="the source image")
    voxel_size = traits.Tuple(
        traits.Float, traits.Float, traits.Float, desc="requested voxel size (mm, i, j, k)"
    )
    expected_grid = traits.Str(desc="OutputGrid record (JSON) the image must lie on")


class _PostprocessOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class Postprocess(SimpleInterface):
    """Check that the synthesized image lies on the grid requested of it, and label it.

    The synthesis node writes the output grid itself
    (:func:`tumsyn_bids.model.volume.synthesize_nifti`); this guard compares the written header
    with the plan's :class:`~tumsyn_bids.model.grid.OutputGrid` (``expected_grid``: same shape,
    affine equal to float precision) and the voxel size with the request, before the image
    becomes a derivative. It marks the header so the image cannot pass for an acquired one.
    Raises ``ValueError`` naming the source image on a mismatch.
    """

    input_spec = _PostprocessInputSpec
    output_spec = _PostprocessOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_file)
        where = f"synthesized image of {self.inputs.reference}"
        if isdefined(self.inputs.expected_grid):
            expected = json.loads(self.inputs.expected_grid)
            if not same_grid(img.shape, img.affine, expected):
                raise ValueError(
                    f"{where} is not on the planned grid: shape {img.shape}, affine "
                    f"{img.affine.tolist()}; planned {expected}"
                )
        if isdefined(self.inputs.voxel_size):
            sizes = voxel_sizes(img.affine)
            if not np.allclose(sizes, self.inputs.voxel_size, rtol=GRID_RTOL, atol=GRID_ATOL):
                raise ValueError(
                    f"{where} has voxels of {sizes} mm, not the requested {self.inputs.voxel_size}"
                )
        img.header["descrip"] = b"tumsyn-bids synthesized image"
        out = os.path.join(runtime.cwd, "synthesized.nii.gz")
        nib.save(img, out)
        self._results["out_file"] = out
        return runtime
