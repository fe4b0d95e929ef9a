"""The acquisition and the person a prompt describes, read from BIDS metadata and checked.

:class:`Protocol` holds the prompt-relevant part of a sidecar in BIDS units (seconds, degrees,
tesla, mm) and :class:`Demographics` age and sex; both normalise their values on construction.
:func:`protocol_from_sidecar` reads a (merged, inherited) sidecar dictionary. Rules:

* **Plausibility**: every timing value is checked before it is used (:func:`check_timing`:
  per-field ranges, TE < TR, TI < TR), because milliseconds written into a BIDS seconds field
  would otherwise become e.g. ``TE 2980.0`` silently; ranges and sources in
  ``docs/metadata.md``. The TR slot is ``RepetitionTime``, else ``RepetitionTimePreparation``
  (MP2RAGE; :func:`repetition_time_field`).
* **Multi-echo**: if ``EchoTime`` (or any timing field) is a list, the *first* element is used:
  it is the first echo as acquired, the one a single-echo protocol of the same sequence would
  have. BIDS normally splits echoes into ``echo-<n>`` files with scalar times.
* **Variable flip angle**: a 3-D variable-flip-angle TSE (SPACE, CUBE, VISTA) has the flip
  angle ``T2var``, as in the authors' prompts (:func:`is_variable_flip_tse`).

How the values are then written is :mod:`tumsyn_bids.prompts.values`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .values import PromptError, as_number, normalize_sex, normalize_vendor, parse_age

__all__ = [
    "INVERSION_TR_MIN_S",
    "T2VAR",
    "TIMING_LIMITS_S",
    "Demographics",
    "Protocol",
    "check_timing",
    "coerce_voxel_size",
    "is_variable_flip_tse",
    "protocol_from_sidecar",
    "repetition_time_field",
]

#: Plausible values of the BIDS timing fields that feed a prompt, in seconds:
#: ``field -> (lowest, highest, lowest_is_allowed)``. They catch the common sidecar mistake of
#: writing milliseconds where BIDS requires seconds (``"EchoTime": 2.98`` for 2.98 ms), which
#: would otherwise be written as ``TE 2980.0`` silently. Sources and reasons per field are in
#: ``docs/metadata.md``; :func:`check_timing` applies them.
TIMING_LIMITS_S: dict[str, tuple[float, float, bool]] = {
    "RepetitionTime": (0.0, 20.0, False),
    "RepetitionTimePreparation": (0.0, 20.0, False),
    "EchoTime": (0.0, 1.0, True),
    "InversionTime": (0.0, 10.0, True),
}
#: Below this TR (s) ``RepetitionTime`` can only be the excitation TR of a gradient-echo readout
#: (GE and Philips report that TR for inversion-prepared 3-D scans), so TI may exceed it.
INVERSION_TR_MIN_S = 0.1


@dataclass(frozen=True)
class Demographics:
    """Who was scanned: age in years and sex (``'M'``, ``'F'`` or None).

    Values are normalised on construction (:func:`parse_age`, :func:`normalize_sex`), so
    ``Demographics("89+", "female")`` holds ``(89.0, 'F')`` and comparing two instances compares
    what the prompt will say.
    """

    age: float | None = None
    sex: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "age", parse_age(self.age))
        object.__setattr__(self, "sex", normalize_sex(self.sex))


@dataclass(frozen=True)
class Protocol:
    """The acquisition a prompt describes, in BIDS units and names.

    Times are in **seconds** as in BIDS sidecars (converted to milliseconds only when rendered),
    ``flip_angle`` in degrees or a word such as ``"T2var"``, ``magnetic_field_strength`` in tesla,
    ``manufacturer`` as written in the sidecar (normalised only when rendered, so the raw value
    stays inspectable), ``voxel_size`` in millimetres. Values are coerced on construction: numeric
    strings become floats, lists become their first element (multi-echo), ``"n/a"`` becomes None.
    """

    repetition_time: float | None = None
    echo_time: float | None = None
    inversion_time: float | None = None
    flip_angle: float | str | None = None
    magnetic_field_strength: float | None = None
    manufacturer: str | None = None
    voxel_size: tuple[float, float, float] | None = field(default=None)

    def __post_init__(self) -> None:
        for name, key in (
            ("repetition_time", "RepetitionTime"),
            ("echo_time", "EchoTime"),
            ("inversion_time", "InversionTime"),
            ("magnetic_field_strength", "MagneticFieldStrength"),
        ):
            object.__setattr__(self, name, as_number(getattr(self, name), key))
        object.__setattr__(self, "flip_angle", _coerce_flip_angle(self.flip_angle))
        manufacturer = self.manufacturer
        if manufacturer is not None:
            manufacturer = str(manufacturer).strip() or None
        object.__setattr__(self, "manufacturer", manufacturer)
        object.__setattr__(self, "voxel_size", coerce_voxel_size(self.voxel_size))

    @property
    def vendor(self) -> str | None:
        """The normalised vendor word (:func:`normalize_vendor`)."""
        return normalize_vendor(self.manufacturer)


def _coerce_flip_angle(value: Any) -> float | str | None:
    """Numbers (and numeric strings) become float degrees; other words pass through."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return as_number(value, "FlipAngle")
    except PromptError:
        if isinstance(value, str):
            return value.strip()  # e.g. "T2var", as in the authors' published prompts
        raise


