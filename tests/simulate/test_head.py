"""Simulated heads: tissue around the brain, an exact brain inside, and the dataset option."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids.validation import validate_bids
from tumsyn_bids.cli import simulate as cli
from tumsyn_bids.cli.errors import EX_OK
from tumsyn_bids.prompts.protocol import Protocol
from tumsyn_bids.simulate import (
    HEAD_MARGIN_MM,
    HEAD_TISSUES,
    brain_mask,
    draw_subject,
    head_tissue_parameters,
    load_tissue_maps,
    render,
    render_ground_truth,
    render_head,
    tissue_parameters,
    write_simulated_dataset,
)
from tumsyn_bids.simulate.head import HEAD_THICKNESS_MM, LAYERS
from tumsyn_bids.simulate.signal import signal_of

VOXEL_MM = 3.0
MPRAGE = Protocol(
    repetition_time=2.3, echo_time=0.003, inversion_time=0.9, flip_angle=9.0,
    magnetic_field_strength=3.0,
)  # fmt: skip
TSE = Protocol(repetition_time=5.0, echo_time=0.1, flip_angle=90.0, magnetic_field_strength=3.0)


@pytest.fixture(scope="module")
def subject():
    return draw_subject("01", 11)


def test_the_head_grid_is_the_brain_grid_widened(subject) -> None:
    brain = subject.tissue_maps(VOXEL_MM)
    head = subject.tissue_maps(VOXEL_MM, head=True)
    extent = np.asarray(head.shape) * VOXEL_MM - np.asarray(brain.shape) * VOXEL_MM
    np.testing.assert_allclose(extent, 2 * HEAD_MARGIN_MM, atol=VOXEL_MM)
    # same centre, same anatomy: the brain volume does not depend on the grid
    centre = lambda m: m.affine[:3, :3] @ ((np.asarray(m.shape) - 1) / 2) + m.affine[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(head), centre(brain), atol=1e-6)
    assert head.brain_mask().sum() == pytest.approx(brain.brain_mask().sum(), rel=0.01)


def test_head_tissues_fit_beside_the_brain_and_never_inside_it(subject) -> None:
    levels = subject.tissue_levels(VOXEL_MM, head=True)
    head = subject.head_levels(VOXEL_MM)
    assert set(head) == set(HEAD_TISSUES)
    total = sum(np.asarray(v, dtype=np.int32) for v in (*levels.values(), *head.values()))
    assert total.max() <= 255
    inside = subject.tissue_maps(VOXEL_MM, head=True).brain_mask()
    for tissue in HEAD_TISSUES:
        assert not head[tissue][inside].any(), tissue
        assert head[tissue].any(), tissue
    # a skull: bone around the brain, at the layers' distance, about as thick as they say
    bone_ml = head["BONE"].sum() / 255 * VOXEL_MM**3 / 1000
    assert 150 < bone_ml < 700  # adult skull cap: a few hundred millilitres
    # the head does not reach the edge of the grid (air all around)
    anything = sum(np.asarray(v, np.int32) for v in head.values())
    for axis in range(3):
        assert not np.take(anything, 0, axis=axis).any()
        assert not np.take(anything, -1, axis=axis).any()


def test_inside_the_brain_mask_a_head_is_the_brain_image_exactly(subject) -> None:
    maps = subject.tissue_maps(VOXEL_MM, head=True)
    brain = render(maps, MPRAGE, "T1w")
    head = brain + render_head(subject.head_levels(VOXEL_MM), MPRAGE, "T1w", 3.0)
    inside = maps.brain_mask()
    np.testing.assert_array_equal(head[inside], brain[inside])
    assert (head[~inside] > brain[~inside]).any()


def test_head_tissues_have_their_textbook_contrast() -> None:
    """Fat bright on T1w (short T1), bone dark everywhere, extra-axial CSF as CSF."""
    brain = tissue_parameters(3.0)
    head = head_tissue_parameters(3.0)
    for protocol, suffix in ((MPRAGE, "T1w"), (TSE, "T2w")):
        wm = signal_of(brain["WM"], protocol, suffix)
        assert signal_of(head["BONE"], protocol, suffix) < 0.05 * wm
        assert signal_of(head["EXTCSF"], protocol, suffix) == signal_of(
            brain["CSF"], protocol, suffix
        )
    t1w = {t: signal_of(p, MPRAGE, "T1w") for t, p in head.items()}
    assert t1w["FAT"] > signal_of(brain["WM"], MPRAGE, "T1w")
    assert t1w["FAT"] > t1w["MUSCLE"] > t1w["BONE"]
    # 1.5 T and fields in between come from the same scheme
    assert head_tissue_parameters(2.0)["FAT"].t1 == pytest.approx(0.355, abs=0.01)
    with pytest.raises(ValueError, match="outside the simulated range"):
        head_tissue_parameters(20.0)


def test_layers_are_ordered_and_as_thick_as_documented() -> None:
    edges = [edge for edge, _ in LAYERS]
    assert edges == sorted(edges) and edges[-1] == HEAD_THICKNESS_MM
    for _, composition in LAYERS:
        assert sum(composition.values()) == pytest.approx(1.0)
        assert set(composition) <= set(HEAD_TISSUES)


@pytest.fixture(scope="module")
def head_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_simulated_dataset(
        tmp_path_factory.mktemp("heads") / "ds",
        n_subjects=1,
        modalities=("T1w", "T2w"),
        seed=11,
        voxel_size=VOXEL_MM,
        with_head=True,
    )


def test_dataset_with_heads(head_dataset: Path) -> None:
    settings = json.loads((head_dataset / "code/tumsyn-simulate.json").read_text())
    assert settings["with_head"] is True
    deriv = head_dataset / "derivatives/simulation/sub-01/anat"
    for label in ("ExtCSF", "Bone", "Fat", "Muscle"):
        assert (deriv / f"sub-01_label-{label}_probseg.nii.gz").is_file()
        assert (deriv / f"sub-01_label-{label}_probseg.json").is_file()
    scan = nib.load(head_dataset / "sub-01/anat/sub-01_T1w.nii.gz")
    mask = brain_mask(head_dataset, "01")
    assert scan.shape == mask.shape
    np.testing.assert_array_equal(scan.affine, mask.affine)
    # the brain ground truth is the subject's brain, on the head grid
    subject = draw_subject("01", 11)
    np.testing.assert_array_equal(
        np.asarray(mask.dataobj, bool), subject.tissue_maps(VOXEL_MM, head=True).brain_mask()
    )
    maps = load_tissue_maps(head_dataset, "01")
    assert maps.shape == scan.shape
    # raw-looking: signal outside the brain mask well above the noise floor (the scalp)
    data = scan.get_fdata()
    inside = np.asarray(mask.dataobj) > 0
    shell = (~inside) & (data > 0.5 * np.median(data[inside]))
    assert shell.sum() * VOXEL_MM**3 / 1000 > 100  # > 100 mL of bright non-brain tissue
    assert "simulated" in (head_dataset / "README").read_text()
    sidecar = json.loads((head_dataset / "sub-01/anat/sub-01_T2w.json").read_text())
    truth = render_ground_truth(head_dataset, "01", sidecar, "T2w")
    assert truth.shape == scan.shape


def test_heads_pass_the_validator(head_dataset: Path) -> None:
    result = validate_bids(head_dataset, recursive=True)
    assert result.ok, result.report()


def test_heads_are_deterministic_and_brains_unchanged(head_dataset: Path, tmp_path: Path) -> None:
    again = write_simulated_dataset(
        tmp_path / "again", n_subjects=1, modalities=("T1w", "T2w"), seed=11,
        voxel_size=VOXEL_MM, with_head=True,
    )  # fmt: skip
    for path in head_dataset.rglob("*.nii.gz"):
        assert path.read_bytes() == (again / path.relative_to(head_dataset)).read_bytes()
    brains = write_simulated_dataset(
        tmp_path / "brains", n_subjects=1, modalities=("T1w",), seed=11, voxel_size=VOXEL_MM
    )
    settings = json.loads((brains / "code/tumsyn-simulate.json").read_text())
    assert "with_head" not in settings
    assert "no skull or scalp" in (brains / "README").read_text()
    assert not list((brains / "derivatives").rglob("*label-Bone*"))


def test_cli_with_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    args = [str(out), "--subjects", "1", "--modalities", "FLAIR", "--voxel-size", "4"]
    assert cli.main([*args, "--with-head"]) == EX_OK
    assert "(heads)" in capsys.readouterr().out
    assert (out / "derivatives/simulation/sub-01/anat/sub-01_label-Fat_probseg.nii.gz").is_file()
