"""Turn training checkpoints into the two files a user runs: weights only, optionally float16.

Training checkpoints carry optimiser and scheduler state (three times the weights for Adam); a
model to ship needs none of it. The exported files keep the authors' formats, so every loader
(ours, and the authors' demo.py) reads them, and they record the model's name and intended use,
which end up in the sidecar of every image the model makes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..model.checkpoints import (
    EXTRA_KEY,
    CheckpointError,
    load_synthesis,
    load_text_encoder,
    read_checkpoint,
    text_state_dict,
)
from .common import atomic_torch_save

LOGGER = logging.getLogger(__name__)


def _cast(state_dict: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """float32 weights to float16 (loaders cast back); buffers such as counters stay as they are."""
    out = {}
    for key, value in state_dict.items():
        value = value.detach().clone().contiguous()
        out[key] = value.half() if half and value.dtype == torch.float32 else value
    return out


def export_model(
    text_encoder: Path,
    synthesis: Path,
    out_dir: Path,
    *,
    name: str,
    intended_use: str,
    half: bool = True,
) -> tuple[Path, Path]:
    """Write ``out_dir/text_encoder.pt`` and ``out_dir/synthesis.pth`` from training checkpoints.

    Both are loaded back and checked against the originals (same predictions up to float16
    rounding is the caller's test; here: they load strictly).
    """
    out_dir = Path(out_dir)
    meta = {"model_name": name, "intended_use": intended_use}

    te_ckpt = read_checkpoint(text_encoder)
    te_extra = dict(te_ckpt.get(EXTRA_KEY) or {})
    if "transformer_heads" not in te_extra:
        raise CheckpointError(f"{text_encoder}: no recorded head count; not a tumsyn-train file?")
    te_payload: dict[str, Any] = {
        "epoch": te_ckpt.get("epoch", 0),
        "global_step": te_ckpt.get("global_step", 0),
        "model_state_dict": _cast(text_state_dict(te_ckpt, Path(text_encoder)), half),
        "optimizer_state_dict": {},
        EXTRA_KEY: {**te_extra, **meta},
    }
    te_out = atomic_torch_save(te_payload, out_dir / "text_encoder.pt")

    syn_ckpt = read_checkpoint(synthesis)
    model_g = syn_ckpt.get("model_G")
    if not isinstance(model_g, dict) or "sd_G" not in model_g:
        raise CheckpointError(f"{synthesis}: not a synthesis checkpoint (no model_G.sd_G)")
    syn_extra = {
        k: v
        for k, v in dict(syn_ckpt.get(EXTRA_KEY) or {}).items()
        if k not in ("scheduler", "scheduler_state_dict", "optimizer")
    }
    syn_payload = {
        "model_G": {**model_g, "sd_G": _cast(model_g["sd_G"], half)},
        "optimizer_G": {},
        "epoch": syn_ckpt.get("epoch", 0),
        EXTRA_KEY: {**syn_extra, **meta},
    }
    syn_out = atomic_torch_save(syn_payload, out_dir / "synthesis.pth")

    # Fail here, not in a user's run, if either file does not load.
    load_text_encoder(te_out)
    load_synthesis(syn_out)
    for path in (te_out, syn_out):
        LOGGER.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return te_out, syn_out
