"""Tests of the names tumsyn-bids gives its derivatives (tumsyn_bids.bids.names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumsyn_bids.bids.names import (
    ENTITY_ORDER,
    DerivativesError,
    bids_uri,
    brain_mask_relpath,
    derivative_relpath,
    desc_label,
    file_uri,
    parse_filename,
    preproc_relpath,
    sidecar_relpath,
    subject_log_dir,
    transform_relpath,
)


def test_parse_filename():
    assert parse_filename("sub-01_ses-mri_acq-mprage_rec-norm_T1w.nii.gz") == (
        {"sub": "01", "ses": "mri", "acq": "mprage", "rec": "norm"},
        "T1w",
        ".nii.gz",
    )
    assert parse_filename("/a/b/sub-1_FLAIR.nii") == ({"sub": "1"}, "FLAIR", ".nii")
    assert parse_filename("sub-1_acq-x_T1w.json") == ({"sub": "1", "acq": "x"}, "T1w", ".json")


NAMING_CASES = [
    # (source, source suffix, target, expected)
    (
        "sub-01/anat/sub-01_T1w.nii.gz",
        "T1w",
        "T2w",
        "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz",
    ),
    (
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii.gz",
        "T1w",
        "T2w",
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_desc-tumsynFromT1w_T2w.nii.gz",
    ),
    (
        "sub-02/ses-pre/anat/sub-02_ses-pre_acq-fast_ce-gad_rec-norm_run-02_T1w.nii.gz",
        "T1w",
        "FLAIR",
        "sub-02/ses-pre/anat/"
        "sub-02_ses-pre_acq-fast_ce-gad_rec-norm_run-02_desc-tumsynFromT1w_FLAIR.nii.gz",
    ),
    (  # uncompressed source, multi-echo magnitude, T2starw
        "sub-03/anat/sub-03_acq-megre_run-1_echo-2_part-mag_T2starw.nii",
        "T2starw",
        "T1w",
        "sub-03/anat/sub-03_acq-megre_run-1_echo-2_part-mag_desc-tumsynFromT2starw_T1w.nii.gz",
    ),
    (  # an existing desc is replaced, not duplicated
        "sub-01/anat/sub-01_acq-mprage_desc-preproc_T1w.nii.gz",
        "T1w",
        "PDw",
        "sub-01/anat/sub-01_acq-mprage_desc-tumsynFromT1w_PDw.nii.gz",
    ),
    (  # entities out of BIDS order in the source come out in order
        "sub-01/anat/sub-01_run-3_acq-hires_T2w.nii.gz",
        "T2w",
        "T1w",
        "sub-01/anat/sub-01_acq-hires_run-3_desc-tumsynFromT2w_T1w.nii.gz",
    ),
    (  # inversion and part (MP2RAGE-like), same target as source
        "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mp2rage_inv-2_part-mag_MP2RAGE.nii.gz",
        "MP2RAGE",
        "T1w",
        "sub-01/ses-mri/anat/"
        "sub-01_ses-mri_acq-mp2rage_inv-2_part-mag_desc-tumsynFromMP2RAGE_T1w.nii.gz",
    ),
    (
        "sub-01/anat/sub-01_T1w.nii.gz",
        "T1w",
        "T1w",
        "sub-01/anat/sub-01_desc-tumsynFromT1w_T1w.nii.gz",
    ),
    (  # the real bids-examples file names
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "T1w",
        "T2w",
        "sub-01/ses-1/anat/sub-01_ses-1_desc-tumsynFromT1w_T2w.nii.gz",
    ),
]


@pytest.mark.parametrize(("source", "source_suffix", "target", "expected"), NAMING_CASES)
def test_derivative_relpath(source: str, source_suffix: str, target: str, expected: str) -> None:
    assert derivative_relpath(source, target, source_suffix) == expected


@pytest.mark.parametrize(("source", "source_suffix", "target", "_"), NAMING_CASES)
def test_derivative_names_are_in_entity_order_with_desc_last(
    source: str, source_suffix: str, target: str, _: str
) -> None:
    out = derivative_relpath(source, target, source_suffix)
    entities, suffix, extension = parse_filename(out)
    ranks = [ENTITY_ORDER.index(key) for key in entities]
    assert ranks == sorted(ranks)
    assert list(entities)[-1] == "desc"
    assert entities["desc"] == f"tumsynFrom{source_suffix}"
    assert (suffix, extension) == (target, ".nii.gz")
    # every source entity other than desc survives unchanged
    source_entities, _, _ = parse_filename(source)
    source_entities.pop("desc", None)
    assert {k: v for k, v in entities.items() if k != "desc"} == source_entities


def test_res_entity_goes_before_desc() -> None:
    out = derivative_relpath("sub-01/anat/sub-01_run-1_T1w.nii.gz", "T2w", "T1w", res="08mm")
    assert out == "sub-01/anat/sub-01_run-1_res-08mm_desc-tumsynFromT1w_T2w.nii.gz"


def test_unknown_entities_keep_their_order_before_desc() -> None:
    out = derivative_relpath(
        "sub-01/anat/sub-01_foo-x_acq-a_bar-y_T1w.nii.gz", "T2w", "T1w"
    )  # foo and bar are not BIDS entities
    assert out == "sub-01/anat/sub-01_acq-a_foo-x_bar-y_desc-tumsynFromT1w_T2w.nii.gz"


def test_entity_order_matches_bids_schema() -> None:
    schema_module = pytest.importorskip("bidsschematools.schema")
    schema = schema_module.load_schema()
    names = [schema.objects.entities[key].name for key in schema.rules.entities]
    known = [name for name in names if name in ENTITY_ORDER]
    assert known == [name for name in ENTITY_ORDER if name in names]
    assert names[-1] == ENTITY_ORDER[-1] == "desc"
    for required in ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part", "res"):
        assert required in ENTITY_ORDER


@pytest.mark.parametrize(
    ("suffix", "label"),
    [("T1w", "tumsynFromT1w"), ("T2starw", "tumsynFromT2starw"), ("T1w-x_y", "tumsynFromT1wxy")],
)
def test_desc_label_is_alphanumeric(suffix: str, label: str) -> None:
    assert desc_label(suffix) == label
    assert label.isalnum()


@pytest.mark.parametrize(
    ("source", "source_suffix", "target", "message"),
    [
        ("sub-01/anat/sub-01_T1w.nii.gz", "T2w", "FLAIR", "source suffix given"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "T1", "T2w", "source suffix given"),
        ("/data/sub-01/anat/sub-01_T1w.nii.gz", "T1w", "T2w", "relative"),
        ("../sub-01/anat/sub-01_T1w.nii.gz", "T1w", "T2w", "relative"),
        ("sub-01/anat/sub-01_T1w.json", "T1w", "T2w", "NIfTI"),
        ("sub-01/anat/acq-x_T1w.nii.gz", "T1w", "T2w", "sub-<label>"),
        ("sub-01/anat/sub-01_mprage_T1w.nii.gz", "T1w", "T2w", "not a BIDS file name"),
        ("sub-01/anat/sub-01_run-1_run-2_T1w.nii.gz", "T1w", "T2w", "not a BIDS file name"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "T1w", "T2w_x", "alphanumeric"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "T1w", "", "alphanumeric"),
    ],
)
def test_derivative_relpath_refuses_bad_input(
    source: str, source_suffix: str, target: str, message: str
) -> None:
    with pytest.raises(DerivativesError, match=message):
        derivative_relpath(source, target, source_suffix)


def test_sidecar_relpath() -> None:
    assert sidecar_relpath("sub-01/anat/sub-01_desc-x_T2w.nii.gz") == (
        "sub-01/anat/sub-01_desc-x_T2w.json"
    )
    assert sidecar_relpath("sub-01/anat/sub-01_T2w.nii") == "sub-01/anat/sub-01_T2w.json"
    with pytest.raises(DerivativesError):
        sidecar_relpath("sub-01/anat/sub-01_T2w.mgz")


def test_bids_uri() -> None:
    assert bids_uri("sub-01/anat/sub-01_T1w.nii.gz") == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert bids_uri(Path("sub-01/anat/x.nii")) == "bids:raw:sub-01/anat/x.nii"
    assert bids_uri("sub-01/anat/x.nii", dataset="other") == "bids:other:sub-01/anat/x.nii"
    with pytest.raises(DerivativesError):
        bids_uri("/abs/sub-01/anat/x.nii")


def test_file_uri_keeps_the_given_path_normalised(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert file_uri(link / "." / "ds") == (tmp_path / "link" / "ds").as_uri()
    assert file_uri(tmp_path / "a" / ".." / "b").startswith("file:///")


def test_subject_log_dir() -> None:
    assert subject_log_dir("/out", "01") == Path("/out/sub-01/log")


def test_preprocessing_derivative_names() -> None:
    """sMRIPrep's names: the source's entities, desc-brain_mask and desc-preproc_<suffix>."""
    source = "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_T1w.nii"
    assert brain_mask_relpath(source) == (
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_desc-brain_mask.nii.gz"
    )
    assert preproc_relpath(source) == (
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_desc-preproc_T1w.nii.gz"
    )
    # a desc the source had is replaced, and stays last
    assert preproc_relpath("sub-01/anat/sub-01_desc-old_rec-norm_FLAIR.nii.gz") == (
        "sub-01/anat/sub-01_rec-norm_desc-preproc_FLAIR.nii.gz"
    )
    assert bids_uri(brain_mask_relpath(source), "") == (
        "bids::sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_desc-brain_mask.nii.gz"
    )
    with pytest.raises(DerivativesError):
        brain_mask_relpath("../sub-01_T1w.nii.gz")


def test_template_space_names():
    src = "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_T1w.nii.gz"
    tpl = "MNI152NLin2009aSym"
    assert derivative_relpath(src, "T2w", "T1w", space=tpl, res="2") == (
        f"sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_space-{tpl}_res-2"
        "_desc-tumsynFromT1w_T2w.nii.gz"
    )
    assert brain_mask_relpath(src, space=tpl, res="1") == (
        f"sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_space-{tpl}_res-1_desc-brain_mask.nii.gz"
    )
    # sMRIPrep's transform names, after the source's entities
    assert transform_relpath(src, "T1w", tpl) == (
        f"sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-2_from-T1w_to-{tpl}_mode-image_xfm.h5"
    )
    assert transform_relpath("sub-02/anat/sub-02_FLAIR.nii.gz", tpl, "FLAIR") == (
        f"sub-02/anat/sub-02_from-{tpl}_to-FLAIR_mode-image_xfm.h5"
    )
    with pytest.raises(DerivativesError, match="space label"):
        transform_relpath(src, "T1w", "MNI:res-2")
    with pytest.raises(DerivativesError, match="space label"):
        derivative_relpath(src, "T2w", "T1w", space="MNI-x")
