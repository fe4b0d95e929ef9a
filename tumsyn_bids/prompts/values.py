"""How single values are written into a TUMSyn prompt: numbers, units and words.

This is the one place that knows how a value is rendered: seconds become milliseconds here
(:func:`seconds_to_ms`), manufacturer spellings are unified here (:func:`normalize_vendor`), sex
and age spellings are unified here (:func:`normalize_sex`, :func:`parse_age`). Other modules
import these functions instead of re-implementing them. Rules, each chosen so that a BIDS
dataset reproduces the authors' published prompts exactly:

* **Missing values** render as ``None`` (:data:`NONE`), the authors' placeholder, slot by slot
  (see :mod:`tumsyn_bids.prompts.template`).
* **Times** (TR, TE, TI) are stored in seconds (BIDS) and written in milliseconds as a Python
  float (``2500.0``, ``2.2``). The product with 1000 is rounded to 10 significant digits, which
  removes binary noise (``0.00201 * 1000 == 2.0100000000000002``) but never a digit that was in
  the sidecar (``0.00298`` s gives ``2.98``, not ``3.0``).
* **Flip angle** is written as a float in degrees (``8.0``). A non-numeric string such as
  ``"T2var"`` (the authors' word for variable-flip-angle 3D TSE, e.g. SPACE) passes through.
* **Field strength** is written as a float in tesla. Values within 5 % of a nominal field
  strength (0.55, 1.0, 1.5, 3.0, 7.0, ...) are snapped to it, because scanners report e.g.
  ``2.89`` for a nominal 3 T Siemens Prisma while the authors' prompts say ``3.0``.
* **Vendor**: known manufacturers are unified (``SIEMENS``/``Siemens Healthineers`` ->
  ``Siemens``, ``GE MEDICAL SYSTEMS``/``GE Healthcare`` -> ``GE``, ``Philips Medical Systems``
  -> ``Philips``, ``Canon``, ``Toshiba``, ``Hitachi``); others are title-cased word by word when
  written in a single case (``UNITED IMAGING`` -> ``United Imaging``), acronyms of up to three
  capitals are kept (``UIH``) and mixed-case words are kept as written.
* **Sex**: ``M``/``male``/``F``/``female`` in any case become ``M``/``F``; anything else
  (``n/a``, ``O``, ``other``, blank) becomes ``None``, the only other value the template knows.
* **Age** in years: whole numbers render without decimals (``16``, also for ``16.0``); other
  values are rounded to one decimal (``16.5``, about a month's resolution, finer than the
  integer ages of the published prompts). ``89+`` (a censored age, as in UK Biobank) is read as
  ``89``; ``n/a`` or text is ``None``.
* **Voxel size** in millimetres, rounded to 7 significant digits: NIfTI stores zooms as float32
  (about 7.2 significant digits), so this drops exactly the representation noise
  (``0.800000011920929`` -> ``0.8``, ``0.79999995`` -> ``0.8``) and keeps genuine values such as
  ``0.7``, ``1.25``, ``0.9375`` or ``0.9765625`` unchanged.

Everything here is a pure function of plain values (no file access, no BIDS, no torch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NONE",
    "PromptError",
    "as_number",
    "format_age",
    "format_field_strength",
    "format_flip_angle",
    "format_ms",
    "format_voxel_size",
    "normalize_sex",
    "normalize_vendor",
    "parse_age",
    "seconds_to_ms",
    "voxel_slots",
]

NONE = "None"
"""The placeholder the authors use for any missing value."""

_NOMINAL_FIELDS_T = (0.064, 0.35, 0.55, 1.0, 1.5, 3.0, 4.0, 5.0, 7.0, 9.4, 10.5, 11.7)
_FIELD_SNAP_TOLERANCE = 0.05  # relative

_TIME_SIGNIFICANT_DIGITS = 10
_VOXEL_SIGNIFICANT_DIGITS = 7


class PromptError(ValueError):
    """A value cannot be written into the TUMSyn template (or a string is not such a prompt)."""


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _round_significant(value: float, digits: int) -> float:
    """Round to ``digits`` significant digits through the decimal representation.

    Going through ``format(..., 'g')`` rounds the *decimal* expansion, so the result is the float
    closest to a short decimal (what a person would have typed), not merely a nearby binary value.
    """
    return float(f"{value:.{digits}g}")


#: Spellings of "unknown" found in sidecars and TSVs.
_MISSING_WORDS = frozenset({"", "n/a", "na", "none", "nan"})


def as_number(value: Any, what: str) -> float | None:
    """Coerce a sidecar value to float; ``None``/``"n/a"``/blank mean missing.

    Lists (multi-echo sidecars) yield their first element (the rule is in
    :mod:`tumsyn_bids.prompts.protocol`). Raises :class:`PromptError` for a non-number.
    """
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    if value is None:
        return None
    if isinstance(value, bool):
        raise PromptError(f"{what} must be a number, got the boolean {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _MISSING_WORDS:
            return None
        try:
            return float(text)
        except ValueError:
            raise PromptError(f"{what} must be a number, got {value!r}") from None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be a number, got {value!r}") from None
    return None if math.isnan(number) else number


def seconds_to_ms(seconds: float | None) -> float | None:
    """Convert a BIDS time (seconds) to the milliseconds TUMSyn prompts use.

    This is the only seconds-to-milliseconds conversion in the package. The product is rounded
    to 10 significant digits: enough to keep every digit a sidecar can sensibly carry, few enough
    to drop the binary noise of the multiplication (``0.00201 * 1000 -> 2.01``).
    """
    if seconds is None:
        return None
    return _round_significant(float(seconds) * 1000.0, _TIME_SIGNIFICANT_DIGITS)


def format_ms(seconds: float | None) -> str:
    """Render a time given in seconds as the prompt's millisecond float (``2.25 -> '2250.0'``)."""
    ms = seconds_to_ms(seconds)
    return NONE if ms is None else repr(ms)


