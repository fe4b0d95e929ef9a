"""TUMSyn in PyTorch: tokenizer, text encoder, synthesis network and patch inference.

Knows nothing about BIDS or nipype; arrays are in the authors' (z, y, x) order except in
:mod:`.volume`, the one place that converts from and to NIfTI files.

Names are imported lazily: ``import tumsyn_bids.model.grid`` (numpy only),
:mod:`.tokenizer` (counting tokens), :mod:`.metadata` (what a checkpoint records) and
:mod:`.errors` never import torch, so planning and ``--dry-run`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "errors",
    "file_sha256": "metadata",
    "load_synthesis": "checkpoints",
    "load_text_encoder": "checkpoints",
    "synthesis_checkpoint": "checkpoints",
    "InputImageError": "inference",
    "PatchSettings": "inference",
    "Sampling": "inference",
    "Synthesizer": "inference",
    "percentile_normalise": "inference",
    "SynthesisConfig": "network",
    "SynthesisNetwork": "network",
    "TextEncoder": "text_encoder",
    "TextEncoderConfig": "text_encoder",
    "PromptTooLongError": "tokenizer",
    "count_tokens": "tokenizer",
    "tokenize": "tokenizer",
    "OutputGrid": "grid",
    "output_grid": "grid",
    "synthesize_nifti": "volume",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
