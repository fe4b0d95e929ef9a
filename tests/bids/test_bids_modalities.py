"""The BIDS suffix -> TUMSyn modality word table (tumsyn_bids.bids.modalities)."""

from __future__ import annotations

import pytest

from tumsyn_bids.bids.modalities import (
    CONFIRMED_WORDS,
    DEFAULT_MODALITIES,
    ModalityTableError,
    indexed_suffixes,
    modality_table,
    resolve_modality,
)


@pytest.mark.parametrize(
    ("suffix", "entities", "word"),
    [
        ("T1w", {}, "T1w"),
        ("T1w", {"acq": "mprage"}, "T1w"),
        ("T1w", {"ce": "gadolinium"}, "T1wCE"),
        ("T2w", {"run": "1"}, "T2w"),
        ("FLAIR", {}, "FLAIR"),
        ("PDw", {}, "PDw"),
        ("T2starw", {}, "T2starw"),
        ("angio", {}, "MRA"),
        ("PD", {}, "PDw"),
        ("T2star", {}, "T2starw"),
        ("T1map", {}, None),
        ("FLASH", {"echo": "1"}, None),
        ("bold", {}, None),
    ],
)
def test_default_table(suffix, entities, word):
    assert resolve_modality(suffix, entities) == word


def test_confirmed_words_are_in_the_table():
    assert CONFIRMED_WORDS <= set(DEFAULT_MODALITIES.values())


def test_default_table_is_read_only():
    with pytest.raises(TypeError):
        DEFAULT_MODALITIES["T1w"] = "x"  # type: ignore[index]


def test_overrides_add_replace_and_remove():
    table = modality_table({"FLAIR": "T2FLAIR", "angio": None, "T1w:acq-mp2rage": "MP2RAGE"})
    assert table["FLAIR"] == "T2FLAIR"
    assert "angio" not in table
    assert resolve_modality("angio", {}, table) is None
    assert resolve_modality("T1w", {"acq": "mp2rage"}, table) == "MP2RAGE"
    assert resolve_modality("T1w", {"acq": "mprage"}, table) == "T1w"
    assert DEFAULT_MODALITIES["FLAIR"] == "FLAIR"  # defaults untouched


def test_removing_ce_selector_falls_back_to_suffix():
    table = modality_table({"T1w:ce": ""})
    assert resolve_modality("T1w", {"ce": "gadolinium"}, table) == "T1w"


def test_most_specific_selector_wins():
    table = {"T1w": "A", "T1w:acq": "B", "T1w:acq-x": "C"}
    assert resolve_modality("T1w", {}, table) == "A"
    assert resolve_modality("T1w", {"acq": "y"}, table) == "B"
    assert resolve_modality("T1w", {"acq": "x"}, table) == "C"


def test_equally_specific_first_listed_wins():
    table = {"T1w:ce": "CE", "T1w:acq": "ACQ"}
    assert resolve_modality("T1w", {"acq": "a", "ce": "b"}, table) == "CE"


def test_selector_without_bare_suffix():
    table = {"T1w:ce": "T1wCE"}
    assert resolve_modality("T1w", {}, table) is None
    assert indexed_suffixes(table) == ["T1w"]


def test_indexed_suffixes_of_default_table():
    assert indexed_suffixes(DEFAULT_MODALITIES) == [
        "T1w",
        "T2w",
        "FLAIR",
        "PDw",
        "T2starw",
        "angio",
        "PD",
        "T2star",
    ]


@pytest.mark.parametrize("selector", ["", "T1w:", "T1w:ce-", "T1w_ce", "T1w:CE", "T1w:ce-a-b"])
def test_bad_selectors(selector):
    with pytest.raises(ModalityTableError, match="selector"):
        modality_table({selector: "X"})


@pytest.mark.parametrize("word", ["T1w; T2w", "T1 (w)", "a,b", " ", 3])
def test_bad_words(word):
    with pytest.raises(ModalityTableError):
        modality_table({"T1w": word})
