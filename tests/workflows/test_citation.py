"""The methods text: __desc__ per workflow factory, collected from the built graph.

Expected sentences are written by hand from the settings given, not produced by the code.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from tests.conftest import SMALL
from tumsyn_bids.config import InferenceConfig, PreprocConfig, SynthesisRequest
from tumsyn_bids.model.grid import output_grid
from tumsyn_bids.workflows import init_synthesis_wf, init_tumsyn_wf
from tumsyn_bids.workflows.citation import (
    REFERENCES,
    CitationError,
    citation_text,
    cite,
    write_citation,
)
from tumsyn_bids.workflows.literate import LiterateWorkflow, visit_desc

# --------------------------------------------------------------------------------------------
# visit_desc
# --------------------------------------------------------------------------------------------


def _literate(name: str, desc: str | None = None, post: str | None = None) -> LiterateWorkflow:
    wf = LiterateWorkflow(name=name)
    wf.__desc__, wf.__postdesc__ = desc, post
    node = pe.Node(niu.IdentityInterface(fields=["x"]), name="inputnode")
    wf.add_nodes([node])
    return wf


def test_visit_desc_follows_the_graph_and_keeps_each_text_once() -> None:
    top = _literate("top", "Top.", "Top after.")
    first, second = _literate("first", "First step."), _literate("second", "  Second step.\n")
    top.add_nodes([second, first])  # added in reverse; the connection decides the order
    top.connect(first, "inputnode.x", second, "inputnode.x")
    container = pe.Workflow(name="sub_01_wf")  # a plain workflow: visited, has no text
    for i in range(3):  # the same step built for three images: its text once
        container.add_nodes([_literate(f"job_{i}", "Job step.", "")])
    container.add_nodes([_literate("no_text")])
    top.add_nodes([container])
    assert visit_desc(top) == ["Top.", "First step.", "Second step.", "Job step.", "Top after."]


def test_visit_desc_of_a_plain_workflow_without_texts() -> None:
    wf = pe.Workflow(name="plain")
    wf.add_nodes([pe.Node(niu.IdentityInterface(fields=["x"]), name="n")])
    assert visit_desc(wf) == []


# --------------------------------------------------------------------------------------------
# cite
# --------------------------------------------------------------------------------------------


def test_cite_numbers_references_by_first_citation() -> None:
    texts, keys = cite(["A [@nipype], B [@tumsyn; @nipype].", "C [@pybids] and [@tumsyn]."])
    assert texts == ["A [1], B [2, 1].", "C [3] and [2]."]
    assert keys == ["nipype", "tumsyn", "pybids"]
    assert cite(["[0, 1] is no citation."]) == (["[0, 1] is no citation."], [])


@pytest.mark.parametrize("text", ["Uses [@antz].", "Broken [@tumsyn, @nipype].", "[@ tumsyn]"])
def test_cite_refuses_unknown_keys_and_malformed_citations(text: str) -> None:
    with pytest.raises(CitationError):
        cite([text])


# --------------------------------------------------------------------------------------------
# The app's workflows
# --------------------------------------------------------------------------------------------


def _inference(**kw) -> InferenceConfig:
    return InferenceConfig(
        str(SMALL / "synthesis.pth"), str(SMALL / "text_encoder.pt"), text_heads=2, **kw
    )


def _plan(voxel_size=None) -> pd.DataFrame:
    rows = []
    for subject in ("01", "02"):
        for target in ("T2w", "FLAIR"):
            rows.append(
                {
                    "subject": subject,
                    "session": None,
                    "source": f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz",
                    "source_suffix": "T1w",
                    "target_suffix": target,
                    "target_prompt": f"Modality: {target}",
                    "output": f"sub-{subject}/anat/sub-{subject}_desc-tumsynFromT1w_{target}"
                    ".nii.gz",
                    "output_grid": output_grid((9, 9, 9), np.eye(4), voxel_size=voxel_size),
                    "status": "planned",
                }
            )
    return pd.DataFrame(rows)


def _run_wf(tmp_path: Path, inference: InferenceConfig, request: SynthesisRequest, plan=None):
    plan = _plan(request.output_resolution) if plan is None else plan
    sidecars = {output: {} for output in plan["output"]}
    return init_tumsyn_wf(plan, tmp_path, tmp_path / "out", tmp_path / "work", inference, sidecars,
                          request)  # fmt: skip


def test_methods_text_of_a_run(tmp_path: Path) -> None:
    request = SynthesisRequest(targets=("T2w", "FLAIR"), sources=("T1w",))
    inference = _inference(patch_size=(60, 48, 60), overlap=0.25, precision="bf16")
    text = citation_text(_run_wf(tmp_path, inference, request))
    import tumsyn_bids

    methods = text.split("## Methods\n\n")[1].split("## References")[0]
    paragraphs = methods.strip().split("\n\n")
    assert len(paragraphs) == 3  # the run, the synthesis step (four jobs, one text), the caveat
    assert paragraphs[0].startswith(
        f"T2w and FLAIR images were synthesized with tumsyn-bids {tumsyn_bids.__version__}, "
        "a BIDS App [1] implementing TUMSyn"
    )
    assert "The source images were the acquired T1w images of each session." in paragraphs[0]
    assert "queried with PyBIDS [4], the processing was organized as Nipype workflows [5]" in text
    synthesis = paragraphs[1]
    assert "overlapping patches of 60 x 48 x 60 voxels (overlap ratio 0.25)" in synthesis
    assert "in bf16 precision." in synthesis
    assert "Each output is on the voxel grid of its source image." in synthesis
    assert "stored as a BIDS derivative [8] labeled desc-tumsynFrom<source contrast>" in synthesis
    assert "reference" not in synthesis
    assert paragraphs[2] == "Synthesized images are predictions of a model, not acquired data."
    references = text.split("## References\n\n")[1].strip().split("\n")
    assert len(references) == 8
    assert references[0].startswith("1. Gorgolewski K.J., Alfaro-Almagro F.")  # BIDS Apps
    assert references[1].startswith("2. Wang Y., Xiong H., Sun K.")  # TUMSyn
    assert references[6].startswith("7. Paszke A.")  # PyTorch
    assert "[@" not in text and text.endswith("\n") and not text.endswith("\n\n")


def test_methods_text_states_the_output_grid_rule(tmp_path: Path) -> None:
    request = SynthesisRequest(targets=("missing",), output_resolution=(0.7, 0.75, 1.3))
    text = citation_text(_run_wf(tmp_path, _inference(), request))
    assert text.count("Outputs were sampled at exactly 0.7 x 0.75 x 1.3 mm voxels") == 1
    assert "rounded to a whole voxel, with the output field of view centred" in text
    assert (
        "Images of the supported contrasts (T1w, T2w, FLAIR, PDw and T2starw) that each session "
        "lacked were synthesized"
    ) in text
    assert (
        "the first available contrast among T1w, T2w, FLAIR, PDw and T2starw, in that order of "
        "preference"
    ) in text

    reference = citation_text(_run_wf(tmp_path, _inference(reference=True), request))
    assert "following the authors' reference inference procedure exactly" in reference
    assert (
        "towards the requested 0.7 x 0.75 x 1.3 mm voxels with the authors' rounding" in reference
    )
    assert "sampled at exactly" not in reference


def test_methods_text_is_deterministic_and_follows_the_settings(tmp_path: Path) -> None:
    request = SynthesisRequest(targets=("T2w",), output_resolution=(0.8, 0.8, 0.8))
    first = citation_text(_run_wf(tmp_path, _inference(), request))
    assert citation_text(_run_wf(tmp_path / "again", _inference(), request)) == first
    # a rerun that finds one participant's outputs finished builds fewer jobs, same text
    plan = _plan((0.8, 0.8, 0.8))
    plan.loc[plan["subject"] == "01", "status"] = "done"
    assert citation_text(_run_wf(tmp_path, _inference(), request, plan)) == first
    assert citation_text(_run_wf(tmp_path, _inference(overlap=0.5 + 1e-3), request)) != first


def test_a_sub_workflows_text_is_picked_up_in_graph_order(tmp_path: Path) -> None:
    """A step another factory adds (e.g. preprocessing) brings its own text and references."""
    request = SynthesisRequest(targets=("T2w",))
    wf = init_tumsyn_wf(_plan(), tmp_path, tmp_path / "out", tmp_path / "work", _inference(),
                        {o: {} for o in _plan()["output"]}, request)  # fmt: skip
    sub = wf.get_node("sub_01_wf")
    jobs = [sub.get_node(name) for name in ("T1w_to_T2w_0_wf", "T1w_to_FLAIR_1_wf")]
    prep = _literate("preproc_wf", "Each source image was prepared [@nibabel; @nilearn-x].")
    sub.add_nodes([prep])  # added after the jobs, but it feeds them: its text comes first
    for job in jobs:
        sub.connect(prep, "inputnode.x", job, "inputnode.source_file")
    with pytest.raises(CitationError, match="nilearn-x"):
        citation_text(wf)
    prep.__desc__ = "Each source image was prepared with NiBabel [@nibabel]."
    paragraphs = citation_text(wf).split("## Methods\n\n")[1].split("\n\n")
    assert paragraphs[1] == "Each source image was prepared with NiBabel [6]."
    assert paragraphs[2].startswith("For every source image, a text prompt")


def test_embedded_synthesis_wf_has_its_own_text() -> None:
    wf = init_synthesis_wf(_inference(patch_size=(20, 20, 20)), output_resolution=(0.5, 0.5, 0.5))
    (text,) = visit_desc(wf)
    assert "patches of 20 x 20 x 20 voxels" in text
    assert "sampled at exactly 0.5 x 0.5 x 0.5 mm voxels" in text
    assert "BIDS derivative" not in text  # no sink, nothing stored


def test_write_citation(tmp_path: Path) -> None:
    (tmp_path / ".bidsignore").write_text("*.html\n")
    wf = _run_wf(tmp_path, _inference(), SynthesisRequest(targets=("T2w",)))
    path = write_citation(tmp_path, wf)
    assert path == tmp_path / "logs" / "CITATION.md"
    assert path.read_text(encoding="utf-8") == citation_text(wf)
    write_citation(tmp_path, wf)
    assert (tmp_path / ".bidsignore").read_text() == "*.html\nlogs/\n"


def test_every_reference_is_cited_by_the_app(tmp_path: Path) -> None:
    """No dead entries: each reference is cited by some text the app's factories write."""
    request = SynthesisRequest(targets=("T2w",))
    plan = _plan()
    wf = init_tumsyn_wf(plan, "/bids", "/out", "/work", _inference(),
                        {o: {} for o in plan["output"]}, request)  # fmt: skip
    _, keys = cite(visit_desc(wf))
    assert sorted(keys) == sorted(
        set(REFERENCES) - {"deepbet", "n4", "ants", "syn", "templateflow", "mni2009"}
    )
    # with preprocessing (the app's default) its texts cite the rest
    bids = _with_sources(tmp_path, plan)  # the factory reads each source's axis order
    sidecars = {o: {} for o in plan["output"]}
    wf = init_tumsyn_wf(plan, bids, "/out", "/work", _inference(), sidecars, request,
                        preproc=PreprocConfig())  # fmt: skip
    _, keys = cite(visit_desc(wf))
    template_keys = {"syn", "templateflow", "mni2009"}
    assert sorted(keys) == sorted(set(REFERENCES) - template_keys)
    # and with a template output space, the registration's paragraph cites the template's
    wf = init_tumsyn_wf(plan, bids, "/out", "/work", _inference(), sidecars, request,
                        preproc=PreprocConfig(),
                        output_spaces=("MNI152NLin2009aSym:res-2", "T1w"))  # fmt: skip
    texts = visit_desc(wf)
    _, keys = cite(texts)
    assert sorted(keys) == sorted(REFERENCES)
    (registration,) = [t for t in texts if "registered to the MNI152NLin2009aSym" in t]
    assert "resampled into the template (res-2) once" in registration
    assert "SyN [@syn]" in registration and "1.4826" not in registration


