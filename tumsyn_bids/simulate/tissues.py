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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ANCHOR_FIELDS_T",
    "FIELD_RANGE_T",
    "TISSUES",
    "TissueParameters",
    "tissue_parameters",
]

#: Tissue classes, in the order used everywhere (files, arrays, tables).
TISSUES: tuple[str, ...] = ("GM", "WM", "CSF")

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


def tissue_parameters(field_strength: float) -> dict[str, TissueParameters]:
    """The parameters of every tissue (:data:`TISSUES`) at ``field_strength`` tesla.

    Exact literature-based anchors at 1.5 T and 3 T; a power law in between and around
    (module docstring). Raises ``ValueError`` outside :data:`FIELD_RANGE_T`.
    """
    field = float(field_strength)
    lo, hi = FIELD_RANGE_T
    if not (lo <= field <= hi) or math.isnan(field):
        raise ValueError(
            f"magnetic field strength {field_strength!r} T is outside the simulated range "
            f"{lo}-{hi} T"
        )
    for anchor, table in _ANCHORS.items():
        if math.isclose(field, anchor, rel_tol=1e-6):
            return dict(table)
    low, high = (_ANCHORS[b] for b in ANCHOR_FIELDS_T)
    out: dict[str, TissueParameters] = {}
    for tissue in TISSUES:
        a, b = low[tissue], high[tissue]
        out[tissue] = TissueParameters(
            t1=_power_law(a.t1, b.t1, field),
            t2=_power_law(a.t2, b.t2, field),
            t2star=_power_law(a.t2star, b.t2star, field),
            pd=a.pd,
        )
    return out