def format_flip_angle(flip_angle: float | str | None) -> str:
    """Render a flip angle: float degrees (``'8.0'``) or a pass-through word (``'T2var'``)."""
    if flip_angle is None:
        return NONE
    if isinstance(flip_angle, str):
        return flip_angle
    return repr(_round_significant(float(flip_angle), _TIME_SIGNIFICANT_DIGITS))


def format_field_strength(tesla: float | None) -> str:
    """Render the field strength in tesla, snapped to a nominal value when within 5 %."""
    if tesla is None:
        return NONE
    value = float(tesla)
    for nominal in _NOMINAL_FIELDS_T:
        if abs(value - nominal) <= _FIELD_SNAP_TOLERANCE * nominal:
            return repr(nominal)
    return repr(_round_significant(value, _TIME_SIGNIFICANT_DIGITS))


def _round_voxel(size: float) -> float:
    return _round_significant(float(size), _VOXEL_SIGNIFICANT_DIGITS)


def voxel_slots(voxel_size: Sequence[float | None] | None) -> list[str]:
    """The three voxel-size slots (mm, x/y/z) as written, ``None`` for a missing value."""
    if voxel_size is None:
        return [NONE, NONE, NONE]
    return [NONE if v is None else repr(_round_voxel(v)) for v in voxel_size]


def format_voxel_size(voxel_size: Sequence[float | None] | None) -> str:
    """Render ``(x, y, z)`` in millimetres, removing only float32 noise (7 significant digits)."""
    return "(" + ", ".join(voxel_slots(voxel_size)) + ")"


# --------------------------------------------------------------------------------------------
# Words: vendor, sex, age
# --------------------------------------------------------------------------------------------

_GE_FIRST_WORDS = frozenset({"ge", "gehc", "gems"})
_VENDOR_KEYWORDS = (
    ("siemens", "Siemens"),
    ("philips", "Philips"),
    ("canon", "Canon"),
    ("toshiba", "Toshiba"),
    ("hitachi", "Hitachi"),
)


def normalize_vendor(manufacturer: str | None) -> str | None:
    """Map a DICOM/BIDS ``Manufacturer`` string to the short vendor word the prompts use.

    Vendors write their own name in many ways across scanner generations (``SIEMENS``,
    ``Siemens Healthineers``, ``GE MEDICAL SYSTEMS``, ``Philips Healthcare``...); the text encoder
    only saw one word per vendor, so all spellings are unified. Unknown manufacturers are kept,
    with single-case words title-cased so that the same vendor gets one spelling.
    """
    if manufacturer is None:
        return None
    text = " ".join(str(manufacturer).split())
    if not text or text.lower() in ("n/a", "none", "unknown"):
        return None
    words = [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]
    if not words:
        return None
    if words[0] in _GE_FIRST_WORDS or "general electric" in " ".join(words):
        return "GE"
    for keyword, canonical in _VENDOR_KEYWORDS:
        if keyword in words:
            return canonical
    return " ".join(_title_word(word) for word in text.split(" "))


def _title_word(word: str) -> str:
    """Title-case one word written in a single case; keep acronyms and deliberate mixed case."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return word
    if word.isupper() and len(letters) <= 3:
        return word
    if word.isupper() or word.islower():
        return word[:1].upper() + word[1:].lower()
    return word


_SEX_WORDS = {"m": "M", "male": "M", "f": "F", "female": "F"}


def normalize_sex(sex: Any) -> str | None:
    """Map ``M``/``male``/``F``/``female`` (any case) to ``M``/``F``; anything else to None.

    The template only knows ``M``, ``F`` and ``None``; BIDS also allows ``O``/``other``, which
    has no rendering here and becomes ``None`` rather than a word the encoder never saw.
    """
    if not isinstance(sex, str):
        return None
    return _SEX_WORDS.get(sex.strip().lower())


def parse_age(age: Any) -> float | None:
    """Read an age in years from a number or a participants.tsv cell.

    ``n/a``, blanks and text give None. A trailing ``+`` marks a censored age (``89+``, used by
    datasets that must not reveal exact ages of the oldest participants); its lower bound is the
    best value the prompt can carry, so ``89+`` reads as 89.
    """
    if age is None or isinstance(age, bool):
        return None
    if isinstance(age, str):
        text = age.strip().rstrip("+").strip()
        try:
            value = float(text)
        except ValueError:
            return None
    else:
        try:
            value = float(age)
        except (TypeError, ValueError):
            return None
    return value if math.isfinite(value) else None


def format_age(age: float | None) -> str:
    """Render an age: whole years without decimals (``16``), others to one decimal (``16.5``)."""
    if age is None:
        return NONE
    rounded = round(float(age), 1)
    if rounded.is_integer():
        return str(int(rounded))
    return repr(rounded)
