"""Which BIDS anatomical images TUMSyn can read, and the modality word each one gets in a prompt.

The prompt's ``Modality:`` slot is free text to the tokenizer, but the text encoder only learned
the words the authors used for their seven structural modalities. Only two of those words are
confirmed by published prompts: ``T1w`` and ``T2w`` (README and ``Experimental_data``). The
others in :data:`DEFAULT_MODALITIES` are our best reading of the paper and of BIDS naming, and
are marked *unconfirmed*: a user who learns the exact words (or trains a model with other words)
overrides them without touching code, by passing a mapping to :func:`modality_table` (the CLI
can read one from JSON).

Keys of the table are *selectors*:

``"<suffix>"``
    any image with that BIDS suffix, e.g. ``"T1w"``;
``"<suffix>:<entity>"``
    that suffix with the entity present, any value, e.g. ``"T1w:ce"`` (contrast-enhanced);
``"<suffix>:<entity>-<value>"``
    that suffix with the entity at that value, e.g. ``"T1w:acq-mp2rage"``.

Entities use their short BIDS names (``acq``, ``ce``, ``rec``, ``run``...). The most specific
selector wins (value, then presence, then bare suffix); among equally specific selectors, the one
listed first in the table wins. An override value of ``None`` (or ``""``) removes a selector, so
``{"T1w:ce": None}`` treats contrast-enhanced T1w like any T1w, and ``{"angio": None}`` stops
indexing angiograms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from tumsyn_bids.prompts.template import validate_modality_word
from tumsyn_bids.prompts.values import PromptError

__all__ = [
    "CONFIRMED_WORDS",
    "DEFAULT_MODALITIES",
    "ModalityTableError",
    "indexed_suffixes",
    "modality_table",
    "resolve_modality",
]

DEFAULT_MODALITIES: Mapping[str, str] = MappingProxyType(
    {
        # Confirmed by the authors' published prompts.
        "T1w": "T1w",
        "T2w": "T2w",
        # Unconfirmed: BIDS suffix used as the word (the paper names these contrasts so).
        "FLAIR": "FLAIR",
        "PDw": "PDw",
        "T2starw": "T2starw",
        # Unconfirmed: the paper's wording for angiography and contrast-enhanced T1w.
        "angio": "MRA",
        "T1w:ce": "T1wCE",
        # Deprecated BIDS suffixes still found in older datasets.
        "PD": "PDw",
        "T2star": "T2starw",
    }
)
"""Default selector -> modality word table (see the module docstring for the key syntax)."""

CONFIRMED_WORDS = frozenset({"T1w", "T2w"})
"""Modality words that appear in prompts published by the TUMSyn authors."""

_SELECTOR_RE = re.compile(
    r"(?P<suffix>[A-Za-z0-9]+)(?::(?P<entity>[a-z]+)(?:-(?P<value>[A-Za-z0-9]+))?)?"
)


class ModalityTableError(ValueError):
    """A modality table (or override) has a malformed selector or an unusable modality word."""


def _parse_selector(selector: str) -> tuple[str, str | None, str | None]:
    match = _SELECTOR_RE.fullmatch(selector)
    if match is None:
        raise ModalityTableError(
            f"bad modality selector {selector!r}: expected '<suffix>', '<suffix>:<entity>' or "
            "'<suffix>:<entity>-<value>' (e.g. 'T1w', 'T1w:ce', 'T1w:acq-mprage')"
        )
    return match["suffix"], match["entity"], match["value"]


def modality_table(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Return the default table updated with ``overrides`` (``None``/``""`` removes a selector).

    Every selector and word is checked here, so a typo in a user's JSON fails before indexing.
    """
    table = dict(DEFAULT_MODALITIES)
    for selector, word in (overrides or {}).items():
        _parse_selector(selector)
        if word is None or word == "":
            table.pop(selector, None)
            continue
        if not isinstance(word, str):
            raise ModalityTableError(f"modality word for {selector!r} must be a string: {word!r}")
        try:
            validate_modality_word(word)
        except PromptError as exc:
            raise ModalityTableError(f"modality word for {selector!r}: {exc}") from None
        table[selector] = word
    return table


def indexed_suffixes(table: Mapping[str, str]) -> list[str]:
    """BIDS suffixes that some selector of ``table`` can match, in table order."""
    suffixes: list[str] = []
    for selector in table:
        suffix = _parse_selector(selector)[0]
        if suffix not in suffixes:
            suffixes.append(suffix)
    return suffixes


def resolve_modality(
    suffix: str, entities: Mapping[str, str], table: Mapping[str, str] | None = None
) -> str | None:
    """The modality word for an image with ``suffix`` and short-name ``entities``, or None.

    None means TUMSyn has no word for the image (e.g. ``T1map``, ``FLASH``) and it is skipped.
    """
    table = DEFAULT_MODALITIES if table is None else table
    best: tuple[int, str] | None = None
    for selector, word in table.items():
        sel_suffix, entity, value = _parse_selector(selector)
        if sel_suffix != suffix:
            continue
        if entity is None:
            rank = 0
        elif entity not in entities:
            continue
        elif value is None:
            rank = 1
        elif entities[entity] == value:
            rank = 2
        else:
            continue
        if best is None or rank > best[0]:
            best = (rank, word)
    return None if best is None else best[1]
