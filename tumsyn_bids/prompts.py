"""TUMSyn text prompts: the template, the value normalisation behind it, and a validator.

TUMSyn conditions its synthesis network on a one-line English description of the wanted image.
The published code reads that line verbatim, so the app, the training code and ``tumsyn-synth``
must all write it byte for byte the same way. Everything here is therefore a *pure* function of
plain values (no file access, no BIDS, no torch), and this module is the single place that knows
how a value is rendered into the prompt: seconds become milliseconds here
(:func:`seconds_to_ms`), manufacturer spellings are unified here (:func:`normalize_vendor`),
sex and age spellings are unified here (:func:`normalize_sex`, :func:`parse_age`). Other modules
import these functions instead of re-implementing them.

The template (note the two spaces after ``FA(degree):``, as in the authors' examples)::

    Age: {age}; Gender: {sex}; Scanner: {field} {vendor}; Modality: {modality};
    Voxel size: ({x}, {y}, {z}); Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):
    ({tr}, {te}, {ti}, {fa})

(one line in reality). Rendering rules, each chosen so that a BIDS dataset reproduces the
authors' published prompts exactly:

* **Missing values** render as ``None`` slot by slot, following the authors' README ("use None as
  the placeholder"). ``Scanner:`` has two slots, so a missing field strength gives
  ``None Siemens``, a missing vendor ``3.0 None`` and both missing ``None None``; the voxel size
  likewise gives ``(None, None, None)``. Keeping every slot keeps the prompt's shape fixed,
  which is what the text encoder saw in training, and keeps :func:`parse_prompt` unambiguous.
* **Times** (TR, TE, TI) are stored in seconds (BIDS) and written in milliseconds as a Python
  float (``2500.0``, ``2.2``). The product with 1000 is rounded to 10 significant digits, which
  removes binary noise (``0.00201 * 1000 == 2.0100000000000002``) but never a digit that was in
  the sidecar (``0.00298`` s gives ``2.98``, not ``3.0``).
* **Plausibility**: every timing value is checked before it is used (:func:`check_timing`:
  per-field ranges, TE < TR, TI < TR), because milliseconds written into a BIDS seconds field
  would otherwise become e.g. ``TE 2980.0`` silently; ranges and sources in
  ``docs/metadata.md``. The TR slot is ``RepetitionTime``, else ``RepetitionTimePreparation``
  (MP2RAGE; :func:`repetition_time_field`).
* **Multi-echo**: if ``EchoTime`` (or any timing field) is a list, the *first* element is used:
  it is the first echo as acquired, the one a single-echo protocol of the same sequence would
  have. BIDS normally splits echoes into ``echo-<n>`` files with scalar times.
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

The prompt must also fit the tokenizer's 90-token context; every digit is one token, so very
long numbers can overflow it. That check needs the BPE vocabulary and lives with the tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INVERSION_TR_MIN_S",
    "PROMPT_TEMPLATE",
    "Demographics",
    "PromptError",
    "Protocol",
    "TIMING_LIMITS_S",
    "build_prompt",
    "check_timing",
    "format_age",
    "format_field_strength",
    "format_flip_angle",
    "format_ms",
    "format_voxel_size",
    "normalize_sex",
    "normalize_vendor",
    "parse_age",
    "parse_prompt",
    "protocol_from_sidecar",
    "repetition_time_field",
    "seconds_to_ms",
    "target_prompt",
    "validate_modality_word",
    "validate_prompt",
]

PROMPT_TEMPLATE = (
    "Age: {age}; Gender: {sex}; Scanner: {field} {vendor}; Modality: {modality}; "
    "Voxel size: ({x}, {y}, {z}); "
    "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  ({tr}, {te}, {ti}, {fa})"
)
"""The authors' English template with one named slot per rendered value."""

NONE = "None"
"""The placeholder the authors use for any missing value."""

# Characters the template itself uses as structure. A free-text value containing one of them
# would make the prompt ambiguous (or break ``demo.py``'s quote-based prompt-file parsing).
_FORBIDDEN_CHARS = frozenset(';,():"')

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
_MAX_FLIP_ANGLE = 360.0
_MAX_AGE = 150.0
_MAX_VOXEL_MM = 100.0

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


