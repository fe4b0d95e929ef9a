"""Template anatomy: read offline from nilearn's files, valid fractions, same FOV when resampled."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tumsyn_bids.simulate.anatomy import (
    FRACTION_LEVELS,
    dequantize_fractions,
    grid_for,
    load_template,
    quantize_fractions,
    template_path,
    template_tissue_maps,
)


def test_template_files_are_found_without_importing_nilearn_or_torch() -> None:
    code = (
        "import sys; import tumsyn_bids.simulate as s; "
        "from tumsyn_bids.simulate.anatomy import template_path; "
        "[template_path(n) for n in ('gm', 'wm', 't1')]; "
        "print('nilearn' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert template_path("gm").name == "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


def test_template_fractions_are_valid() -> None:
    template = load_template()
    total = template.gm + template.wm + template.csf
    for volume in (template.gm, template.wm, template.csf):
        assert volume.dtype == np.float32
        assert volume.min() >= 0.0 and volume.max() <= 1.0
    assert total.max() <= 1.0 + 1e-6
    assert template.voxel_size == (1.0, 1.0, 1.0)
    # A plausible adult-sized brain (ml): GM and WM from the template, CSF derived.
    assert 800 < template.gm.sum() / 1000 < 1200
    assert 500 < template.wm.sum() / 1000 < 900
    assert 100 < template.csf.sum() / 1000 < 400
    # Cropped: the brain does not touch the border (margin left for deformations).
    mask = template.brain_mask()
    assert mask.any()
    assert not mask[0].any() and not mask[-1].any() and not mask[:, :, 0].any()


def test_csf_fills_the_ventricles() -> None:
    template = load_template()
    # MNI (0, 12, 16) mm lies in the lateral ventricles' frontal horns region; search nearby.
    ijk = np.rint(np.linalg.solve(template.affine, [6.0, 12.0, 16.0, 1.0])[:3]).astype(int)
    block = template.csf[tuple(slice(i - 4, i + 5) for i in ijk)]
    assert block.max() > 0.9


@pytest.mark.parametrize("voxel_size", [1.5, 2.0, 3.0])
def test_resampling_keeps_the_field_of_view(voxel_size: float) -> None:
    template = load_template()
    shape, affine = grid_for(voxel_size)
    old_extent = np.asarray(template.shape) * 1.0
    new_extent = np.asarray(shape) * voxel_size
    assert np.all(np.abs(new_extent - old_extent) <= voxel_size / 2 + 1e-9)

    def centre(shape_: tuple, affine_: np.ndarray) -> np.ndarray:
        return affine_[:3, :3] @ ((np.asarray(shape_) - 1) / 2.0) + affine_[:3, 3]

    np.testing.assert_allclose(centre(shape, affine), centre(template.shape, template.affine))
    np.testing.assert_allclose(np.diag(affine)[:3], voxel_size)


def test_resampled_maps_keep_volumes_and_bounds() -> None:
    template = load_template()
    coarse = template_tissue_maps(3.0)
    assert coarse.voxel_size == (3.0, 3.0, 3.0)
    total = coarse.gm + coarse.wm + coarse.csf
    assert total.min() >= 0.0 and total.max() <= 1.0 + 1e-6
    for fine, low in zip(
        (template.gm, template.wm, template.csf), (coarse.gm, coarse.wm, coarse.csf), strict=True
    ):
        assert low.sum() * 27 == pytest.approx(fine.sum(), rel=0.02)


def test_quantized_fractions_never_exceed_one() -> None:
    maps = template_tissue_maps(3.0)
    levels = quantize_fractions(maps)
    total = sum(level.astype(int) for level in levels.values())
    assert all(level.dtype == np.uint8 for level in levels.values())
    assert total.max() <= FRACTION_LEVELS
    back = dequantize_fractions(levels, maps.affine)
    assert np.abs(back.gm - maps.gm).max() <= 0.5 / FRACTION_LEVELS + 1e-6
    assert (back.gm + back.wm + back.csf).max() <= 1.0 + 1e-6
