"""The official BIDS validator, really run (bids-validator-deno, offline), through our wrapper."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids import validation
from tumsyn_bids.bids.validation import (
    ValidationResult,
    ValidatorNotFound,
    summarize_issues,
    validate_bids,
    validator_command,
    validator_version,
)

README = "A tiny dataset written by the tumsyn-bids tests to exercise the BIDS validator.\n" * 3


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_nifti(path: Path) -> None:
    img = nib.Nifti1Image(np.ones((6, 7, 5), dtype=np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _raw_dataset(root: Path) -> Path:
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "validation test",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["A. Author", "B. Author"],
        },
    )
    (root / "README").write_text(README)
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t30\tM\n")
    _write_nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _write_json(
        root / "sub-01" / "anat" / "sub-01_T1w.json",
        {"RepetitionTime": 2.3, "EchoTime": 0.003, "FlipAngle": 9, "MagneticFieldStrength": 3},
    )
    return root


def _derivative_dataset(root: Path, skull_stripped: bool | None = False) -> Path:
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "validation test derivatives",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "tumsyn-bids", "Version": "0.0"}],
            "License": "CC0",
            "Authors": ["A. Author", "B. Author"],
        },
    )
    (root / "README").write_text(README)
    _write_nifti(root / "sub-01" / "anat" / "sub-01_desc-synth_T2w.nii.gz")
    sidecar = {} if skull_stripped is None else {"SkullStripped": skull_stripped}
    _write_json(root / "sub-01" / "anat" / "sub-01_desc-synth_T2w.json", sidecar)
    return root


def test_validator_is_installed_and_located() -> None:
    cmd = validator_command()
    assert cmd and Path(cmd[0]).exists()
    version = validator_version()
    assert version is not None and int(version.split(".")[0]) >= 2


def test_valid_dataset_passes(tmp_path: Path) -> None:
    result = validate_bids(_raw_dataset(tmp_path / "ds"))
    assert isinstance(result, ValidationResult)
    assert result.ok, result.report()
    assert bool(result)
    assert result.errors == [] and result.warnings == []
    assert result.raw["summary"]["subjects"] == ["01"]


def test_warnings_are_kept_on_request(tmp_path: Path) -> None:
    result = validate_bids(_raw_dataset(tmp_path / "ds"), ignore_warnings=False)
    assert result.ok, result.report()
    # The sidecar leaves out recommended fields such as Manufacturer: a warning, named by field.
    assert any(w.startswith("SIDECAR_KEY_RECOMMENDED (Manufacturer):") for w in result.warnings)
    assert all("/sub-01/anat/sub-01_T1w.nii.gz" in w for w in result.warnings if "SIDECAR" in w)


def test_missing_dataset_description_fails(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "ds")
    (root / "dataset_description.json").unlink()
    result = validate_bids(root)
    assert not result.ok
    assert len(result.errors) == 1
    assert result.errors[0].startswith("MISSING_DATASET_DESCRIPTION:")
    assert "/dataset_description.json" in result.errors[0]
    assert "ERROR MISSING_DATASET_DESCRIPTION" in result.report()


def test_misnamed_file_fails_and_is_named(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "ds")
    anat = root / "sub-01" / "anat"
    (anat / "sub-01_T1w.nii.gz").rename(anat / "sub-01_T1.nii.gz")
    (anat / "sub-01_T1w.json").rename(anat / "sub-01_T1.json")
    result = validate_bids(root)
    assert not result.ok
    (line,) = [e for e in result.errors if e.startswith("NOT_INCLUDED:")]
    assert "not part of BIDS" in line
    assert "/sub-01/anat/sub-01_T1.nii.gz" in line
    assert "\n" not in line


def test_derivative_dataset_is_validated_as_such(tmp_path: Path) -> None:
    ok = validate_bids(_derivative_dataset(tmp_path / "good"))
    assert ok.ok, ok.report()
    assert ok.raw["summary"]["dataProcessed"] is True

    # Derivative images must say whether they are skull-stripped: a derivative-only rule.
    bad = validate_bids(_derivative_dataset(tmp_path / "bad", skull_stripped=None))
    assert not bad.ok
    (line,) = bad.errors
    assert line.startswith("SIDECAR_KEY_REQUIRED (SkullStripped):")
    assert "/sub-01/anat/sub-01_desc-synth_T2w.nii.gz" in line


def test_recursive_reports_nested_derivatives(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "ds")
    _derivative_dataset(root / "derivatives" / "tumsyn", skull_stripped=None)
    assert validate_bids(root).ok  # derivatives/ is not looked into by default
    result = validate_bids(root, recursive=True)
    assert not result.ok
    (line,) = result.errors
    assert "/derivatives/tumsyn/sub-01/anat/sub-01_desc-synth_T2w.nii.gz" in line


def test_runs_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema is bundled: with every proxy pointing nowhere, validation still works."""
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert validate_bids(_raw_dataset(tmp_path / "ds"), timeout=120).ok


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        validate_bids(tmp_path / "nowhere")


def test_validator_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(validation.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValidatorNotFound, match="pip install bids-validator-deno"):
        validator_command()


def test_summary_groups_codes_and_sorts_files() -> None:
    raw = {
        "issues": {
            "issues": [
                {"code": "X", "subCode": "F", "severity": "error", "location": f"/f{i}"}
                for i in (5, 1, 4, 2, 3)
            ]
            + [{"code": "Y", "severity": "warning", "affects": ["/a"], "line": 3}],
            "codeMessages": {"X": "Something\nis wrong.\n", "Y": "Look here."},
        }
    }
    errors, warnings = summarize_issues(raw)
    assert errors == ["X (F): Something is wrong. [/f1, /f2, /f3 and 2 more]"]
    assert warnings == ["Y: Look here. [/a:3]"]
