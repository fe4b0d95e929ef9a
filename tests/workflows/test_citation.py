"""Tests of the citation boilerplate written to logs/CITATION.md."""

from __future__ import annotations

from pathlib import Path

from tumsyn_bids.workflows.citation import citation_text, write_citation

SETTINGS = {
    "sources": ["T1w"],
    "targets": ["T2w", "FLAIR"],
    "patch_size": [60, 60, 60],
    "overlap": 0.5,
    "precision": "bf16",
    "output_voxel_size": [1.0, 1.0, 1.0],
}


def test_citation_text_mentions_the_references() -> None:
    text = citation_text("0.1.0", SETTINGS)
    assert "T2w and FLAIR images were synthesized" in text
    assert "tumsyn-bids 0.1.0" in text
    for needle in (
        "arXiv:2409.16818",
        "Towards General Text-guided Image Synthesis",
        "10.3389/fninf.2011.00013",
        "5:13",
        "10.21105/joss.01294",
        "4(40):1294",
        "Paszke",
        "NeurIPS",
        "Derivatives",
        "10.5281/zenodo.3686061",
        "60x60x60",
        "1x1x1 mm",
        "bf16",
    ):
        assert needle in text, needle
    assert '- precision: "bf16"' in text
    assert text == citation_text("0.1.0", dict(reversed(SETTINGS.items())))
    assert text.endswith("\n")


def test_citation_text_without_settings() -> None:
    text = citation_text("9.9")
    assert "Anatomical images were synthesized" in text and "## Settings" not in text
    reference = citation_text("9.9", {"reference": True})
    assert "reference inference" in reference


def test_write_citation(tmp_path: Path) -> None:
    (tmp_path / ".bidsignore").write_text("*.html\n")
    path = write_citation(tmp_path, "0.1.0", SETTINGS)
    assert path == tmp_path / "logs" / "CITATION.md"
    assert path.read_text(encoding="utf-8") == citation_text("0.1.0", SETTINGS)
    write_citation(tmp_path, "0.1.0", SETTINGS)
    assert (tmp_path / ".bidsignore").read_text() == "*.html\nlogs/\n"
    import tumsyn_bids

    assert f"tumsyn-bids {tumsyn_bids.__version__}" in write_citation(tmp_path).read_text()
