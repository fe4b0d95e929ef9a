"""Tests of atomic, reproducible writing (tumsyn_bids.bids.io)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids import io as bids_io
from tumsyn_bids.bids.io import (
    atomic_save_nifti,
    atomic_write_json,
    atomic_write_text,
    is_finished,
    json_text,
    save_derivative,
)
from tumsyn_bids.bids.names import DerivativesError, sidecar_relpath


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_json_text_numpy_and_nan() -> None:
    text = json_text({"b": np.float32(0.5), "a": np.arange(3), "c": np.int64(2)})
    assert json.loads(text) == {"a": [0, 1, 2], "b": 0.5, "c": 2}
    with pytest.raises(ValueError):
        json_text({"x": float("nan")})


def test_unserialisable_json_creates_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert not target.exists() and _leftovers(tmp_path) == []
    target.write_text('{"old": 1}\n')
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": {1, 2}})
    assert target.read_text() == '{"old": 1}\n'
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_removes_temporary_and_keeps_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "sub-01" / "anat" / "x.json"
    atomic_write_text(target, "old\n")
    seen: list[str] = []
    real_replace = os.replace

    def boom(*args, **kwargs):
        seen.extend(p.name for p in target.parent.iterdir() if p.name.startswith("."))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new content\n")
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_text() == "old\n"
    assert _leftovers(target.parent) == []
    assert seen and all(name.startswith(".x.tmp") and name.endswith(".json") for name in seen)


def test_interrupted_nifti_write_removes_temporary(
    tmp_path: Path, make_image, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str] = []

    def interrupt(fd):
        names.extend(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_nifti(make_image(), tmp_path / "sub-01_desc-x_T2w.nii.gz")
    assert list(tmp_path.iterdir()) == []
    assert len(names) == 1
    assert names[0].startswith(".sub-01_desc-x_T2w.tmp") and names[0].endswith(".nii.gz")


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_gzip_output_is_byte_identical_across_saves(tmp_path: Path, make_image) -> None:
    first = atomic_save_nifti(make_image(), tmp_path / "a" / "x.nii.gz").read_bytes()
    second = atomic_save_nifti(make_image(), tmp_path / "b" / "x.nii.gz").read_bytes()
    assert first == second
    assert first[:2] == b"\x1f\x8b" and first[4:8] == b"\x00\x00\x00\x00"  # gzip, mtime 0
    assert first[3] & 0x08 == 0  # no file name in the gzip header
    loaded = nib.load(tmp_path / "a" / "x.nii.gz")
    np.testing.assert_array_equal(loaded.get_fdata(dtype=np.float32), make_image().get_fdata())
    np.testing.assert_allclose(loaded.affine, make_image().affine)
    assert gzip.decompress(first) == make_image().to_bytes()
    assert _leftovers(tmp_path / "a") == []


def test_uncompressed_nifti_and_bad_extension(tmp_path: Path, make_image) -> None:
    path = atomic_save_nifti(make_image(), tmp_path / "x.nii")
    assert path.read_bytes() == make_image().to_bytes()
    with pytest.raises(DerivativesError):
        atomic_save_nifti(make_image(), tmp_path / "x.mgz")


def test_save_derivative_and_is_finished(
    tmp_path: Path, make_image, monkeypatch: pytest.MonkeyPatch
) -> None:
    rel = "sub-01/ses-1/anat/sub-01_ses-1_run-1_desc-tumsynFromT1w_T2w.nii.gz"
    sidecar = {"Sources": ["bids:raw:sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz"], "A": 1}
    assert not is_finished(tmp_path, rel)
    image_path = save_derivative(tmp_path, rel, make_image(), sidecar)
    assert image_path == tmp_path / rel
    assert is_finished(tmp_path, rel)
    json_path = tmp_path / sidecar_relpath(rel)
    assert json_path.read_text() == json_text(sidecar)

    # an interrupted overwrite leaves the output unfinished, never with a stale sidecar
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bids_io, "atomic_save_nifti", broken)
    with pytest.raises(OSError):
        save_derivative(tmp_path, rel, make_image(), sidecar)
    assert not json_path.exists()
    assert not is_finished(tmp_path, rel)
    assert _leftovers(image_path.parent) == []


def test_is_finished_needs_both_non_empty(tmp_path: Path) -> None:
    rel = "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz"
    image = tmp_path / rel
    sidecar = tmp_path / sidecar_relpath(rel)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    assert not is_finished(tmp_path, rel)
    sidecar.write_text("")
    assert not is_finished(tmp_path, rel)
    sidecar.write_text("{}\n")
    assert is_finished(tmp_path, rel)
    image.write_bytes(b"")
    assert not is_finished(tmp_path, rel)
