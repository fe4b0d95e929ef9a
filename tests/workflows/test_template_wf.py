"""The graph ``--output-spaces`` builds (no node runs here; tests/workflows/test_template_space.py
runs it end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workflows.test_citation import _inference, _plan, _with_sources
from tumsyn_bids.config import PreprocConfig, SynthesisRequest
from tumsyn_bids.workflows import init_tumsyn_wf

TPL = "MNI152NLin2009aSym"


def _edges(wf, src_name: str, dst_name: str) -> list[tuple[str, str]]:
    graph = wf._graph
    for u, v, data in graph.edges(data=True):
        if u.name == src_name and v.name == dst_name:
            return list(data["connect"])
    return []


def test_one_registration_per_source_and_one_resampling_per_output(tmp_path: Path):
    plan = _plan()  # two participants, T2w and FLAIR from each T1w
    bids = _with_sources(tmp_path, plan)
    spaces = (f"{TPL}:res-2", "T1w", f"{TPL}:res-1")
    wf = init_tumsyn_wf(plan, bids, tmp_path / "out", tmp_path / "work", _inference(),
                        {o: {} for o in plan["output"]}, SynthesisRequest(targets=("T2w",)),
                        preproc=PreprocConfig(), output_spaces=spaces)  # fmt: skip
    session = wf.get_node("sub_01_wf")
    reg = session.get_node(f"anat_sub_01_T1w_to_{TPL}_wf")
    assert reg is not None and reg.get_node("register").inputs.histogram_matching is True
    # one registration per source (both resolutions share it), transforms with sMRIPrep's names
    regs = [n for n in session._graph.nodes() if n.name.endswith(f"_to_{TPL}_wf")]
    assert len(regs) == 1
    forward = reg.get_node("ds_xfm_forward").inputs.relpath
    assert forward == f"sub-01/anat/sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5"
    assert reg.get_node("ds_xfm_reverse").inputs.relpath.endswith(
        f"from-{TPL}_to-T1w_mode-image_xfm.h5"
    )
    for r in (1, 2):
        sink = reg.get_node(f"ds_mask_{TPL}_res{r}")
        assert (
            sink.inputs.relpath == f"sub-01/anat/sub-01_space-{TPL}_res-{r}_desc-brain_mask.nii.gz"
        )
        assert reg.get_node(f"mask_{TPL}_res{r}").inputs.interpolation == "genericLabel"
    # each job: its checked result on the source grid, resampled once per space, linear
    for job_name in ("T1w_to_T2w_0_wf", "T1w_to_FLAIR_1_wf"):
        job = session.get_node(job_name)
        target = job_name.split("_")[2]
        for r in (1, 2):
            to = job.get_node(f"to_{TPL}_res{r}")
            assert to.inputs.interpolation == "linear" and to.inputs.resolution == r
            assert ("out_file", "in_file") in _edges(job, "postprocess", to.name)
            assert job.get_node(f"ds_{TPL}_res{r}").inputs.relpath == (
                f"sub-01/anat/sub-01_space-{TPL}_res-{r}_desc-tumsynFromT1w_{target}.nii.gz"
            )
        # the transform comes from the source's registration
        links = _edges(session, reg.name, job.name)
        assert ("outputnode.forward_transform", f"to_{TPL}_res1.transform") in links
        assert ("outputnode.forward_transform", f"to_{TPL}_res2.transform") in links
        # the source-grid output is written last
        assert ("out", "wait_for") in _edges(job, "space_outputs", "ds_synthesized")


def test_without_template_spaces_nothing_is_added(tmp_path: Path):
    plan = _plan()
    bids = _with_sources(tmp_path, plan)
    wf = init_tumsyn_wf(plan, bids, tmp_path / "out", tmp_path / "work", _inference(),
                        {o: {} for o in plan["output"]}, SynthesisRequest(targets=("T2w",)),
                        preproc=PreprocConfig(), output_spaces=("T1w",))  # fmt: skip
    names = [n.fullname for n in wf._get_all_nodes()]
    assert not [n for n in names if TPL in n or "space_outputs" in n]


def test_template_spaces_need_preprocessing(tmp_path: Path):
    plan = _plan()
    with pytest.raises(ValueError, match="need preprocessing"):
        init_tumsyn_wf(plan, "/bids", tmp_path / "out", tmp_path / "work", _inference(),
                       {o: {} for o in plan["output"]}, SynthesisRequest(targets=("T2w",)),
                       output_spaces=(TPL,))  # fmt: skip