def coerce_voxel_size(value: Any) -> tuple[float, float, float] | None:
    """Three floats (mm, x/y/z) from any sequence of numbers, or None; raises
    :class:`PromptError` for anything else."""
    if value is None:
        return None
    try:
        sizes = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise PromptError(f"voxel size must be three numbers, got {value!r}") from None
    if len(sizes) != 3:
        raise PromptError(f"voxel size must have three values (x, y, z), got {value!r}")
    return sizes  # type: ignore[return-value]


#: The authors' word for the flip angle of variable-flip-angle 3-D turbo spin echo.
T2VAR = "T2var"
#: Names of such sequences as vendors and dcm2niix write them (Siemens SPACE: ``*spc_...``,
#: ``%SiemensSeq%_tse_vfl``; GE CUBE; Philips VISTA), matched case-insensitively.
_VARIABLE_FLIP = re.compile(r"space|cube|vista|spc|tse_vfl", re.IGNORECASE)
_SEQUENCE_FIELDS = ("PulseSequenceType", "SequenceName", "PulseSequenceDetails")


def is_variable_flip_tse(metadata: Mapping[str, Any]) -> bool:
    """Whether a sidecar describes a 3-D variable-flip-angle TSE (SPACE, CUBE, VISTA).

    Such scans have no single flip angle: ``FlipAngle`` holds a nominal refocusing angle (e.g.
    120) while the authors' prompts, e.g. for the HCP T2w SPACE, say ``T2var``.
    """
    if str(metadata.get("MRAcquisitionType", "")).strip().upper() != "3D":
        return False
    return any(_VARIABLE_FLIP.search(str(metadata.get(k) or "")) for k in _SEQUENCE_FIELDS)


def _numbers(value: Any, what: str) -> list[float]:
    """Every number of a sidecar timing value (a scalar or a multi-echo list); missing -> []."""
    values = value if isinstance(value, (list, tuple)) else [value]
    numbers = [as_number(v, what) for v in values]
    return [n for n in numbers if n is not None]


def _seconds(value: float) -> str:
    return f"{value:g}"


def _unit_hint(field: str, value: float) -> str:
    """The likely unit mistake behind an implausible ``value`` (seconds) of ``field``."""
    low, high, _ = TIMING_LIMITS_S[field]
    if value >= 1.0 and low <= value / 1000.0 <= high:
        meant = _seconds(value / 1000.0)
        return f"; BIDS wants seconds: was {_seconds(value)} ms meant ({meant})?"
    return "; BIDS wants seconds: check the sidecar's units"


