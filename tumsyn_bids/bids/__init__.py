"""BIDS side of tumsyn-bids: index anatomical images, their metadata and demographics.

This subpackage knows BIDS and nothing about torch; the prompt text itself is built by
:mod:`tumsyn_bids.prompts`. Names are imported lazily so that ``import tumsyn_bids.bids`` (and
the lightweight modules such as :mod:`~tumsyn_bids.bids.modalities`) do not pay for importing
PyBIDS until a layout is actually built.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BIDSIndexError": "layout",
    "ScanIndex": "records",
    "ScanRecord": "records",
    "index_anatomical": "layout",
    "load_layout": "layout",
    "read_bids_filter_file": "layout",
    "BIDSIgnore": "ignore",
    "parse_filename": "names",
    "ImageInfo": "images",
    "probe_image": "images",
    "ParticipantTable": "metadata",
    "DEFAULT_MODALITIES": "modalities",
    "ModalityTableError": "modalities",
    "modality_table": "modalities",
    "resolve_modality": "modalities",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
