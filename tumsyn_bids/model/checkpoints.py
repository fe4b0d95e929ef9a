"""Reading and writing checkpoints in the TUMSyn authors' on-disk formats.

* Stage 1 (text encoder, ``checkpoint_CLIP.pt``): ``{'model_state_dict': CLIP.state_dict(), ...}``
  with the image tower (``visual.*``) and ``logit_scale``, which inference ignores.
* Stage 2 (synthesis, ``checkpoint.pth``): ``{'model_G': {'name': 'lccd', 'args': {...},
  'sd_G': LCCD.state_dict()}, 'optimizer_G': ..., 'epoch': ...}``.

Every size is read off the tensor shapes so the published model, the reference fixtures and our
own small models all load with the same code. What shapes cannot tell (text heads, res_scale) comes
from an extra ``tumsyn_bids`` key in files we write, from the checkpoint's ``args``, or from the
defaults of the authors' registered encoder names. Files are opened with ``weights_only=True`` (an
untrusted pickle never runs code) and memory-mapped (the published CLIP file is ~4 GB, of which
inference needs ~200 MB).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, TextHeadsError
from .metadata import EXTRA_KEY, read_checkpoint
from .network import FUSION_HEADS, SynthesisConfig, SynthesisNetwork
from .text_encoder import DEFAULT_TEXT_HEADS, TextEncoder, text_config_from_state_dict

LOGGER = logging.getLogger(__name__)

#: Defaults of the encoder names registered in the authors' models/resencoder.py.
ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "resencoder-256": {"n_resblocks": 24, "n_feats": 256, "outdim": 768, "res_scale": 0.1},
    "resencoder-64": {"n_resblocks": 16, "n_feats": 64, "outdim": 128, "res_scale": 1.0},
}

#: Prefixes of the stage-1 state dict that text-only inference does not use.
TEXT_UNUSED_PREFIXES = ("visual.", "logit_scale")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model built from a file, with what the provenance records need."""

    model: torch.nn.Module
    path: Path
    extra: dict[str, Any]


