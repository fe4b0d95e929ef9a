"""The TUMSyn prompt itself: the template, the prompt builders and the validator.

TUMSyn conditions its synthesis network on a one-line English description of the wanted image.
The published code reads that line verbatim, so the app, the training code and ``tumsyn-synth``
must all write it byte for byte the same way. The template (note the two spaces after
``FA(degree):``, as in the authors' examples)::

    Age: {age}; Gender: {sex}; Scanner: {field} {vendor}; Modality: {modality};
    Voxel size: ({x}, {y}, {z}); Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):
    ({tr}, {te}, {ti}, {fa})

(one line in reality). **Missing values** render as ``None`` slot by slot, following the
authors' README ("use None as the placeholder"). ``Scanner:`` has two slots, so a missing field
strength gives ``None Siemens``, a missing vendor ``3.0 None`` and both missing ``None None``;
the voxel size likewise gives ``(None, None, None)``. Keeping every slot keeps the prompt's
shape fixed, which is what the text encoder saw in training, and keeps :func:`parse_prompt`
unambiguous. How each value is written is :mod:`tumsyn_bids.prompts.values`; where the values
come from is :mod:`tumsyn_bids.prompts.protocol`.

The prompt must also fit the tokenizer's 90-token context; every digit is one token, so very
long numbers can overflow it. That check needs the BPE vocabulary and lives with the tokenizer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .protocol import (
    Demographics,
    Protocol,
    check_timing,
    coerce_voxel_size,
    protocol_from_sidecar,
)
from .values import (
    NONE,
    PromptError,
    format_age,
    format_field_strength,
    format_flip_angle,
    format_ms,
    voxel_slots,
)

__all__ = [
    "PROMPT_FIELDS",
    "PROMPT_TEMPLATE",
    "build_prompt",
    "readable_prompt",
    "parse_prompt",
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

# Characters the template itself uses as structure. A free-text value containing one of them
# would make the prompt ambiguous (or break ``demo.py``'s quote-based prompt-file parsing).
_FORBIDDEN_CHARS = frozenset(';,():"')

_MAX_FLIP_ANGLE = 360.0
_MAX_AGE = 150.0
_MAX_VOXEL_MM = 100.0


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
    if a value cannot be represented (every rendering rule is in
    :mod:`tumsyn_bids.prompts.values`).
    """
    demographics = demographics if demographics is not None else Demographics()
    voxels = coerce_voxel_size(voxel_size) if voxel_size is not None else protocol.voxel_size
    modality = modality.strip() if isinstance(modality, str) else modality
    _validate_fields(modality, protocol, demographics, voxels)
    x, y, z = voxel_slots(voxels)
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
