"""Weight files for tests, written the way the official stage-1 checkpoint is laid out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tumsyn_bids.model.checkpoints import EXTRA_KEY


def save_text_encoder(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    heads: int,
    extra: dict[str, Any] | None = None,
    **fields: Any,
) -> None:
    """Write a text encoder in the authors' stage-1 format plus the head count, which the shapes
    cannot tell (``load_text_encoder`` reads it from the ``EXTRA_KEY`` entry)."""
    meta = dict(extra or {})
    meta["transformer_heads"] = int(heads)
    payload = {"epoch": 0, "global_step": 0, "optimizer_state_dict": {}, **fields}
    payload["model_state_dict"] = state_dict
    payload[EXTRA_KEY] = meta
    torch.save(payload, path)
