import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.model import InputImageError
from tumsyn_bids.model.volume import load_volume, scaled_affine, to_nifti

# The fixture input: RAS affine of a 21 x 23 x 27 image with voxels 1 x 1.2 x 1.5 mm.
INPUT_AFFINE = np.array(
    [[1.0, 0, 0, -12.5], [0, -1.2000000476837158, 0, 30.25], [0, 0, 1.5, 8.0], [0, 0, 0, 1]]
)


def test_fixture_geometry_and_axis_order(small):
    vol = load_volume(small / "input_T1w.nii.gz")
    np.testing.assert_allclose(vol.affine, INPUT_AFFINE, atol=1e-6)
    assert vol.data.shape == (27, 23, 21)  # SimpleITK (z, y, x) order
    norm = np.load(small / "normalized_input.npy")
    assert norm.shape == vol.data.shape


def test_same_resolution_affine_is_the_input_affine():
    np.testing.assert_array_equal(scaled_affine(INPUT_AFFINE, (1, 1, 1)), INPUT_AFFINE)


def test_2x_affine_hand_computed():
    # Voxel size halves; voxel 0's centre moves a quarter input voxel towards -index:
    # x: -12.5 - 0.25*1.0; y: 30.25 - 0.25*(-1.2); z: 8 - 0.25*1.5.
    expected = np.array(
        [
            [0.5, 0, 0, -12.75],
            [0, -0.6000000238418579, 0, 30.550000011920929],
            [0, 0, 0.75, 7.625],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(scaled_affine(INPUT_AFFINE, (2, 2, 2)), expected, atol=1e-12)


def test_anisotropic_affine_hand_computed():
    # The fixture's aniso case: scales (i, j, k) = (1.5, 1, 2); offsets 0.5/s - 0.5 input voxels.
    expected = np.array(
        [
            [1 / 1.5, 0, 0, -12.5 + (0.5 / 1.5 - 0.5) * 1.0],
            [0, -1.2000000476837158, 0, 30.25],
            [0, 0, 0.75, 8.0 - 0.25 * 1.5],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(scaled_affine(INPUT_AFFINE, (1.5, 1, 2)), expected, atol=1e-12)


def test_field_of_view_is_kept():
    # The outer voxel faces of input and 2x output coincide.
    out = scaled_affine(INPUT_AFFINE, (2, 2, 2))
    first_face_in = INPUT_AFFINE @ [-0.5, -0.5, -0.5, 1]
    first_face_out = out @ [-0.5, -0.5, -0.5, 1]
    np.testing.assert_allclose(first_face_in, first_face_out, atol=1e-9)
    last_in = INPUT_AFFINE @ [20.5, 22.5, 26.5, 1]
    last_out = out @ [41.5, 45.5, 53.5, 1]
    np.testing.assert_allclose(last_in, last_out, atol=1e-9)


def test_to_nifti_writes_xyz_order(small, tmp_path):
    vol = load_volume(small / "input_T1w.nii.gz")
    img = to_nifti(vol.data, vol, (1, 1, 1))
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.data.T)
    np.testing.assert_allclose(img.affine, vol.affine)
    assert img.header.get_data_dtype() == np.float32


@pytest.mark.parametrize("kind", ["empty", "4d", "nan", "garbage", "missing"])
def test_bad_images_have_clear_errors(tmp_path, kind):
    path = tmp_path / "bad.nii.gz"
    if kind == "empty":
        path.write_bytes(b"")
        match = "empty file"
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), path)
        match = "3-D"
    elif kind == "nan":
        data = np.ones((4, 4, 4), np.float32)
        data[1, 1, 1] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        match = "NaN"
    elif kind == "garbage":
        path.write_bytes(b"hello world" * 50)
        match = "not a readable NIfTI"
    else:
        match = "no such file"
    with pytest.raises(InputImageError, match=match) as err:
        load_volume(path)
    assert str(path) in str(err.value)
