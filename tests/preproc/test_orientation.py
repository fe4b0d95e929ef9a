"""Conform: RAS+ by permutations and flips, and back onto the source grid bit for bit."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from tumsyn_bids.preproc.orientation import (
    OrientationRecord,
    conform,
    conform_array,
    orientation_record,
    to_source_array,
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
