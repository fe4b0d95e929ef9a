"""Random acquisition protocols per modality, and their BIDS sidecars.

A model trained on simulated data can only learn how TR, TE, TI and flip angle change contrast
if the data covers them, so every scan draws its parameters from ranges typical of clinical and
research brain protocols (BIDS units: seconds, degrees). Each modality has one or more
*families* (for T1w: MPRAGE and spoiled GRE) with a probability each:

=========  =========================  ==========================================================
suffix     family (probability)       ranges
=========  =========================  ==========================================================
T1w        MPRAGE (0.75)              TR 1.8-2.6, TI 0.8-1.2, TE 0.002-0.004, FA 7-10
T1w        spoiled GRE (0.25)         TR 0.008-0.025, TE 0.0025-0.005, FA 12-30
T2w        2-D TSE (0.65)             TR 2.5-6, TE 0.08-0.14, refocusing FA 120-180
T2w        3-D T2var (0.35)           TR 2.5-3.5, TE 0.4-0.6 (variable refocusing angles)
FLAIR      2-D TSE-IR                 TR 6-10, TI at the CSF null (+-8 %, within 1.8-2.8),
                                      TE 0.08-0.14, refocusing FA 120-180
PDw        2-D TSE                    TR 2.5-4, TE 0.01-0.03, FA 90-160
T2starw    2-D spoiled GRE            TR 0.4-0.9, TE 0.015-0.03, FA 15-25
=========  =========================  ==========================================================

In addition, :data:`DEFAULT_PROTOCOL_PROBABILITY` of the scans use the app's built-in target
protocol of their suffix exactly (``tumsyn_bids/data/default_protocols.json``, which lies inside
these ranges), so that the app's default targets are in the training distribution verbatim.

Times are rounded as scanners report them (TR and TI to 1 ms, TE to 10 microseconds), flip
angles to whole degrees.

**The T2var flip angle in BIDS.** The authors' prompts write the flip angle of variable-flip-
angle 3-D TSE (SPACE, CUBE, VISTA) as the word ``"T2var"``, but BIDS requires ``FlipAngle`` to
be a number. The sidecar therefore holds the nominal refocusing angle, ``"FlipAngle": 120`` (as
dcm2niix writes for SPACE), with ``"MRAcquisitionType": "3D"`` and the vendor's sequence name in
``"PulseSequenceType"`` (``SPACE``, ``CUBE`` or ``VISTA``), all validator-clean standard fields.
:func:`tumsyn_bids.prompts.protocol.protocol_from_sidecar` reads such a sidecar back as
``flip_angle="T2var"``, as it does for real SPACE/CUBE/VISTA scans, so the BIDS App, the
training commands and the ground truth all see the exact protocol that was simulated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from ..prompts.protocol import Protocol
from .signal import SUFFIXES, T2VAR
from .tissues import tissue_parameters

__all__ = [
    "DEFAULT_PROTOCOL_PROBABILITY",
    "VARIABLE_FLIP_SEQUENCES",
    "ScanProtocol",
    "csf_null_inversion_time",
    "default_protocols",
    "sample_protocol",
]

#: Share of scans that use the built-in target protocol of their suffix exactly.
DEFAULT_PROTOCOL_PROBABILITY = 0.2

#: ``PulseSequenceType`` per manufacturer for variable-flip-angle 3-D TSE.
VARIABLE_FLIP_SEQUENCES: Mapping[str, str] = {"Siemens": "SPACE", "GE": "CUBE", "Philips": "VISTA"}

#: The number written to ``FlipAngle`` for a T2var scan (module docstring).
T2VAR_NOMINAL_FLIP = 120


@dataclass(frozen=True)
class ScanProtocol:
    """A drawn protocol: what the signal model uses and what the sidecar says."""

    suffix: str
    protocol: Protocol
    family: str
    sidecar: dict[str, Any]


@lru_cache(maxsize=1)
def default_protocols() -> dict[str, dict[str, Any]]:
    """The app's built-in target protocols per suffix (``data/default_protocols.json``).

    Read here rather than through :func:`tumsyn_bids.plan.default_protocols`, which is the
    same table, because importing :mod:`tumsyn_bids.plan` imports torch, and the simulator
    must run without it.
    """
    text = resources.files("tumsyn_bids.data").joinpath("default_protocols.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def csf_null_inversion_time(repetition_time: float, field_strength: float) -> float:
    """TI (s) that nulls CSF in an inversion recovery of this TR: ``T1 ln(2 / (1 + e^{-TR/T1}))``.

    Tends to the familiar ``ln 2 T1`` for long TR.
    """
    t1 = tissue_parameters(field_strength)["CSF"].t1
    return t1 * math.log(2.0 / (1.0 + math.exp(-repetition_time / t1)))


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _draw(suffix: str, rng: np.random.Generator, field_strength: float) -> tuple[str, dict]:
    """Family name and BIDS timing fields of a random protocol for ``suffix``."""
    if suffix == "T1w":
        if rng.random() < 0.75:
            tr = _uniform(rng, 1.8, 2.6)
            return "MPRAGE", {
                "RepetitionTime": tr,
                "InversionTime": _uniform(rng, 0.8, min(1.2, tr - 0.7)),
                "EchoTime": _uniform(rng, 0.002, 0.004),
                "FlipAngle": _uniform(rng, 7, 10),
            }
        return "SPGR", {
            "RepetitionTime": _uniform(rng, 0.008, 0.025),
            "EchoTime": _uniform(rng, 0.0025, 0.005),
            "FlipAngle": _uniform(rng, 12, 30),
        }
    if suffix == "T2w":
        if rng.random() < 0.65:
            return "TSE", {
                "RepetitionTime": _uniform(rng, 2.5, 6.0),
                "EchoTime": _uniform(rng, 0.08, 0.14),
                "FlipAngle": _uniform(rng, 120, 180),
            }
        return T2VAR, {
            "RepetitionTime": _uniform(rng, 2.5, 3.5),
            "EchoTime": _uniform(rng, 0.4, 0.6),
            "FlipAngle": T2VAR,
        }
    if suffix == "FLAIR":
        tr = _uniform(rng, 6.0, 10.0)
        ti = csf_null_inversion_time(tr, field_strength) * _uniform(rng, 0.92, 1.08)
        return "TSE-IR", {
            "RepetitionTime": tr,
            "InversionTime": min(max(ti, 1.8), 2.8),
            "EchoTime": _uniform(rng, 0.08, 0.14),
            "FlipAngle": _uniform(rng, 120, 180),
        }
    if suffix == "PDw":
        return "TSE", {
            "RepetitionTime": _uniform(rng, 2.5, 4.0),
            "EchoTime": _uniform(rng, 0.01, 0.03),
            "FlipAngle": _uniform(rng, 90, 160),
        }
    if suffix == "T2starw":
        return "GRE", {
            "RepetitionTime": _uniform(rng, 0.4, 0.9),
            "EchoTime": _uniform(rng, 0.015, 0.03),
            "FlipAngle": _uniform(rng, 15, 25),
        }
    raise ValueError(f"cannot simulate {suffix!r} images; choose from {', '.join(SUFFIXES)}")


def _round(timing: Mapping[str, Any]) -> dict[str, Any]:
    """Round as a scanner reports: TR/TI to 1 ms, TE to 10 us, flip angles to whole degrees."""
    out: dict[str, Any] = {}
    for key, value in timing.items():
        if isinstance(value, str):
            out[key] = value
        elif key == "EchoTime":
            out[key] = round(float(value), 5)
        elif key == "FlipAngle":
            out[key] = int(round(float(value)))
        else:
            out[key] = round(float(value), 3)
    return out


_DEFAULT_FAMILY = {
    "T1w": "MPRAGE",
    "T2w": T2VAR,
    "FLAIR": "TSE-IR",
    "PDw": "TSE",
    "T2starw": "GRE",
}

_DIMENSIONS = {"MPRAGE": "3D", "SPGR": "3D", T2VAR: "3D"}


def sample_protocol(
    suffix: str,
    rng: np.random.Generator,
    field_strength: float,
    manufacturer: str,
) -> ScanProtocol:
    """Draw the protocol of one ``suffix`` scan (module docstring) for this scanner."""
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot simulate {suffix!r} images; choose from {', '.join(SUFFIXES)}")
    defaults = default_protocols()
    if suffix in defaults and rng.random() < DEFAULT_PROTOCOL_PROBABILITY:
        family = _DEFAULT_FAMILY[suffix]
        timing = dict(defaults[suffix])
    else:
        family, timing = _draw(suffix, rng, field_strength)
        timing = _round(timing)
    flip = timing.get("FlipAngle")
    protocol = Protocol(
        repetition_time=timing.get("RepetitionTime"),
        echo_time=timing.get("EchoTime"),
        inversion_time=timing.get("InversionTime"),
        flip_angle=flip,
        magnetic_field_strength=field_strength,
        manufacturer=manufacturer,
    )
    sidecar: dict[str, Any] = {
        "Manufacturer": manufacturer,
        "MagneticFieldStrength": field_strength,
        "MRAcquisitionType": _DIMENSIONS.get(family, "2D"),
        "PulseSequenceType": family,
    }
    for key in ("RepetitionTime", "EchoTime", "InversionTime"):
        if timing.get(key) is not None:
            sidecar[key] = timing[key]
    if isinstance(flip, str):  # T2var: a number in BIDS, the sequence name says "variable"
        sidecar["FlipAngle"] = T2VAR_NOMINAL_FLIP
        sidecar["PulseSequenceType"] = VARIABLE_FLIP_SEQUENCES.get(manufacturer, "SPACE")
    else:
        sidecar["FlipAngle"] = flip
    return ScanProtocol(suffix=suffix, protocol=protocol, family=family, sidecar=sidecar)
