"""``tumsyn-simulate``: help, a small run, refusals and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tumsyn_bids.cli import simulate as cli
from tumsyn_bids.cli.errors import EX_CANTCREAT, EX_OK, EX_USAGE
from tumsyn_bids.simulate import SUFFIXES

SMALL = ["--subjects", "1", "--modalities", "T1w", "FLAIR", "--voxel-size", "3"]


def test_help_explains_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for words in ("OUT_DIR", "--voxel-size", "render_ground_truth", "ICBM152", "--first-subject"):
        assert words in text


def test_console_script_help_is_fast_and_light() -> None:
    code = (
        "import sys; from tumsyn_bids.cli.simulate import build_parser; build_parser(); "
        "print('numpy' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_suffix_choices_match_the_simulator() -> None:
    assert cli._SUFFIXES == SUFFIXES


def test_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    assert cli.main([str(out), *SMALL, "--seed", "3", "--first-subject", "7"]) == EX_OK
    assert "wrote 1 simulated subject" in capsys.readouterr().out
    assert (out / "sub-07/anat/sub-07_T1w.nii.gz").is_file()
    assert (out / "sub-07/anat/sub-07_FLAIR.json").is_file()
    assert (out / "derivatives/simulation/sub-07/anat/sub-07_desc-brain_mask.nii.gz").is_file()
    settings = json.loads((out / "code/tumsyn-simulate.json").read_text())
    assert settings["seed"] == 3 and settings["voxel_size"] == 3.0
    assert settings["modalities"] == ["T1w", "FLAIR"]


def test_runs_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    assert cli.main([str(out), *SMALL, "--runs", "2"]) == EX_OK
    assert "x 2 modalities x 2 runs" in capsys.readouterr().out
    assert (out / "sub-01/anat/sub-01_run-2_FLAIR.json").is_file()
    assert not (out / "sub-01/anat/sub-01_FLAIR.json").exists()
    with pytest.raises(SystemExit):
        cli.main([str(tmp_path / "none"), *SMALL, "--runs", "0"])


def test_refuses_a_non_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    assert cli.main([str(out), *SMALL]) == EX_CANTCREAT
    assert "not empty" in capsys.readouterr().err
    assert cli.main([str(out), *SMALL, "--overwrite"]) == EX_CANTCREAT
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_and_no_derivatives(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    assert cli.main([str(out), *SMALL]) == EX_OK
    assert cli.main([str(out), *SMALL, "--no-derivatives", "--overwrite"]) == EX_OK
    assert not (out / "derivatives").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--voxel-size", "0"],
        ["--subjects", "0"],
        ["--snr", "-1"],
        ["--modalities", "dwi"],
        ["--first-subject", "-2"],
    ],
)
def test_bad_values_exit_with_usage(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path / "x"), *argv])
    assert exc.value.code == EX_USAGE


def test_repeated_modality(tmp_path: Path) -> None:
    assert cli.main([str(tmp_path / "x"), "--modalities", "T1w", "T1w"]) == EX_USAGE
