"""Fixtures for the BIDS tests: copies of the bundled example subsets, synthetic NIfTI volumes.

The subsets live in ``tests/data/bids-examples`` (see its README). Tests that only read use them
in place; tests that write (synthetic headers, extra files) work on a copy in ``tmp_path``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bids-examples"


def write_volume(
    path: Path, zooms: Sequence[float] = (1.0, 1.0, 1.0), shape: Sequence[int] = (4, 5, 6)
) -> Path:
    """Write a small float32 NIfTI (``.nii`` or ``.nii.gz`` from the name) with these zooms."""
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(tuple(shape))
    spatial = [float(z) for z in zooms[:3]] + [1.0] * (3 - len(zooms[:3]))
    image = nib.Nifti1Image(data, np.diag([*spatial, 1.0]))
    image.header.set_zooms((tuple(spatial) + (1.0,) * len(shape))[: len(shape)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    nib.save(image, path)
    return path


def fill_placeholders(root: Path, zooms: Sequence[float] = (1.0, 1.0, 1.0)) -> list[Path]:
    """Replace every 0-byte ``.nii``/``.nii.gz`` under ``root`` with a readable volume."""
    filled = []
    for path in sorted(root.rglob("*.nii*")):
        if path.is_file() and path.stat().st_size == 0:
            filled.append(write_volume(path, zooms))
    return filled


@pytest.fixture
def examples() -> Path:
    """The bundled (read-only by convention) example subsets."""
    return EXAMPLES


@pytest.fixture
def copy_dataset(tmp_path: Path) -> Callable[[str], Path]:
    """Copy one example subset into ``tmp_path`` and return its root."""

    def _copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target)
        for path in target.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        return target

    return _copy


@pytest.fixture(name="write_volume")
def _write_volume_fixture() -> Callable[..., Path]:
    """:func:`write_volume` as a fixture, so test modules need not import conftest."""
    return write_volume


@pytest.fixture(name="fill_placeholders")
def _fill_placeholders_fixture() -> Callable[..., list[Path]]:
    """:func:`fill_placeholders` as a fixture."""
    return fill_placeholders


def _derivative_image(shape: Sequence[int] = (5, 6, 7)) -> nib.Nifti1Image:
    data = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(tuple(shape))
    affine = np.diag([0.8, 0.8, 1.2, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.5]
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    return img


@pytest.fixture
def make_image() -> Callable[..., nib.Nifti1Image]:
    """A factory of small float32 images (0.8 x 0.8 x 1.2 mm, shifted origin, mm units); every
    call with the same shape makes a new image with the same bytes."""
    return _derivative_image
