"""Protocol sampling: modality ranges, built-in targets in distribution, T2var in BIDS."""

from __future__ import annotations

import numpy as np
import pytest

from tumsyn_bids.prompts.protocol import protocol_from_sidecar
from tumsyn_bids.simulate.protocols import (
    csf_null_inversion_time,
    default_protocols,
    sample_protocol,
)
from tumsyn_bids.simulate.signal import SUFFIXES

#: family -> {BIDS field: (low, high)} in seconds / degrees, as documented in protocols.py.
RANGES = {
    "MPRAGE": {
        "RepetitionTime": (1.8, 2.6),
        "InversionTime": (0.8, 1.2),
        "EchoTime": (0.002, 0.004),
        "FlipAngle": (7, 10),
    },
    "SPGR": {"RepetitionTime": (0.008, 0.025), "EchoTime": (0.0025, 0.005), "FlipAngle": (12, 30)},
    "TSE": {"RepetitionTime": (2.5, 6.0), "EchoTime": (0.01, 0.14), "FlipAngle": (90, 180)},
    "T2var": {"RepetitionTime": (2.5, 3.5), "EchoTime": (0.4, 0.6)},
    "TSE-IR": {
        "RepetitionTime": (6.0, 10.0),
        "InversionTime": (1.8, 2.8),
        "EchoTime": (0.08, 0.14),
        "FlipAngle": (120, 180),
    },
    "GRE": {"RepetitionTime": (0.4, 0.9), "EchoTime": (0.015, 0.03), "FlipAngle": (15, 25)},
}


def _in_ranges(family: str, sidecar: dict) -> None:
    for key, (low, high) in RANGES[family].items():
        assert low - 1e-9 <= sidecar[key] <= high + 1e-9, (family, key, sidecar[key])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_draws_stay_in_their_ranges(suffix: str) -> None:
    rng = np.random.default_rng(1)
    families = set()
    for i in range(150):
        drawn = sample_protocol(suffix, rng, 1.5 if i % 2 else 3.0, "Siemens")
        families.add(drawn.family)
        _in_ranges(drawn.family, drawn.sidecar)
        sidecar = drawn.sidecar
        assert isinstance(sidecar["FlipAngle"], (int, float))
        assert ("InversionTime" in sidecar) == (drawn.family in ("MPRAGE", "TSE-IR"))
        assert protocol_from_sidecar(sidecar) == drawn.protocol
    expected = {"T1w": 2, "T2w": 2}.get(suffix, 1)
    assert len(families) == expected


def test_builtin_targets_are_in_distribution() -> None:
    families = {"T1w": "MPRAGE", "T2w": "T2var", "FLAIR": "TSE-IR", "PDw": "TSE", "T2starw": "GRE"}
    for suffix, metadata in default_protocols().items():
        _in_ranges(families[suffix], metadata)
    # ... and they are drawn verbatim now and then.
    rng = np.random.default_rng(3)
    seen = {sample_protocol("T2w", rng, 3.0, "GE").protocol.echo_time for _ in range(60)}
    assert default_protocols()["T2w"]["EchoTime"] in seen


def test_t2var_is_a_number_in_bids_and_the_word_in_the_protocol() -> None:
    rng = np.random.default_rng(0)
    for manufacturer, name in (("Siemens", "SPACE"), ("GE", "CUBE"), ("Philips", "VISTA")):
        drawn = next(
            d
            for d in (sample_protocol("T2w", rng, 3.0, manufacturer) for _ in range(100))
            if d.family == "T2var"
        )
        assert drawn.sidecar["FlipAngle"] == 120
        assert drawn.sidecar["MRAcquisitionType"] == "3D"
        assert drawn.sidecar["PulseSequenceType"] == name
        assert drawn.protocol.flip_angle == "T2var"
        assert protocol_from_sidecar(drawn.sidecar).flip_angle == "T2var"


def test_flair_inversion_near_the_csf_null() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        drawn = sample_protocol("FLAIR", rng, 3.0, "Philips")
        null = csf_null_inversion_time(drawn.sidecar["RepetitionTime"], 3.0)
        assert abs(drawn.sidecar["InversionTime"] / null - 1) < 0.1


def test_unknown_suffix() -> None:
    with pytest.raises(ValueError, match="cannot simulate"):
        sample_protocol("dwi", np.random.default_rng(0), 3.0, "GE")