def _as_number(value: Any, what: str) -> float | None:
    """Coerce a sidecar value to float; ``None``/``"n/a"``/blank mean missing.

    Lists (multi-echo sidecars) yield their first element, see the module docstring.
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


def _voxel_slots(voxel_size: Sequence[float | None] | None) -> list[str]:
    if voxel_size is None:
        return [NONE, NONE, NONE]
    return [NONE if v is None else repr(_round_voxel(v)) for v in voxel_size]


def format_voxel_size(voxel_size: Sequence[float | None] | None) -> str:
    """Render ``(x, y, z)`` in millimetres, removing only float32 noise (7 significant digits)."""
    return "(" + ", ".join(_voxel_slots(voxel_size)) + ")"


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


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


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
            object.__setattr__(self, name, _as_number(getattr(self, name), key))
        object.__setattr__(self, "flip_angle", _coerce_flip_angle(self.flip_angle))
        manufacturer = self.manufacturer
        if manufacturer is not None:
            manufacturer = str(manufacturer).strip() or None
        object.__setattr__(self, "manufacturer", manufacturer)
        object.__setattr__(self, "voxel_size", _coerce_voxel_size(self.voxel_size))

    @property
    def vendor(self) -> str | None:
        """The normalised vendor word (:func:`normalize_vendor`)."""
        return normalize_vendor(self.manufacturer)


def _coerce_flip_angle(value: Any) -> float | str | None:
    """Numbers (and numeric strings) become float degrees; other words pass through."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return _as_number(value, "FlipAngle")
    except PromptError:
        if isinstance(value, str):
            return value.strip()  # e.g. "T2var", as in the authors' published prompts
        raise


def _coerce_voxel_size(value: Any) -> tuple[float, float, float] | None:
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
    numbers = [_as_number(v, what) for v in values]
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


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_word(what: str, text: str) -> None:
    """A free-text slot must be non-empty, printable and free of the template's separators."""
    if not text or text != text.strip():
        raise PromptError(f"{what} {text!r} is empty or has leading/trailing whitespace")
    bad = sorted({c for c in text if c in _FORBIDDEN_CHARS})
    if bad:
        raise PromptError(
            f"{what} {text!r} contains {''.join(bad)!r}; the prompt template uses these "
            "characters as separators"
        )
    if not text.isprintable():
        raise PromptError(f"{what} {text!r} contains control characters (e.g. a newline)")


def validate_modality_word(word: str) -> None:
    """Raise :class:`PromptError` unless ``word`` can fill the ``Modality:`` slot.

    Exposed so that modality tables supplied by users are checked when they are loaded, long
    before the first prompt is written.
    """
    if not isinstance(word, str):
        raise PromptError(f"modality must be a string, got {word!r}")
    _check_word("Modality", word)


def _check_range(what: str, value: float | None, upper: float, unit: str, hint: str = "") -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise PromptError(f"{what} must be finite, got {value!r}")
    if value < 0:
        raise PromptError(f"{what} must not be negative, got {value!r} {unit}")
    if value > upper:
        raise PromptError(f"{what} = {value!r} {unit} is implausible (> {upper} {unit}){hint}")


def _validate_fields(
    modality: str,
    protocol: Protocol,
    demographics: Demographics,
    voxel_size: tuple[float, float, float] | None,
) -> None:
    """Raise :class:`PromptError` for any value the template cannot faithfully hold."""
    validate_modality_word(modality)
    check_timing(
        {
            "RepetitionTime": protocol.repetition_time,
            "EchoTime": protocol.echo_time,
            "InversionTime": protocol.inversion_time,
        }
    )
    if isinstance(protocol.flip_angle, str):
        _check_word("FlipAngle", protocol.flip_angle)
    else:
        _check_range("FlipAngle", protocol.flip_angle, _MAX_FLIP_ANGLE, "degrees")
    _check_range("MagneticFieldStrength", protocol.magnetic_field_strength, 100.0, "T")
    if protocol.magnetic_field_strength == 0:
        raise PromptError("MagneticFieldStrength must be positive, got 0")
    vendor = protocol.vendor
    if vendor is not None:
        _check_word("Manufacturer", vendor)
    _check_range("Age", demographics.age, _MAX_AGE, "years")
    if voxel_size is not None:
        for axis, size in zip("xyz", voxel_size, strict=True):
            _check_range(f"Voxel size ({axis})", size, _MAX_VOXEL_MM, "mm")
            if size == 0:
                raise PromptError(f"Voxel size ({axis}) must be positive, got 0")


_SLOT = r"[^;,()\s][^;,()]*?"
_PROMPT_RE = re.compile(
    r"Age: (?P<age>[^;]+?); Gender: (?P<sex>M|F|None); "
    r"Scanner: (?P<field>\S+) (?P<vendor>[^;]+?); Modality: (?P<modality>[^;]+?); "
    rf"Voxel size: \((?P<x>{_SLOT}), (?P<y>{_SLOT}), (?P<z>{_SLOT})\); "
    r"Imaging parameter TR\(ms\), TE\(ms\), TI\(ms\), and FA\(degree\):  "
    rf"\((?P<tr>{_SLOT}), (?P<te>{_SLOT}), (?P<ti>{_SLOT}), (?P<fa>{_SLOT})\)"
)


def parse_prompt(prompt: str) -> dict[str, str]:
    """Split a prompt into its slots (``age``, ``sex``, ``field``, ``vendor``, ``modality``,
    ``x``, ``y``, ``z``, ``tr``, ``te``, ``ti``, ``fa``) as the strings written there.

    Raises :class:`PromptError` if ``prompt`` does not follow the template exactly.
    """
    match = _PROMPT_RE.fullmatch(prompt)
    if match is None:
        raise PromptError(
            "not a TUMSyn prompt (expected "
            f"{PROMPT_TEMPLATE!r} with every slot filled, two spaces after 'FA(degree):'): "
            f"{prompt!r}"
        )
    return match.groupdict()


