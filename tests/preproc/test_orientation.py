"""Conform: RAS+ by permutations and flips, and back onto the source grid bit for bit."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from tumsyn_bids.model.grid import output_grid, same_grid
from tumsyn_bids.preproc.orientation import (
    OrientationRecord,
    conform,
    conform_array,
    conformed_output_grid,
    orientation_record,
    to_conformed_axes,
    to_source_array,
    to_source_axes,
    to_source_grid,
)

#: Storage orders of one head: RAS, DICOM's LPS, sagittal acquisitions (slices along L-R
#: stored first or last), FreeSurfer's LIA.
ORDERS = ["RAS", "LPS", "RSA", "ASL", "PIR", "LIA"]


def _oblique_affine() -> np.ndarray:
    """A 1.1 x 0.9 x 1.3 mm grid rotated 10 degrees about z, with an odd origin."""
    angle = np.radians(10.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.1, 0.9, 1.3])
    affine[:3, 3] = [-33.3, 17.7, -41.1]
    return affine


def _head(order: str, dtype=np.int16) -> nib.Nifti1Image:
    """The same world-space image stored with axis codes ``order`` (exact reorientation)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, size=(7, 8, 9)).astype(dtype)
    ras = nib.Nifti1Image(data, _oblique_affine())
    ras.header.set_xyzt_units("mm", "sec")
    ras.set_qform(ras.affine, code=1)
    ras.set_sform(ras.affine, code=1)
    transform = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(order)))
    return ras.as_reoriented(transform)


def _round_trip_file(img: nib.Nifti1Image, tmp_path, name: str) -> nib.Nifti1Image:
    path = tmp_path / f"{name}.nii.gz"
    nib.save(img, path)
    return nib.load(path)


@pytest.mark.parametrize("order", ORDERS)
def test_every_storage_order_conforms_to_the_same_ras_image(order, tmp_path):
    reference, _ = conform(_round_trip_file(_head("RAS"), tmp_path, "ras"))
    source = _round_trip_file(_head(order), tmp_path, order)
    assert "".join(nib.aff2axcodes(source.affine)) == order
    out, record = conform(source)
    assert record.source_axcodes == order
    assert record.conformed_axcodes == "RAS"
    assert record.is_identity == (order == "RAS")
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(reference.dataobj))
    # the header stores affines in float32: equal to float noise
    np.testing.assert_allclose(out.affine, reference.affine, rtol=0, atol=1e-5)
    assert out.get_data_dtype() == np.float32
    # zooms follow the axes
    np.testing.assert_allclose(out.header.get_zooms()[:3], [1.1, 0.9, 1.3], atol=1e-6)


@pytest.mark.parametrize("order", ORDERS)
def test_back_to_the_source_grid_is_bit_identical(order, tmp_path):
    source = _round_trip_file(_head(order), tmp_path, "source")
    conformed, record = conform(source)
    conformed = _round_trip_file(conformed, tmp_path, "conformed")
    record = OrientationRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    back = _round_trip_file(to_source_grid(conformed, record, source), tmp_path, "back")
    assert back.shape == source.shape
    assert np.array_equal(back.affine, source.affine)  # exact, not allclose
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d"):
        assert back.header[field] == source.header[field], field
    for field in ("qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim"):
        np.testing.assert_array_equal(back.header[field], source.header[field], err_msg=field)
    np.testing.assert_array_equal(back.get_fdata(), source.get_fdata())


def test_a_mask_goes_back_as_uint8_in_source_order(tmp_path):
    source = _round_trip_file(_head("LPS"), tmp_path, "lps")
    conformed, record = conform(source)
    mask = (np.asarray(conformed.dataobj) > 1500).astype(np.uint8)
    back = to_source_grid(mask, record, source, dtype=np.uint8)
    back = _round_trip_file(back, tmp_path, "mask")
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), source.get_fdata() > 1500)


def test_arrays_round_trip_for_any_dtype():
    record = orientation_record(_head("PIR"))
    for dtype in (np.uint8, np.int16, np.float32, np.float64, bool):
        data = np.random.default_rng(1).integers(0, 2, size=record.source_shape).astype(dtype)
        there = conform_array(data, record)
        assert there.shape == record.conformed_shape
        back = to_source_array(there, record)
        assert back.dtype == data.dtype
        np.testing.assert_array_equal(back, data)


def test_scaled_integers_are_conformed_as_their_scaled_values(tmp_path):
    img = _head("LPS")
    img.header.set_slope_inter(0.5, 10.0)
    source = _round_trip_file(img, tmp_path, "scaled")
    out, _ = conform(source)
    assert out.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    np.testing.assert_array_equal(
        np.sort(np.asarray(out.dataobj).ravel()), np.sort(source.get_fdata().ravel())
    )


def test_record_json_keeps_every_float(tmp_path):
    _, record = conform(_head("ASL"))
    path = tmp_path / "orientation.json"
    record.save(path)
    loaded = OrientationRecord.load(path)
    assert np.array_equal(loaded.source_affine, record.source_affine)
    assert np.array_equal(loaded.conformed_affine, record.conformed_affine)
    assert np.array_equal(loaded.to_ras, record.to_ras)
    assert loaded.source_shape == record.source_shape
    assert json.loads(path.read_text())["SourceAxisCodes"] == "ASL"


def test_singleton_fourth_dimension_is_dropped():
    img = _head("LPS")
    img4 = nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine, img.header)
    out, record = conform(img4)
    assert out.shape == record.conformed_shape == (7, 8, 9)


