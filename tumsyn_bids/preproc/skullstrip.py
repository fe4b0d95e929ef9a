"""Brain extraction ("skull stripping") with deepbet.

deepbet (Fisch L. et al., "deepbet: Fast brain extraction of T1-weighted MRI using
Convolutional Neural Networks", Computers in Biology and Medicine 179:108845, 2024,
doi:10.1016/j.compbiomed.2024.108845; MIT licence) is a pair of TorchScript U-Nets whose
weights ship inside its wheel: a coarse network finds the brain's bounding box on a 128³ copy,
a fine one segments the box resampled to 256³, and the result is cut back to the largest
connected component with its holes filled. It runs on torch, which the synthesis model needs
anyway, in seconds per 1 mm head on two CPU cores, and it downloads nothing.

It was trained on T1-weighted images. For other contrasts the workflow prefers the mask of a
T1w of the same session (:mod:`.register`) and falls back to deepbet on the image itself with a
warning (:data:`NON_T1W_WARNING`).

Determinism: on the CPU, with a fixed torch thread count, the same input gives the same mask
bit for bit (checked by the tests); the CPU is the default even when a GPU is present.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import nibabel as nib
import numpy as np

__all__ = ["DEEPBET_THRESHOLD", "NON_T1W_WARNING", "deepbet_mask", "deepbet_version"]

#: deepbet's own default probability threshold.
DEEPBET_THRESHOLD = 0.5

#: Report text when deepbet had to run on a contrast it was not trained for.
NON_T1W_WARNING = (
    "{suffix} source brain-extracted with deepbet, which was trained on T1-weighted images, "
    "because no T1w of the same session was given: check the brain mask in the report"
)


def deepbet_version() -> str:
    """The installed deepbet version (for provenance records)."""
    return version("deepbet")


def deepbet_mask(
    img: nib.spatialimages.SpatialImage,
    *,
    threshold: float = DEEPBET_THRESHOLD,
    threads: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """deepbet's brain mask of a 3-D head image, a boolean array on ``img``'s grid (i, j, k).

    Any voxel order works (deepbet reorients to RAS+ internally and back); any voxel size works
    (deepbet resamples the brain's bounding box to 256³ voxels). ``threads`` sets torch's CPU
    threads for the call (the previous setting is restored); ``device`` is ``"cpu"`` or
    ``"cuda"``. Raises ``ValueError`` for non-3-D or empty images.
    """
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise ValueError(f"deepbet needs a 3-D image, got shape {shape}")
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3])
    if not np.any(data):
        raise ValueError("every voxel is zero: nothing to brain-extract")
    import torch
    from deepbet import BrainExtraction

    plain = nib.Nifti1Image(data, img.affine)
    previous = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        with warnings.catch_warnings():  # deepbet loads TorchScript, which torch deprecates
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            extractor = BrainExtraction(no_gpu=device == "cpu")
        _, mask_img, _ = extractor.run(plain, threshold=float(threshold))
    finally:
        torch.set_num_threads(previous)
    return np.asarray(mask_img.dataobj).reshape(shape[:3]).astype(bool)
