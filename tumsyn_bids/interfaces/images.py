"""Image checks before synthesis and header clean-up after it."""

from __future__ import annotations

import json
import logging
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

from ..bids.images import ImageDataError, read_image_data
from ..model.grid import GRID_ATOL, GRID_RTOL, same_grid, voxel_sizes

LOGGER = logging.getLogger("tumsyn_bids.interfaces")

#: File the CheckImage node leaves in its working directory when it refuses an image: the one
#: line of the :class:`~tumsyn_bids.bids.images.ImageDataError`, which the pipeline reports as
#: the job's message (a data problem, exit 65) instead of a crash.
DATA_ERROR_FILE = "data_error.txt"


class _CheckImageInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="source NIfTI image")
    display_name = traits.Str(desc="the image's name in messages (default: in_file)")


class _CheckImageOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="conformed float32 3-D copy of the image")
    zooms = traits.Tuple(traits.Float, traits.Float, traits.Float, desc="voxel size (i, j, k)")
    warning = traits.Str(desc="what was repaired (non-finite background voxels), or empty")


class CheckImage(SimpleInterface):
    """Refuse voxel data the model cannot use and conform the header.

    The checks are :func:`tumsyn_bids.bids.images.read_image_data`'s (the same ``tumsyn
    --dry-run`` applies): unreadable data (a truncated file), not 3-D, mostly non-finite, empty
    or constant, NaN or infinite inside the head. A refusal raises
    :class:`~tumsyn_bids.bids.images.ImageDataError` and leaves its one line in
    :data:`DATA_ERROR_FILE`. Non-finite background voxels become 0 (output ``warning``).

    Conforming means: float32 data, a singleton 4th dimension dropped, the original affine and
    voxel order kept (TUMSyn was trained on images as stored, so nothing is reoriented).
    """

    input_spec = _CheckImageInputSpec
    output_spec = _CheckImageOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        name = inputs.display_name if isdefined(inputs.display_name) else inputs.in_file
        try:
            image = read_image_data(inputs.in_file, name)
        except ImageDataError as exc:
            with open(os.path.join(runtime.cwd, DATA_ERROR_FILE), "w", encoding="utf-8") as fh:
                fh.write(f"{exc}\n")
            raise
        if image.warning:
            LOGGER.warning("%s", image.warning)
        out = os.path.join(runtime.cwd, "conformed.nii.gz")
        img = nib.Nifti1Image(image.data, image.affine, image.header)
        img.set_data_dtype(np.float32)
        nib.save(img, out)
        self._results["out_file"] = out
        self._results["zooms"] = voxel_sizes(image.affine)
        self._results["warning"] = image.warning or ""
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