def test_no_reorientation_keeps_the_voxel_order():
    img = _head("LPS")
    out, record = conform(img, reorient=False)
    assert record.is_identity
    assert record.conformed_axcodes == "LPS"
    np.testing.assert_array_equal(np.asarray(out.dataobj), img.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(out.affine, img.affine)


def test_bad_inputs_say_what_is_wrong():
    img = _head("RAS")
    four_d = nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="expected a 3-D image"):
        conform(four_d, name="bold.nii.gz")
    flat = np.eye(4)
    flat[2, 2] = 0.0
    with pytest.raises(ValueError, match="not invertible"):
        conform(nib.spatialimages.SpatialImage(np.zeros((4, 4, 4), np.float32), flat))
    _, record = conform(img)
    other = _head("LPS")
    with pytest.raises(ValueError, match="conformed grid"):
        to_source_grid(other, record, img)
    wrong_source = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="source grid"):
        to_source_grid(np.zeros(record.conformed_shape), record, wrong_source)
    with pytest.raises(ValueError, match="not an orientation record"):
        OrientationRecord.from_dict({"SourceShape": [1, 2, 3]})


# --------------------------------------------------------------------------------------------
# Output grids of synthesis on the conformed image
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
def test_the_centred_grid_rule_commutes_with_conforming(order):
    """Synthesis on the conformed axes, with the voxel sizes reordered, lands on the grid the
    documented rule gives on the source axes (docs/output-grid.md)."""
    source = _head(order)
    request = (0.7, 1.3, 0.45)  # along the stored (i, j, k) axes, anisotropic on purpose
    expected = output_grid(source.shape, source.affine, voxel_size=request)
    got = conformed_output_grid(source.shape, source.affine, voxel_size=request)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.voxel_size, expected.voxel_size, rtol=1e-12)
    np.testing.assert_allclose(got.affine_array, expected.affine_array, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.origin, expected.origin, rtol=0, atol=1e-9)
    native = conformed_output_grid(source.shape, source.affine)
    assert native.is_identity and native == output_grid(source.shape, source.affine)


def test_the_authors_grid_is_anchored_at_the_conformed_first_voxel():
    """Reference mode anchors the grid at voxel 0 of the axis it runs on: on a flipped axis,
    the source's last voxel. 11 voxels of 1 mm, 4-voxel patches, 0.7 mm asked: 6 queries per
    patch, scale 1.5, int(16.5) = 16 voxels of 2/3 mm; on the conformed axis voxel 0 sits at
    -1/6, so in the flipped source's terms at 10 + 1/6 - 15 * 2/3 = 1/6 (by hand)."""
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # i runs towards Left: conforming flips it
    shape = (11, 8, 8)
    grid = conformed_output_grid(
        shape, affine, voxel_size=(0.7, 0.7, 0.7), patch_size=(4, 4, 4), reference=True
    )
    assert grid.shape == (16, 12, 12) and grid.query_size == (6, 6, 6)
    np.testing.assert_allclose(grid.step, [2 / 3] * 3, rtol=1e-12)
    np.testing.assert_allclose(grid.origin, [1 / 6, -1 / 6, -1 / 6], rtol=0, atol=1e-12)
    unflipped = output_grid(
        shape, affine, voxel_size=(0.7, 0.7, 0.7), patch_size=(4, 4, 4), reference=True
    )
    np.testing.assert_allclose(unflipped.origin, [-1 / 6] * 3, rtol=0, atol=1e-12)


def test_triples_follow_the_axes_to_the_conformed_order():
    record = orientation_record(_head("ASL"))  # i: A, j: S, k: L -> RAS takes (k, i, j)
    assert to_conformed_axes((1.0, 2.0, 3.0), record) == (3.0, 1.0, 2.0)
    assert to_conformed_axes((20, 30, 40), orientation_record(_head("RAS"))) == (20, 30, 40)


@pytest.mark.parametrize("order", ["LPS", "ASL", "PIR"])
def test_an_output_on_another_grid_goes_back_to_the_source_axes(order):
    """A synthesized image on the conformed output grid, put back in the source's voxel order,
    lies on conformed_output_grid's grid (the plan's) and keeps every value."""
    source = _head(order)
    record = orientation_record(source)
    request = (0.55, 0.8, 1.7)
    grid_c = output_grid(
        record.conformed_shape,
        record.conformed_affine,
        voxel_size=to_conformed_axes(request, record),
    )
    data = np.arange(np.prod(grid_c.shape), dtype=np.float32).reshape(grid_c.shape)
    img = nib.Nifti1Image(data, grid_c.affine_array)
    img.set_qform(grid_c.affine_array, code=2)
    img.set_sform(grid_c.affine_array, code=2)
    back = to_source_axes(img, record)
    expected = conformed_output_grid(source.shape, source.affine, voxel_size=request)
    # the planned grid to header precision (the float32 affine of img): Postprocess's check
    assert same_grid(back.shape, back.affine, expected)
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 2
    # every value kept, moved: the world position of each value is the same
    ijk = np.argwhere(np.ones(back.shape, bool))[::97]
    world = nib.affines.apply_affine(back.affine, ijk)
    there = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine), world)).astype(int)
    np.testing.assert_array_equal(np.asarray(back.dataobj)[tuple(ijk.T)], data[tuple(there.T)])