def check_timing(timing: Mapping[str, Any]) -> None:
    """Refuse physically implausible timing values, naming the field and the likely mistake.

    ``timing`` maps BIDS field names (``RepetitionTime``, ``RepetitionTimePreparation``,
    ``EchoTime``, ``InversionTime``; others are ignored) to seconds, a multi-echo list, or
    None/``"n/a"`` (not checked). The checks, in order:

    1. each repetition time lies in :data:`TIMING_LIMITS_S` (finite, positive, below the
       field's plausible maximum);
    2. every echo time is shorter than the repetition time (an echo is read out before the
       next excitation), then lies in its range (finite, >= 0, below the maximum);
    3. the inversion time is shorter than the repetition time when that TR is at least
       :data:`INVERSION_TR_MIN_S` (then it is the time between inversions, Siemens' convention;
       shorter TRs are the readout's excitation TR, which GE and Philips report instead), then
       lies in its range.

    The first failed check is reported. The repetition time of 2. and 3. is
    ``RepetitionTime``, or ``RepetitionTimePreparation`` when ``RepetitionTime`` is absent
    (MP2RAGE). Raises :class:`PromptError` with one line,
    e.g. ``EchoTime 2.98 s is longer than RepetitionTime 2.3 s; BIDS wants seconds: was 2.98
    ms meant (0.00298)?``; the caller prefixes the file name.
    """
    present = [name for name in TIMING_LIMITS_S if name in timing]
    values = {name: _numbers(timing.get(name), name) for name in present}
    tr_names = ("RepetitionTime", "RepetitionTimePreparation")
    for name in [n for n in present if n in tr_names] + [n for n in present if n not in tr_names]:
        if name not in tr_names:  # TE and TI: first against the TR, then their own range
            _check_against_tr(name, values)
        _check_limits(name, values[name])


def _check_limits(name: str, numbers: list[float]) -> None:
    low, high, low_allowed = TIMING_LIMITS_S[name]
    for value in numbers:
        if not math.isfinite(value):
            raise PromptError(f"{name} must be finite, got {value!r}")
        if value < low or (value == low and not low_allowed):
            relation = "negative" if value < 0 else "not positive"
            raise PromptError(f"{name} {_seconds(value)} s is {relation}")
        if value > high:
            raise PromptError(
                f"{name} {_seconds(value)} s is longer than any plausible {name} "
                f"({_seconds(high)} s){_unit_hint(name, value)}"
            )


def _check_against_tr(name: str, values: Mapping[str, list[float]]) -> None:
    tr_name = "RepetitionTime" if values.get("RepetitionTime") else "RepetitionTimePreparation"
    tr_values = values.get(tr_name) or []
    if not tr_values:
        return
    tr = tr_values[0]
    if name == "InversionTime" and tr < INVERSION_TR_MIN_S:
        return
    for value in values.get(name, []):
        if math.isfinite(value) and value >= tr:
            raise PromptError(
                f"{name} {_seconds(value)} s is longer than {tr_name} {_seconds(tr)} s"
                f"{_unit_hint(name, value)}"
            )


def repetition_time_field(metadata: Mapping[str, Any]) -> str | None:
    """The sidecar field that gives the prompt's TR: ``RepetitionTime``, else
    ``RepetitionTimePreparation`` (MP2RAGE and other prepared sequences, whose BIDS sidecars
    carry the preparation-to-preparation time instead); None when neither has a value."""
    for name in ("RepetitionTime", "RepetitionTimePreparation"):
        if _numbers(metadata.get(name), name):
            return name
    return None


def protocol_from_sidecar(
    metadata: Mapping[str, Any],
    voxel_size: Sequence[float] | None = None,
    *,
    check: bool = True,
) -> Protocol:
    """Build a :class:`Protocol` from a BIDS sidecar dictionary (merged, inherited metadata).

    Only the fields the prompt needs are read (``RepetitionTime``, or
    ``RepetitionTimePreparation`` when it is absent, see :func:`repetition_time_field`;
    ``EchoTime``, ``InversionTime``, ``FlipAngle``, ``MagneticFieldStrength``,
    ``Manufacturer``); a missing field is None. The flip angle of a variable-flip-angle 3-D TSE
    is the word ``T2var`` (:func:`is_variable_flip_tse`). The voxel size is not a sidecar field:
    the caller passes the image's voxel size.

    Raises :class:`PromptError` for a non-numeric value, and, unless ``check`` is False, for
    an implausible timing value (:func:`check_timing`: usually milliseconds written where BIDS
    wants seconds). ``check=False`` keeps such values, e.g. to show what a refused sidecar said.
    """
    if check:
        check_timing(metadata)
    flip = T2VAR if is_variable_flip_tse(metadata) else metadata.get("FlipAngle")
    tr_field = repetition_time_field(metadata)
    return Protocol(
        repetition_time=metadata.get(tr_field) if tr_field else None,
        echo_time=metadata.get("EchoTime"),
        inversion_time=metadata.get("InversionTime"),
        flip_angle=flip,
        magnetic_field_strength=metadata.get("MagneticFieldStrength"),
        manufacturer=metadata.get("Manufacturer"),
        voxel_size=None if voxel_size is None else tuple(voxel_size),
    )
