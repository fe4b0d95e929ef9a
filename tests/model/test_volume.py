import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.model import InputImageError
from tumsyn_bids.model.grid import output_grid
from tumsyn_bids.model.volume import load_volume, to_nifti

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


def test_to_nifti_writes_xyz_order(small, tmp_path):
    vol = load_volume(small / "input_T1w.nii.gz")
    img = to_nifti(vol.data, vol, output_grid(vol.shape_ijk, vol.affine))
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


@pytest.fixture(scope="module")
def demo_synthesizer():
    from tumsyn_bids.model import Synthesizer, load_synthesis, load_text_encoder
    from tumsyn_bids.model.bundled import demo_weights

    syn, text = demo_weights()
    return Synthesizer(load_synthesis(syn).model, load_text_encoder(text).model, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("request_mm", [(0.7,) * 3, (0.75,) * 3, (0.9,) * 3, (0.5, 0.6, 1.3)])
@pytest.mark.parametrize("model", ["demo", "reference-small"])
def test_synthesize_nifti_writes_exactly_the_requested_grid(
    request, small, tmp_path, request_mm, model
):
    """tumsyn-synth's and the app's path: the written zooms equal the request (1e-6), the shape
    follows the rule and the affine is the grid record's."""
    from tumsyn_bids.model.volume import synthesize_nifti

    synth = request.getfixturevalue("demo_synthesizer" if model == "demo" else "small_synthesizer")
    src = nib.load(small / "input_T1w.nii.gz")  # 21 x 23 x 27, 1 x 1.2 x 1.5 mm, x flipped
    data = np.asarray(src.dataobj)[:19, :21, :17]  # odd sizes
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(data, src.affine), path)
    img, grid = synthesize_nifti(
        synth, path, "Age: 16; Modality: T2w", patch_size=(16, 16, 16), voxel_size=request_mm
    )
    out = tmp_path / "out.nii.gz"
    nib.save(img, out)
    back = nib.load(out)
    zooms = np.sqrt((back.affine[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(zooms, request_mm, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.header.get_zooms(), request_mm, rtol=0, atol=1e-6)
    sizes = (19 * 1.0, 21 * 1.2000000476837158, 17 * 1.5)
    assert back.shape == tuple(
        int(np.floor(f / v + 0.5)) for f, v in zip(sizes, request_mm, strict=True)
    )
    np.testing.assert_allclose(back.affine, grid.affine_array, rtol=1e-6, atol=1e-6)
    assert np.isfinite(np.asarray(back.dataobj)).all()