def validate_prompt(prompt: str) -> None:
    """Raise :class:`PromptError` unless ``prompt`` follows the TUMSyn template exactly.

    Useful for prompts typed by users or read from files, which bypass :func:`build_prompt`.
    """
    parse_prompt(prompt)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def build_prompt(
    modality: str,
    protocol: Protocol,
    demographics: Demographics | None = None,
    voxel_size: Sequence[float] | None = None,
) -> str:
    """Write the TUMSyn prompt describing one image.

    ``voxel_size`` (millimetres, x/y/z) defaults to ``protocol.voxel_size``; for a source image
    pass the NIfTI zooms, for a synthesis target the output grid. Raises :class:`PromptError`
    if a value cannot be represented (see the module docstring for every rendering rule).
    """
    demographics = demographics if demographics is not None else Demographics()
    voxels = _coerce_voxel_size(voxel_size) if voxel_size is not None else protocol.voxel_size
    modality = modality.strip() if isinstance(modality, str) else modality
    _validate_fields(modality, protocol, demographics, voxels)
    x, y, z = _voxel_slots(voxels)
    prompt = PROMPT_TEMPLATE.format(
        age=format_age(demographics.age),
        sex=demographics.sex or NONE,
        field=format_field_strength(protocol.magnetic_field_strength),
        vendor=protocol.vendor or NONE,
        modality=modality,
        x=x,
        y=y,
        z=z,
        tr=format_ms(protocol.repetition_time),
        te=format_ms(protocol.echo_time),
        ti=format_ms(protocol.inversion_time),
        fa=format_flip_angle(protocol.flip_angle),
    )
    validate_prompt(prompt)
    return prompt


#: Sidecar fields a prompt reads, in the order :func:`readable_prompt` tries them.
PROMPT_FIELDS = (
    "MagneticFieldStrength",
    "Manufacturer",
    "RepetitionTime",
    "RepetitionTimePreparation",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
)


def readable_prompt(
    modality: str,
    metadata: Mapping[str, Any],
    voxel_size: Sequence[float] | None = None,
    demographics: Demographics | None = None,
) -> str | None:
    """The prompt of an image that cannot be used, with every value that can be written.

    For the record of a refused image (``prompts.tsv``, ``--dry-run``): the sidecar's prompt
    fields are added one at a time (:data:`PROMPT_FIELDS` order), each kept only if the prompt
    can still be built with it, so a non-numeric, implausible or inconsistent value (``TE`` in
    ms with ``TE > TR``) shows as ``None`` while the others keep what the sidecar says. An
    unwritable age or voxel size is dropped the same way. None when not even the modality can
    be written. Never raises.
    """
    demographics = demographics if demographics is not None else Demographics()
    base = {k: v for k, v in metadata.items() if k not in PROMPT_FIELDS}

    def attempt(fields: Mapping[str, Any], who: Demographics, voxels) -> str | None:
        try:
            protocol = protocol_from_sidecar(fields, voxels, check=True)
            return build_prompt(modality, protocol, who, voxels)
        except (PromptError, TypeError, ValueError):
            return None

    settings = None
    for who in (demographics, Demographics(sex=demographics.sex), Demographics()):
        for voxels in (voxel_size, None):
            if attempt(base, who, voxels) is not None:
                settings = (who, voxels)
                break
        if settings:
            break
    if settings is None:
        return None
    kept = dict(base)
    for name in PROMPT_FIELDS:
        if name in metadata and attempt({**kept, name: metadata[name]}, *settings) is not None:
            kept[name] = metadata[name]
    return attempt(kept, *settings)


def target_prompt(
    modality: str,
    target_protocol: Protocol,
    demographics: Demographics | None,
    voxel_size: Sequence[float] | None,
    *,
    source_protocol: Protocol | None = None,
) -> str:
    """Write the prompt for an image to synthesise: same person, wanted contrast and grid.

    The demographics are the subject's own (synthesis does not change who was scanned); the
    timing parameters come from ``target_protocol`` only, because they define the contrast;
    ``voxel_size`` is the output grid. When ``source_protocol`` is given, a field strength or
    manufacturer missing from the target is taken from it: the synthetic image then describes
    the source's scanner rather than an unknown one.
    """
    protocol = target_protocol
    if source_protocol is not None:
        protocol = Protocol(
            repetition_time=target_protocol.repetition_time,
            echo_time=target_protocol.echo_time,
            inversion_time=target_protocol.inversion_time,
            flip_angle=target_protocol.flip_angle,
            magnetic_field_strength=(
                target_protocol.magnetic_field_strength
                if target_protocol.magnetic_field_strength is not None
                else source_protocol.magnetic_field_strength
            ),
            manufacturer=target_protocol.manufacturer or source_protocol.manufacturer,
            voxel_size=target_protocol.voxel_size,
        )
    return build_prompt(modality, protocol, demographics, voxel_size)
