"""Header probing that reports unreadable images as text (tumsyn_bids.bids.images)."""

from __future__ import annotations

import gzip
import os

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
