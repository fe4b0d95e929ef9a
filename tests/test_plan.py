"""The plan table: targets, protocols, output grid, per-image prompt errors."""

import json

import pytest

from tests.bids.conftest import write_volume
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
    grid = row["output_grid"]
    # the dataset's 21 x 23 x 27 images of 1 x 1.2 x 1.5 mm: exactly twice the voxels
    assert grid.shape == (42, 46, 54)
    assert grid.voxel_size == pytest.approx((0.5, 0.6, 0.75), abs=1e-12)
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


# ------------------------------------------------------------------ explicit target protocols

LIKE_T2W = {"RepetitionTime": 4.5, "EchoTime": 0.09, "FlipAngle": 150}


@pytest.fixture
def with_t2w(tmp_path):
    """make_dataset plus an acquired T2w for sub-01, so that T2w is not 'missing' there."""
    bids = make_dataset(tmp_path / "bids")
    write_volume(bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz", (1.0, 1.0, 1.0))
    return index_anatomical(bids)


def _jobs(plan):
    return sorted(zip(plan["subject"], plan["source_suffix"], plan["target_suffix"], strict=True))


def test_target_like_is_synthesized_where_the_session_has_that_modality(with_t2w):
    # The smallest input that showed it: --target-like a T2w, default --target missing, and a
    # session that has a T2w already: the requested protocol used to be silently dropped.
    like = {"suffix": "T2w", "metadata": LIKE_T2W}
    plan = build_plan(with_t2w, SynthesisRequest(target_like=like))
    sub01 = plan[plan["subject"] == "01"]
    assert sorted(sub01["target_suffix"]) == ["FLAIR", "PDw", "T2starw", "T2w"]
    t2w = sub01[sub01["target_suffix"] == "T2w"].iloc[0]
    assert t2w["target_protocol"] == LIKE_T2W
    assert t2w["target_prompt"].endswith("(4500.0, 90.0, None, 150.0)")


@pytest.mark.parametrize(
    ("targets", "like_suffix", "expected_01"),
    [
        # the template's suffix is the source's own: a same-contrast transfer
        (("missing",), "T1w", ["FLAIR", "PDw", "T1w", "T2starw"]),
        # an explicit target list that does not name it: still synthesized
        (("FLAIR",), "T2w", ["FLAIR", "T2w"]),
    ],
)
def test_target_like_variants(with_t2w, targets, like_suffix, expected_01):
    like = {"suffix": like_suffix, "metadata": LIKE_T2W if like_suffix == "T2w" else {}}
    plan = build_plan(with_t2w, SynthesisRequest(targets=targets, target_like=like))
    assert sorted(plan.loc[plan["subject"] == "01", "target_suffix"]) == expected_01
    assert set(plan.loc[plan["subject"] == "01", "source_suffix"]) == {"T1w"}


def test_unused_target_spec_entry_is_reported(with_t2w, caplog):
    # --target-spec gives protocols for targets; with --target missing a session that has the
    # suffix does not synthesize it, and a warning says so (instead of silence).
    spec = {"T2w": LIKE_T2W}
    with caplog.at_level("WARNING", logger="tumsyn_bids.plan"):
        plan = build_plan(with_t2w, SynthesisRequest(target_specs=spec))
    assert "T2w" not in set(plan.loc[plan["subject"] == "01", "target_suffix"])
    assert "T2w" in set(plan.loc[plan["subject"] == "02", "target_suffix"])
    assert caplog.messages == [
        "--target-spec: the T2w protocol is not used for 1 session(s) (sub-01): they have T2w "
        "and --target missing synthesizes only what a session lacks (add --target T2w to "
        "synthesize it there too)"
    ]


def test_target_spec_for_the_source_suffix_named_in_target_is_a_transfer(index, caplog):
    spec = {"T1w": {"RepetitionTime": 1.9, "EchoTime": 0.0025, "InversionTime": 0.9}}
    with caplog.at_level("WARNING", logger="tumsyn_bids.plan"):
        plan = build_plan(index, SynthesisRequest(targets=("T1w",), target_specs=spec))
    assert _jobs(plan) == [("01", "T1w", "T1w"), ("02", "T1w", "T1w")]
    assert caplog.messages == []
    with caplog.at_level("WARNING", logger="tumsyn_bids.plan"):
        plan = build_plan(index, SynthesisRequest(targets=("T2w",), target_specs=spec))
    assert set(plan["target_suffix"]) == {"T2w"}
    assert caplog.messages == [
        "--target-spec: the T1w protocol is not used for 2 session(s) (sub-01, sub-02 ses-1): "
        "--target (T2w) does not name T1w"
    ]


def test_target_spec_and_target_like_for_one_suffix_are_ambiguous(index):
    request = SynthesisRequest(
        target_specs={"T2w": LIKE_T2W}, target_like={"suffix": "T2w", "metadata": LIKE_T2W}
    )
    with pytest.raises(PlanError, match="both --target-spec and --target-like give a T2w"):
        build_plan(index, request)


def test_a_job_is_finished_only_in_every_requested_space(index, tmp_path):
    """``--output-spaces``: an output on the source grid alone does not finish a job that also
    asks for a template space; with the template-space output it does."""
    out = tmp_path / "out"
    request = SynthesisRequest(targets=("T2w",))
    rel = "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w"
    space = "sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_desc-tumsynFromT1w_T2w"
    for name in (f"{rel}.nii.gz", f"{rel}.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")

    def status(spaces):
        plan = build_plan(index, request, out, output_spaces=spaces)
        return plan.set_index("output").loc[f"{rel}.nii.gz", "status"]

    assert status(()) == "done"
    assert status(("T1w",)) == "done"
    assert status(("MNI152NLin2009aSym:res-2", "T1w")) == "planned"
    for name in (f"{space}.nii.gz", f"{space}.json"):
        (out / name).write_text("x")
    assert status(("MNI152NLin2009aSym:res-2", "T1w")) == "done"
    assert status(("MNI152NLin2009aSym",)) == "planned"  # res-1 is another output
