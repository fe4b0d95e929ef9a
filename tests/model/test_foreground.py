"""Foreground-only patches leave every voxel inside the brain mask as it was.

The app skips patches that hold no brain-mask voxel and sets the output to 0 outside the mask,
sampled nearest-neighbour onto the output grid (:func:`tumsyn_bids.preproc.masks.mask_on_grid`).
An output voxel is inside that mask when the input voxel its centre falls in is, and the engine
gives an output voxel to every patch its centre falls in: so every patch that contributes to a
voxel inside the mask holds a mask voxel and is computed. Checked with the reference fixture's
model on its input, on the source grid and on a grid of non-integer scale.
"""

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.model.volume import load_volume, synthesize_nifti
from tumsyn_bids.preproc.masks import mask_on_grid

PROMPT = (
    "Age: 16; Gender: F; Scanner: 3.0 Siemens; Modality: T2w; Voxel size: (0.8, 0.8, 0.8); "
    "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  (3200.0, 563.0, None, T2var)"
)


@pytest.mark.slow
@pytest.mark.parametrize("voxel_size", [None, (0.7, 0.9, 1.1)], ids=["source grid", "0.7-0.9-1.1"])
def test_skipped_patches_change_nothing_inside_the_mask(small, small_synthesizer, voxel_size):
    volume = load_volume(small / "input_T1w.nii.gz")
    shape = volume.shape_ijk  # 21 x 23 x 27
    # a ball in one corner of the field of view: most 12-voxel patches miss it
    grid = np.indices(shape).reshape(3, -1).T
    mask = (np.linalg.norm(grid - [5, 6, 6], axis=1) <= 4.5).reshape(shape)
    settings = {"patch_size": (12, 12, 12), "voxel_size": voxel_size, "batch_size": 1}
    full, out_grid = synthesize_nifti(small_synthesizer, volume, PROMPT, **settings)
    everything = small_synthesizer.last_stats
    masked, _ = synthesize_nifti(small_synthesizer, volume, PROMPT, mask=mask, **settings)
    stats = small_synthesizer.last_stats
    assert everything.skipped == 0 and stats.planned == everything.planned
    assert stats.skipped > stats.planned // 2 and stats.computed + stats.skipped == stats.planned
    inside = mask_on_grid(mask, volume.affine, out_grid.shape, out_grid.affine_array)
    assert inside.sum() >= mask.sum() * 0.5
    got, want = np.asarray(masked.dataobj), np.asarray(full.dataobj)
    # one patch per pass, the same patches in the same order for every voxel inside: exact
    np.testing.assert_array_equal(got[inside], want[inside])
    assert np.all(np.isfinite(got)) and not np.array_equal(got[~inside], want[~inside])
    assert isinstance(masked, nib.Nifti1Image)