def _strict_load(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load every key, none missing, none unused; float16 files land in float32 parameters."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # size mismatches are raised even when strict=False
        raise CheckpointError(f"{path}: state dict does not match the model: {exc}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {result.missing_keys[:8]}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {result.unexpected_keys[:8]}")
    if problems:
        raise CheckpointError(f"{path}: state dict does not match the model: {'; '.join(problems)}")


# --------------------------------------------------------------------------- text encoder


def text_state_dict(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    if "model_state_dict" in checkpoint:
        sd = checkpoint["model_state_dict"]
    elif "token_embedding.weight" in checkpoint:
        sd = checkpoint
    else:
        raise CheckpointError(
            f"{path}: not a TUMSyn text-encoder checkpoint (no 'model_state_dict'); pass "
            "checkpoint_CLIP.pt as the text encoder and checkpoint.pth as the synthesis model"
        )
    # DistributedDataParallel wrappers prefix every key with 'module.'.
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_text_encoder(path: str | Path, heads: int | None = None) -> LoadedCheckpoint:
    """Build the text tower from a stage-1 checkpoint.

    ``heads``: explicit override; otherwise the value recorded by tumsyn-bids, otherwise the
    published 8.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    sd = text_state_dict(ckpt, path)
    extra = dict(ckpt.get(EXTRA_KEY) or {})
    n_heads = heads or int(extra.get("transformer_heads", DEFAULT_TEXT_HEADS))
    if "token_embedding.weight" not in sd:
        raise CheckpointError(f"{path}: no text tower (token_embedding.weight) in the state dict")
    width = int(sd["token_embedding.weight"].shape[1])
    if width % n_heads:
        origin = (
            "given with --text-heads"
            if heads
            else "recorded in the file"
            if "transformer_heads" in extra
            else f"the published model's {DEFAULT_TEXT_HEADS}; the file records none"
        )
        divisors = ", ".join(str(n) for n in range(1, width + 1) if width % n == 0 and n <= 64)
        raise TextHeadsError(
            f"{path}: the text encoder's width {width} is not divisible by {n_heads} attention "
            f"heads ({origin}); pass --text-heads N with the head count it was trained with, a "
            f"divisor of {width} ({divisors})"
        )
    try:
        config = text_config_from_state_dict(sd, n_heads)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a usable text encoder ({exc})") from exc
    model = TextEncoder(config)
    used = {k: v for k, v in sd.items() if not k.startswith(TEXT_UNUSED_PREFIXES)}
    _strict_load(model, used, path)
    model.eval()
    extra["transformer_heads"] = n_heads
    return LoadedCheckpoint(model=model, path=path, extra=extra)


# --------------------------------------------------------------------------- synthesis


def _indices(sd: dict[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def synthesis_config_from_checkpoint(
    model_g: dict[str, Any], extra: dict[str, Any], path: Path
) -> SynthesisConfig:
    """Every width and depth from the shapes; ``res_scale`` from args or the encoder defaults."""
    sd = model_g["sd_G"]
    try:
        n_feats = int(sd["encoder.head.0.weight"].shape[0])
        out_dim = int(sd["encoder.tail.0.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{path}: no TUMSyn encoder in 'sd_G' ({exc} missing)") from exc
    n_blocks = len(_indices(sd, r"encoder\.body\.(\d+)\.body\.0\.weight"))
    linear_ids = _indices(sd, r"imnet\.layers\.(\d+)\.weight")
    if not linear_ids:
        raise CheckpointError(f"{path}: no implicit decoder (imnet.layers.*) in 'sd_G'")
    widths = [int(sd[f"imnet.layers.{i}.weight"].shape[0]) for i in linear_ids]
    in_dim = int(sd[f"imnet.layers.{linear_ids[0]}.weight"].shape[1])
    if in_dim != out_dim + 3 or widths[-1] != 1:
        raise CheckpointError(
            f"{path}: decoder takes {in_dim} inputs and gives {widths[-1]} outputs; expected "
            f"{out_dim + 3} (features + 3 coordinates) and 1"
        )

    spec = (model_g.get("args") or {}).get("encoder_spec") or {}
    name = spec.get("name", "resencoder-256")
    args = spec.get("args") or {}
    defaults = ENCODER_DEFAULTS.get(name)
    if "res_scale" in extra:
        res_scale = float(extra["res_scale"])
    elif "res_scale" in args:
        res_scale = float(args["res_scale"])
    elif defaults is not None:
        res_scale = float(defaults["res_scale"])
    else:
        raise CheckpointError(
            f"{path}: unknown encoder {name!r} and no res_scale recorded; known encoders: "
            f"{sorted(ENCODER_DEFAULTS)}"
        )
    for key, actual in (("n_resblocks", n_blocks), ("n_feats", n_feats), ("outdim", out_dim)):
        declared = args.get(key, defaults.get(key) if defaults else None)
        if declared is not None and int(declared) != actual:
            LOGGER.warning(
                "%s: args say %s=%s but the weights have %s; using the weights",
                path,
                key,
                declared,
                actual,
            )
    return SynthesisConfig(
        n_resblocks=n_blocks,
        n_feats=n_feats,
        out_dim=out_dim,
        res_scale=res_scale,
        decoder_hidden=tuple(widths[:-1]),
        fusion_heads=int(extra.get("fusion_heads", FUSION_HEADS)),
        encoder_name=name,
    )


def load_synthesis(path: str | Path) -> LoadedCheckpoint:
    """Build the synthesis network from a stage-2 checkpoint and load it strictly."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    model_g = ckpt.get("model_G")
    if not isinstance(model_g, dict) or "sd_G" not in model_g:
        hint = " (this looks like a text-encoder checkpoint)" if "model_state_dict" in ckpt else ""
        raise CheckpointError(f"{path}: not a TUMSyn synthesis checkpoint (no model_G.sd_G){hint}")
    extra = dict(ckpt.get(EXTRA_KEY) or {})
    sd = {k.removeprefix("module."): v for k, v in model_g["sd_G"].items()}
    model_g = {**model_g, "sd_G": sd}
    config = synthesis_config_from_checkpoint(model_g, extra, path)
    model = SynthesisNetwork(config)
    _strict_load(model, sd, path)
    model.eval()
    return LoadedCheckpoint(model=model, path=path, extra=extra)


def synthesis_checkpoint(
    model: SynthesisNetwork,
    extra: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    epoch: int = 0,
) -> dict[str, Any]:
    """The authors' train.py layout for ``model`` plus our metadata (decoder widths etc.)."""
    cfg = model.config
    meta = {**(extra or {}), **cfg.to_dict()}
    return {
        "model_G": {
            "name": "lccd",
            "args": {
                "encoder_spec": {
                    "name": cfg.encoder_name,
                    "args": {
                        "n_resblocks": cfg.n_resblocks,
                        "n_feats": cfg.n_feats,
                        "outdim": cfg.out_dim,
                        "res_scale": cfg.res_scale,
                        "no_upsampling": True,
                    },
                },
                "no_imnet": False,
            },
            "sd_G": model.state_dict(),
        },
        "optimizer_G": optimizer or {},
        "epoch": epoch,
        EXTRA_KEY: meta,
    }


def check_weights(
    checkpoint: str | Path, text_encoder: str | Path, heads: int | None = None
) -> None:
    """Load both checkpoints once, as every synthesis node will, before any job starts.

    A run whose weights cannot be used would otherwise crash in every job, one by one. Raises
    :class:`TextHeadsError` when ``heads`` (or the file's record, or the published default)
    does not divide the text width, and :class:`CheckpointError` when a file cannot be read
    (truncated, not a torch file, a pickle that would run code: files are loaded with
    ``weights_only=True``) or is not the stage its option expects; every message names the
    option, the file and the fix.
    """
    try:
        load_synthesis(checkpoint)
    except CheckpointError as exc:
        text = str(exc)
        if "text-encoder checkpoint" in text:
            fix = "it is the text encoder: give checkpoint.pth as --checkpoint and "
            fix += "checkpoint_CLIP.pt as --text-encoder"
        elif text.startswith("cannot read checkpoint"):
            fix = "the file is truncated, corrupt, or not a torch checkpoint of weights only; "
            fix += "download it again (Zenodo record 13119176)"
        else:
            fix = "give the TUMSyn synthesis checkpoint (checkpoint.pth)"
        raise CheckpointError(f"--checkpoint: {text}; {fix}") from None
    try:
        load_text_encoder(text_encoder, heads=heads)
    except TextHeadsError:
        raise
    except CheckpointError as exc:
        text = str(exc)
        if "synthesis" in text or "model_state_dict" in text:
            fix = "give checkpoint_CLIP.pt as --text-encoder and checkpoint.pth as --checkpoint"
        elif text.startswith("cannot read checkpoint"):
            fix = "the file is truncated, corrupt, or not a torch checkpoint of weights only; "
            fix += "download it again (Zenodo record 13119176)"
        else:
            fix = "give the TUMSyn text encoder (checkpoint_CLIP.pt)"
        raise CheckpointError(f"--text-encoder: {text}; {fix}") from None
