"""Relaxation times and proton density of grey matter, white matter and CSF.

The simulator needs one number per tissue, field strength and property. The values below are
rounded, representative in-vivo values chosen from within the ranges that the cited studies
report (the studies disagree by 10-30 % among themselves, mostly through method and region);
they are not copied from any single table:

* **T1 and T2 of GM and WM at 1.5 T and 3 T**: Stanisz G.J. et al., "T1, T2 relaxation and
  magnetization transfer in tissue at 3T", Magn Reson Med 54:507-512 (2005); Wansapura J.P. et
  al., "NMR relaxation times in the human brain at 3.0 tesla", J Magn Reson Imaging 9:531-538
  (1999); Gelman N. et al., "MR imaging of human brain at 3.0 T: preliminary report on
  transverse relaxation rates and relation to estimated iron content", Radiology 210:759-767
  (1999), for the shortening of T2 and T2* with field strength.
* **T2* of GM and WM at 3 T**: Wansapura et al. (1999). At 1.5 T we do not take a second
  literature value but *derive* T2* from T2 and the reversible part R2' = R2* - R2, which grows
  in proportion to the field (susceptibility dephasing): R2'(1.5 T) = R2'(3 T) / 2. This keeps
  the three relaxation times of a tissue mutually consistent.
* **CSF**: T1 about 4.3 s, nearly independent of field (e.g. Rooney W.D. et al., "Magnetic field
  and tissue dependencies of human brain longitudinal 1H2O relaxation in vivo", Magn Reson Med
  57:308-318, 2007); T2 of the order of 1.5-2 s. The T2* of CSF in vivo is limited by flow and
  field inhomogeneity rather than by the fluid, so it is a coarse value; all that matters for
  the contrast is that it is much longer than in tissue (CSF is bright on T2*-weighted images).
* **Proton density** (water content relative to pure water): WM about 0.70, GM about 0.80, CSF
  1.0 (e.g. Whittall K.P. et al., Magn Reson Med 37:34-43, 1997; Neeb H. et al., NeuroImage
  31:1156-1168, 2006). PD does not depend on the field.

Between and beyond the two anchor fields (1.5 T and 3 T) each relaxation time is interpolated
linearly in log(time) against log(field), i.e. as a power law, the usual empirical description
of T1 dispersion. Beyond the anchors this is an extrapolation and only a rough guide; fields
outside :data:`FIELD_RANGE_T` are refused.

Tissues of the head outside the brain (:data:`HEAD_TISSUES`, used by :mod:`.head` for
``tumsyn-simulate --with-head``), chosen the same way (rounded, within the cited ranges):

* **Subcutaneous fat and skeletal muscle** (muscle also stands in for skin and the galea), T1
  and T2 at 1.5 T and 3 T: Gold G.E. et al., "Musculoskeletal MRI at 3.0 T: relaxation times
  and image contrast", AJR Am J Roentgenol 183:343-351 (2004); here fat has T1 0.34 / 0.38 s and
  T2 0.06 / 0.07 s, muscle T1 1.0 / 1.4 s and T2 0.045 / 0.05 s at 1.5 / 3 T. Fat is modelled as one
  resonance: no chemical shift, no J-coupling (so TSE fat is darker than on real scanners).
  Proton densities from tissue composition: muscle is about 75 % water, fat's proton density
  is close to water's (0.9 here).
* **Cortical bone**: its water is 10-25 % of the volume (Techawiboonwong A. et al., "Cortical
  bone water: in vivo quantification with ultrashort echo-time MR imaging", Radiology
  248:824-833, 2008), with T2* of a few tenths of a millisecond (Reichert I.L.H. et al.,
  "Magnetic resonance imaging of cortical bone with ultrashort TE pulse sequences", Magn Reson
  Imaging 23:611-618, 2005). Any values in those ranges make bone black at the echo times of
  clinical sequences (TE >= 1 ms), which is all that matters here.
* **T2*** of fat and muscle is not taken from the literature but derived like the 1.5 T brain
  values: ``1/T2* = 1/T2 + R2'`` with R2' = 5/s at 3 T (about the brain tissues' value) and
  half that at 1.5 T. Extra-axial CSF (between the brain and the skull) is CSF.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ANCHOR_FIELDS_T",
    "FIELD_RANGE_T",
    "HEAD_TISSUES",
    "TISSUES",
    "TissueParameters",
    "head_tissue_parameters",
    "tissue_parameters",
]

#: Tissue classes, in the order used everywhere (files, arrays, tables).
TISSUES: tuple[str, ...] = ("GM", "WM", "CSF")

#: Tissues of the head around the brain (:mod:`.head`); EXTCSF is CSF outside the brain mask.
HEAD_TISSUES: tuple[str, ...] = ("EXTCSF", "BONE", "FAT", "MUSCLE")

#: Fields with literature values; others are interpolated (power law).
ANCHOR_FIELDS_T: tuple[float, float] = (1.5, 3.0)

#: Fields we accept. Outside, the power-law extrapolation would be fiction.
FIELD_RANGE_T: tuple[float, float] = (0.2, 11.7)


@dataclass(frozen=True)
class TissueParameters:
    """MR properties of one tissue at one field: times in seconds, PD relative to water."""

    t1: float
    t2: float
    t2star: float
    pd: float


def _t2star_from_r2prime(t2: float, t2_ref: float, t2star_ref: float, factor: float) -> float:
    """T2* at another field from its T2 and the reference field's R2', scaled by ``factor``."""
    r2prime = 1.0 / t2star_ref - 1.0 / t2_ref
    return 1.0 / (1.0 / t2 + factor * r2prime)


# 3 T anchors (seconds).
_GM_3T = TissueParameters(t1=1.45, t2=0.095, t2star=0.066, pd=0.80)
_WM_3T = TissueParameters(t1=0.90, t2=0.075, t2star=0.053, pd=0.70)
_CSF_3T = TissueParameters(t1=4.3, t2=1.5, t2star=0.3, pd=1.0)

# 1.5 T anchors: T1/T2 from the literature ranges, T2* derived (module docstring).
_GM_15T = TissueParameters(
    t1=1.12, t2=0.100, t2star=_t2star_from_r2prime(0.100, _GM_3T.t2, _GM_3T.t2star, 0.5), pd=0.80
)
_WM_15T = TissueParameters(
    t1=0.80, t2=0.080, t2star=_t2star_from_r2prime(0.080, _WM_3T.t2, _WM_3T.t2star, 0.5), pd=0.70
)
_CSF_15T = TissueParameters(t1=4.2, t2=1.8, t2star=0.5, pd=1.0)

_ANCHORS: Mapping[float, Mapping[str, TissueParameters]] = MappingProxyType(
    {
        1.5: MappingProxyType({"GM": _GM_15T, "WM": _WM_15T, "CSF": _CSF_15T}),
        3.0: MappingProxyType({"GM": _GM_3T, "WM": _WM_3T, "CSF": _CSF_3T}),
    }
)


def _power_law(value_lo: float, value_hi: float, field: float) -> float:
    """Interpolate between the anchor values as ``value ∝ field**k`` (linear in log-log)."""
    b_lo, b_hi = ANCHOR_FIELDS_T
    k = math.log(value_hi / value_lo) / math.log(b_hi / b_lo)
    return value_lo * (field / b_lo) ** k


def _at_field(
    anchors: Mapping[float, Mapping[str, TissueParameters]],
    tissues: tuple[str, ...],
    field_strength: float,
) -> dict[str, TissueParameters]:
    field = float(field_strength)
    lo, hi = FIELD_RANGE_T
    if not (lo <= field <= hi) or math.isnan(field):
        raise ValueError(
            f"magnetic field strength {field_strength!r} T is outside the simulated range "
            f"{lo}-{hi} T"
        )
    for anchor, table in anchors.items():
        if math.isclose(field, anchor, rel_tol=1e-6):
            return dict(table)
    low, high = (anchors[b] for b in ANCHOR_FIELDS_T)
    out: dict[str, TissueParameters] = {}
    for tissue in tissues:
        a, b = low[tissue], high[tissue]
        out[tissue] = TissueParameters(
            t1=_power_law(a.t1, b.t1, field),
            t2=_power_law(a.t2, b.t2, field),
            t2star=_power_law(a.t2star, b.t2star, field),
            pd=a.pd,
        )
    return out


def tissue_parameters(field_strength: float) -> dict[str, TissueParameters]:
    """The parameters of every tissue (:data:`TISSUES`) at ``field_strength`` tesla.

    Exact literature-based anchors at 1.5 T and 3 T; a power law in between and around
    (module docstring). Raises ``ValueError`` outside :data:`FIELD_RANGE_T`.
    """
    return _at_field(_ANCHORS, TISSUES, field_strength)


def _head_tissue(t1: float, t2: float, pd: float, r2prime: float) -> TissueParameters:
    return TissueParameters(t1=t1, t2=t2, t2star=1.0 / (1.0 / t2 + r2prime), pd=pd)


# Head anchors (seconds; module docstring). Bone's T2 and T2* are sub-millisecond.
_HEAD_ANCHORS: Mapping[float, Mapping[str, TissueParameters]] = MappingProxyType(
    {
        1.5: MappingProxyType(
            {
                "EXTCSF": _CSF_15T,
                "BONE": TissueParameters(t1=0.25, t2=0.001, t2star=0.0005, pd=0.15),
                "FAT": _head_tissue(0.34, 0.060, 0.90, 2.5),
                "MUSCLE": _head_tissue(1.00, 0.045, 0.75, 2.5),
            }
        ),
        3.0: MappingProxyType(
            {
                "EXTCSF": _CSF_3T,
                "BONE": TissueParameters(t1=0.25, t2=0.001, t2star=0.0004, pd=0.15),
                "FAT": _head_tissue(0.38, 0.070, 0.90, 5.0),
                "MUSCLE": _head_tissue(1.40, 0.050, 0.75, 5.0),
            }
        ),
    }
)


def head_tissue_parameters(field_strength: float) -> dict[str, TissueParameters]:
    """The parameters of the head tissues (:data:`HEAD_TISSUES`) at ``field_strength`` tesla.

    Same anchors-and-power-law scheme as :func:`tissue_parameters`; raises ``ValueError``
    outside :data:`FIELD_RANGE_T`.
    """
    return _at_field(_HEAD_ANCHORS, HEAD_TISSUES, field_strength)
