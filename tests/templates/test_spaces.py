"""``--output-spaces`` values: the source grid and TemplateFlow templates with a resolution."""

from __future__ import annotations

import pytest

from tumsyn_bids.templates.spaces import OutputSpace, parse_output_spaces, space_metadata


def test_parse_the_nipreps_spelling():
    spaces = parse_output_spaces(
        ["MNI152NLin2009aSym:res-2", "T1w", "MNI152NLin2009cAsym", "MNI152NLin2009aSym:res-2"]
    )
    assert spaces == [
        OutputSpace("MNI152NLin2009aSym", 2),
        OutputSpace("T1w"),
        OutputSpace("MNI152NLin2009cAsym", 1),  # no :res- means res-1
    ]
    assert [str(s) for s in spaces] == [
        "MNI152NLin2009aSym:res-2",
        "T1w",
        "MNI152NLin2009cAsym:res-1",
    ]
    assert spaces[0].entities == {"space": "MNI152NLin2009aSym", "res": "2"}
    assert spaces[1].entities == {} and not spaces[1].is_template


@pytest.mark.parametrize(
    "value,match",
    [
        ("MNI152NLin2009aSym:res2", "cannot read"),
        ("MNI-152", "cannot read"),
        ("T1w:res-2", "source grid"),
        ("MNI152NLin2009aSym:res-0", "1 or more"),
    ],
)
def test_bad_values_are_refused_in_one_line(value, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_output_spaces([value])
    assert "\n" not in str(err.value) and value in str(err.value)


def test_sidecar_fields_describe_space_and_resolution():
    meta = space_metadata(OutputSpace("MNI152NLin2009aSym", 2), "2 mm grid derived from res-1")
    assert meta["SpatialReference"] == "https://github.com/templateflow/tpl-MNI152NLin2009aSym"
    assert meta["Resolution"] == {"2": "2 mm grid derived from res-1"}
    assert space_metadata(OutputSpace("T1w")) == {}