def _with_sources(tmp_path: Path, plan: pd.DataFrame, codes: str = "RAS") -> Path:
    """Source images for ``plan`` under ``tmp_path/bids`` (the factory reads their headers)."""
    bids = tmp_path / "bids"
    for source in plan["source"]:
        (bids / source).parent.mkdir(parents=True, exist_ok=True)
        affine = np.diag([1.0 if c in "RAS" else -1.0 for c in codes] + [1.0])
        nib.save(nib.Nifti1Image(np.zeros((9, 9, 9), np.float32), affine), bids / source)
    return bids


def test_methods_text_with_preprocessing(tmp_path: Path) -> None:
    """Preprocessing brings its paragraph, between the run's and the synthesis step's; the
    synthesis text says what the network read, the foreground patches and the masking."""
    request = SynthesisRequest(targets=("T2w",), output_resolution=(0.5, 0.5, 0.5))
    plan = _plan((0.5, 0.5, 0.5))
    bids = _with_sources(tmp_path, plan)
    sidecars = {o: {} for o in plan["output"]}
    wf = init_tumsyn_wf(plan, bids, tmp_path / "out", tmp_path / "work", _inference(), sidecars,
                        request, preproc=PreprocConfig())  # fmt: skip
    paragraphs = citation_text(wf).split("## Methods\n\n")[1].split("## References")[0]
    paragraphs = paragraphs.strip().split("\n\n")
    assert len(paragraphs) == 4
    assert paragraphs[1].startswith("Each T1w source image was reoriented to the RAS+ axis order")
    assert "A brain mask was computed with deepbet" in paragraphs[1]
    assert "Intensity non-uniformity was corrected with N4 [" in paragraphs[1]
    synthesis = paragraphs[2]
    assert "The network read the preprocessed source image (RAS+ voxel order" in synthesis
    assert "stored voxel order (not reoriented)" not in synthesis
    assert "Patches without any brain-mask voxel" in synthesis and "were not computed" in synthesis
    assert "sampled onto the output grid by nearest neighbour were set to zero" in synthesis
    assert "by the inverse axis permutation, without interpolation" in synthesis

    # reference mode keeps the authors' averaging: no foreground patches; --no-mask-output: no
    # masking sentence either
    wf = init_tumsyn_wf(plan, bids, tmp_path / "out", tmp_path / "work",
                        _inference(reference=True), {o: {} for o in plan["output"]}, request,
                        preproc=PreprocConfig(mask_output=False))  # fmt: skip
    text = citation_text(wf)
    assert "brain-mask voxel" not in text
    assert "by nearest neighbour were set to zero" not in text
