"""The sidecar of a template-space output and the transform sink (fast; the end-to-end run is
tests/workflows/test_template_space.py)."""

from __future__ import annotations

import json

from tumsyn_bids.interfaces.sink import FileSink, SpaceSidecar

TPL = "MNI152NLin2009aSym"


def test_space_sidecar_keeps_the_fields_and_adds_the_space(tmp_path):
    native = {
        "Description": "Synthesized ...",
        "SkullStripped": True,
        "Sources": ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"],
        "SpatialReference": "bids:raw:sub-01/anat/sub-01_T1w.nii.gz",
    }
    sources = ["bids::sub-01/anat/sub-01_desc-x_T2w.nii.gz", "bids::sub-01/anat/xfm.h5"]
    res = SpaceSidecar(
        sidecar=json.dumps(native), space=f"{TPL}:res-2", grid_source="derived grid",
        sources=sources, interpolation="linear",
    ).run(cwd=str(tmp_path))  # fmt: skip
    side = json.loads(res.outputs.sidecar)
    assert side["Description"] == native["Description"] and side["SkullStripped"] is True
    assert side["Sources"] == sources
    assert side["SpatialReference"] == f"https://github.com/templateflow/tpl-{TPL}"
    assert side["Resolution"] == {"2": "derived grid"}
    assert side["Resampling"]["Interpolation"] == "linear"
    assert side["Resampling"]["Transform"] == sources[-1]


def test_file_sink_copies_bytes_and_adds_the_ignore_pattern(tmp_path):
    src = tmp_path / "in.h5"
    src.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)))
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bidsignore").write_text("logs/\n")
    rel = f"sub-01/anat/sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5"
    for _ in range(2):  # idempotent
        FileSink(in_file=str(src), output_dir=str(out), relpath=rel,
                 bidsignore=["*_xfm.h5"]).run(cwd=str(tmp_path))  # fmt: skip
    assert (out / rel).read_bytes() == src.read_bytes()
    assert (out / ".bidsignore").read_text() == "logs/\n*_xfm.h5\n"
    assert sorted(p.name for p in (out / rel).parent.iterdir()) == [(out / rel).name]
