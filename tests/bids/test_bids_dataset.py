"""Tests of the output folder as a derivative dataset (tumsyn_bids.bids.dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tumsyn_bids.bids.dataset import (
    dataset_description,
    detect_container,
    existing_version,
    update_bidsignore,
    write_dataset_description,
)
from tumsyn_bids.bids.names import DerivativesError

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bids-examples"


def test_dataset_description_content() -> None:
    raw = EXAMPLES / "ds000117"
    desc = dataset_description(raw, "1.2.3")
    uri = raw.resolve().as_uri()
    assert desc["Name"] == "tumsyn-bids: TUMSyn synthesized images"
    assert desc["BIDSVersion"] == "1.10.0"
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"] == [
        {
            "Name": "tumsyn-bids",
            "Version": "1.2.3",
            "CodeURL": "https://github.com/tumsyn-bids/tumsyn-bids",
        }
    ]
    raw_doi = json.loads((raw / "dataset_description.json").read_text())["DatasetDOI"]
    assert desc["SourceDatasets"] == [{"URL": uri, "DOI": raw_doi}]
    assert desc["DatasetLinks"] == {"raw": uri}
    assert uri.startswith("file:///")


def test_dataset_description_copies_version_and_container(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(
        json.dumps(
            {"Name": "x", "BIDSVersion": "1.8.0", "DatasetDOI": " doi:10.1/x ", "Version": 2}
        )
    )
    desc = dataset_description(raw / "." / "", "0.1.0", {"Type": "docker", "Tag": "t:1"})
    assert desc["SourceDatasets"] == [{"URL": raw.as_uri(), "DOI": "doi:10.1/x", "Version": "2"}]
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "t:1"}
    with pytest.raises(DerivativesError, match="Type"):
        dataset_description(raw, "0.1.0", {"Tag": "x"})


def test_dataset_description_without_raw_description(tmp_path: Path) -> None:
    desc = dataset_description(tmp_path, "0.1.0")
    assert desc["SourceDatasets"] == [{"URL": tmp_path.as_uri()}]


def test_write_dataset_description_is_deterministic_and_rewrites_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    raw = EXAMPLES / "7t_trt"
    path = write_dataset_description(out, raw, "0.1.0")
    first = path.read_bytes()
    assert first.endswith(b"}\n")
    assert write_dataset_description(out, raw, "0.1.0").read_bytes() == first
    assert existing_version(out) == "0.1.0"
    # an older tumsyn-bids description (even one with extra keys) is replaced, not merged
    data = json.loads(first)
    data["GeneratedBy"][0]["Version"] = "0.0.1"
    data["Stale"] = True
    path.write_text(json.dumps(data))
    assert existing_version(out) == "0.0.1"
    assert write_dataset_description(out, raw, "0.1.0").read_bytes() == first
    assert not list(out.glob(".*tmp*"))


def test_foreign_dataset_description_is_not_overwritten(tmp_path: Path) -> None:
    foreign = {"Name": "fmriprep", "DatasetType": "derivative", "GeneratedBy": [{"Name": "x"}]}
    (tmp_path / "dataset_description.json").write_text(json.dumps(foreign))
    with pytest.raises(DerivativesError, match="not written by tumsyn-bids"):
        write_dataset_description(tmp_path, EXAMPLES / "ds114", "0.1.0")
    assert json.loads((tmp_path / "dataset_description.json").read_text()) == foreign
    (tmp_path / "dataset_description.json").write_text("{broken")
    with pytest.raises(DerivativesError):
        existing_version(tmp_path)
    assert existing_version(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("env", "dockerenv", "expected"),
    [
        ({}, False, None),
        ({}, True, {"Type": "docker"}),
        (
            {"TUMSYN_CONTAINER_TYPE": "docker", "TUMSYN_CONTAINER_TAG": "tumsyn/t:0.1"},
            True,
            {"Type": "docker", "Tag": "tumsyn/t:0.1"},
        ),
        ({"TUMSYN_CONTAINER_TYPE": "Singularity"}, False, {"Type": "singularity"}),
        (
            {"SINGULARITY_NAME": "tumsyn_0.1.sif"},
            True,
            {"Type": "singularity", "Tag": "tumsyn_0.1.sif"},
        ),
        ({"APPTAINER_NAME": "t.sif"}, False, {"Type": "singularity", "Tag": "t.sif"}),
        (
            {
                "TUMSYN_CONTAINER_TYPE": "apptainer",
                "APPTAINER_NAME": "t.sif",
                "TUMSYN_CONTAINER_TAG": "ghcr.io/x:1",
            },
            False,
            {"Type": "singularity", "Tag": "ghcr.io/x:1"},
        ),
    ],
)
def test_detect_container(
    tmp_path: Path, env: dict[str, str], dockerenv: bool, expected: dict | None
) -> None:
    marker = tmp_path / ".dockerenv"
    if dockerenv:
        marker.touch()
    assert detect_container(env, dockerenv=marker) == expected


def test_update_bidsignore_adds_missing_lines_once(tmp_path: Path) -> None:
    path = update_bidsignore(tmp_path, [])
    assert path.read_text() == ""
    path.write_text("*.html\nlogs/\n")
    update_bidsignore(tmp_path, ["logs/", "figures/"])
    update_bidsignore(tmp_path, ["figures/"])
    assert path.read_text() == "*.html\nlogs/\nfigures/\n"
