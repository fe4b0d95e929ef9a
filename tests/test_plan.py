"""The plan table: targets, protocols, output grid, per-image prompt errors."""

import json

import pytest

from tests.datasets import make_dataset
from tumsyn_bids.bids.layout import index_anatomical
from tumsyn_bids.plan import PlanError, SynthesisRequest, build_plan


@pytest.fixture
def index(tmp_path):
    return index_anatomical(make_dataset(tmp_path / "bids"))


def test_missing_targets_and_output_grid(index):
    plan = build_plan(index, SynthesisRequest(output_resolution=(0.5, 0.6, 0.75)))
    assert sorted(set(plan["target_suffix"])) == ["FLAIR", "PDw", "T2starw", "T2w"]
    row = plan.iloc[0]
    assert row["status"] == "planned"
    assert row["scale_ijk"] == pytest.approx((2.0, 2.0, 2.0), rel=1e-6)
    assert "Voxel size: (0.5, 0.6, 0.75)" in row["target_prompt"]


def test_target_spec_overrides_defaults(index):
    spec = {"T2w": {"RepetitionTime": 4.0, "EchoTime": 0.1, "FlipAngle": 90}}
    plan = build_plan(index, SynthesisRequest(targets=("T2w",), target_specs=spec))
    assert all("(4000.0, 100.0, None, 90.0)" in p for p in plan["target_prompt"])
    with pytest.raises(PlanError, match="unknown target"):
        build_plan(index, SynthesisRequest(targets=("CT",)))


def test_prompt_too_long_is_an_error_for_that_image_only(tmp_path):
    bids = make_dataset(tmp_path / "bids")
    side = bids / "sub-01" / "anat" / "sub-01_T1w.json"
    meta = json.loads(side.read_text())
    meta["Manufacturer"] = "Very Long Vendor Name With Many Words That Overflow Context"
    side.write_text(json.dumps(meta))
    plan = build_plan(index_anatomical(bids), SynthesisRequest(targets=("T2w",)))
    by_subject = dict(zip(plan["subject"], plan["status"], strict=True))
    assert by_subject == {"01": "error", "02": "planned"}
    message = plan.loc[plan["subject"] == "01", "message"].item()
    assert "tokens" in message and "sub-01_T1w.nii.gz" in message


def test_target_like_protocol_passes_the_timing_checks(index, tmp_path):
    sidecar = tmp_path / "like" / "sub-09_T1w.json"
    request = SynthesisRequest(
        target_like={
            "suffix": "T1w",
            "metadata": {"RepetitionTime": 2.3, "EchoTime": 2.98},
            "path": str(sidecar),
        }
    )
    with pytest.raises(PlanError) as caught:
        build_plan(index, request)
    assert str(caught.value) == (
        f"--target-like {sidecar}: EchoTime 2.98 s is longer than RepetitionTime 2.3 s; "
        "BIDS wants seconds: was 2.98 ms meant (0.00298)?"
    )


def test_target_spec_protocol_passes_the_timing_checks(index):
    spec = {"FLAIR": {"RepetitionTime": 9.0, "EchoTime": 0.081, "InversionTime": 2500}}
    with pytest.raises(PlanError) as caught:
        build_plan(index, SynthesisRequest(targets=("FLAIR",), target_specs=spec))
    assert str(caught.value) == (
        "--target-spec entry FLAIR: InversionTime 2500 s is longer than RepetitionTime 9 s; "
        "BIDS wants seconds: was 2500 ms meant (2.5)?"
    )
