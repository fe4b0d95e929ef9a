"""Header probing that reports unreadable images as text (tumsyn_bids.bids.images)."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids.images import ImageInfo, probe_image


@pytest.mark.parametrize("name", ["t1.nii.gz", "t1.nii"])
def test_readable_volume(tmp_path, write_volume, name):
    path = write_volume(tmp_path / name, (0.8, 0.8, 1.25), (6, 7, 8))
    info = probe_image(path)
    assert info.error is None
    assert info.shape == (6, 7, 8)
    assert info.voxel_size == pytest.approx((0.8, 0.8, 1.25))
    assert info.voxel_size[0] == float(np.float32(0.8))  # raw header value; rounding is later


def test_single_volume_4d_is_accepted(tmp_path, write_volume):
    info = probe_image(write_volume(tmp_path / "t1.nii.gz", (1, 1, 1), (4, 4, 4, 1)))
    assert info.error is None and info.voxel_size == (1.0, 1.0, 1.0)


def test_multi_volume_4d_is_an_error(tmp_path, write_volume):
    info = probe_image(write_volume(tmp_path / "t1.nii.gz", (1, 1, 1), (4, 4, 4, 3)), "x.nii.gz")
    assert info.error == "x.nii.gz: 4D image of shape (4, 4, 4, 3); a single 3D volume is needed"


def test_2d_image_is_an_error(tmp_path, write_volume):
    info = probe_image(write_volume(tmp_path / "t1.nii", (1, 1), (4, 4)), "t1.nii")
    assert info.error.startswith("t1.nii: image has 2 dimension(s)")


def test_empty_placeholder(examples):
    path = examples / "hcp_example_bids/sub-100307/anat/sub-100307_T1w.nii.gz"
    info = probe_image(path, "sub-100307/anat/sub-100307_T1w.nii.gz")
    assert info == ImageInfo(
        error="sub-100307/anat/sub-100307_T1w.nii.gz: empty file (0 bytes) — "
        "not a readable NIfTI image"
    )


def test_default_display_name_is_the_path(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.touch()
    assert probe_image(path).error.startswith(f"{path}: empty file")


def test_garbage_and_truncated_files(tmp_path, write_volume):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all" * 100)
    info = probe_image(garbage, "garbage.nii.gz")
    assert info.error.startswith("garbage.nii.gz: not a readable NIfTI image (")
    assert "\n" not in info.error

    good = write_volume(tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:30])
    assert "not a readable NIfTI image" in probe_image(truncated, "t").error

    plain = tmp_path / "plain.nii"
    plain.write_bytes(gzip.decompress(good.read_bytes())[:100])
    assert "not a readable NIfTI image" in probe_image(plain, "p").error


def test_missing_and_broken_symlink(tmp_path):
    assert probe_image(tmp_path / "nope.nii.gz", "nope").error == "nope: file not found"
    link = tmp_path / "link.nii.gz"
    os.symlink(tmp_path / ".git/annex/objects/XX/key.nii.gz", link)
    assert "broken symbolic link" in probe_image(link, "link").error
    assert "datalad get" in probe_image(link, "link").error


def test_git_annex_pointer_file(tmp_path):
    pointer = tmp_path / "t1.nii.gz"
    pointer.write_text("/annex/objects/SHA256E-s1234--abcdef.nii.gz\n")
    error = probe_image(pointer, "t1.nii.gz").error
    assert error.startswith("t1.nii.gz: git-annex pointer file")


def test_directory_is_an_error(tmp_path):
    folder = tmp_path / "t1.nii.gz"
    folder.mkdir()
    assert probe_image(folder, "d").error == "d: not a regular file"


# ---------------------------------------------------------------- sform vs qform/pixdim (#18.5)


def _header_case(path, sform, qform=None, pixdim=None, shape=(6, 7, 8)):
    """Save a NIfTI whose sform, qform and pixdim are set independently (codes 1 when given)."""
    image = nib.Nifti1Image(np.zeros(shape, np.float32), None)
    image.header.set_sform(
        None if sform is None else np.asarray(sform), code=int(sform is not None)
    )
    image.header.set_qform(
        None if qform is None else np.asarray(qform), code=int(qform is not None)
    )
    if pixdim is not None:
        image.header.set_zooms(pixdim)
    nib.save(image, path)
    return path


def _diag(*sizes, shift=(0.0, 0.0, 0.0)):
    affine = np.diag([*sizes, 1.0])
    affine[:3, 3] = shift
    return affine


def test_sform_voxel_size_wins_over_pixdim_with_a_warning(tmp_path):
    # The smallest input that showed it: sform 0.9 mm, qform/pixdim 1.0 mm.
    path = _header_case(tmp_path / "t1.nii.gz", _diag(0.9, 0.9, 0.9), _diag(1.0, 1.0, 1.0))
    info = probe_image(path, "t1.nii.gz")
    assert info.error is None
    assert info.voxel_size == pytest.approx((0.9, 0.9, 0.9), rel=1e-6)
    assert info.warning == (
        "t1.nii.gz: the header's sform gives voxel size (0.9, 0.9, 0.9) mm but its "
        "qform/pixdim (1, 1, 1) mm; the sform is used, as nibabel reads the data and the "
        "output is written with it"
    )
    assert nib.load(path).header.get_zooms() == (1.0, 1.0, 1.0)  # the case is what it claims


def test_anisotropic_sform_without_qform(tmp_path):
    # Variant: no qform at all, pixdim set by hand; one axis differs.
    path = _header_case(tmp_path / "t1.nii", _diag(0.5, 0.6, 1.3), None, pixdim=(0.5, 0.6, 1.0))
    info = probe_image(path, "t1.nii")
    assert info.voxel_size == pytest.approx((0.5, 0.6, 1.3), rel=1e-6)
    assert info.warning == (
        "t1.nii: the header's sform gives voxel size (0.5, 0.6, 1.3) mm but its pixdim "
        "(0.5, 0.6, 1) mm; the sform is used, as nibabel reads the data and the output is "
        "written with it"
    )


def test_sform_and_qform_placing_the_image_differently(tmp_path):
    # Variant: same voxel sizes, origins 2 mm apart.
    path = _header_case(
        tmp_path / "t1.nii.gz", _diag(1.0, 1.0, 1.0, shift=(2.0, 0, 0)), _diag(1.0, 1.0, 1.0)
    )
    info = probe_image(path, "t1.nii.gz")
    assert info.voxel_size == (1.0, 1.0, 1.0)
    assert info.warning == (
        "t1.nii.gz: the header's sform and qform place the image up to 2 mm apart; the sform "
        "is used, as nibabel reads the data and the output is written with it"
    )


def test_agreeing_oblique_header_keeps_the_stored_zooms_and_no_warning(tmp_path):
    # Float noise is not a disagreement: a rotated 0.8 x 0.8 x 1.2 grid written by nibabel.
    theta = np.deg2rad(17.0)
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.8, 1.2])
    affine[:3, 3] = (-90.3, 101.7, -60.1)
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.float32), affine), path)
    info = probe_image(path, "t1.nii.gz")
    assert info.warning is None
    assert info.voxel_size == nib.load(path).header.get_zooms()[:3]


def test_qform_only_and_plain_pixdim_cannot_disagree(tmp_path):
    qform_only = _header_case(tmp_path / "q.nii.gz", None, _diag(0.7, 0.7, 0.7))
    assert probe_image(qform_only).warning is None
    assert probe_image(qform_only).voxel_size == pytest.approx((0.7, 0.7, 0.7), rel=1e-6)
    bare = _header_case(tmp_path / "p.nii.gz", None, None, pixdim=(1.1, 1.2, 1.3))
    assert probe_image(bare).warning is None
    assert probe_image(bare).voxel_size == pytest.approx((1.1, 1.2, 1.3), rel=1e-6)
