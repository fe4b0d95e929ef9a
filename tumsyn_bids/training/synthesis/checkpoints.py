"""Stage-2 checkpoints: the run state they carry, what they record, and ``--resume``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...model.checkpoints import synthesis_checkpoint
from ...model.metadata import EXTRA_KEY, file_sha256
from ...model.network import SynthesisNetwork
from ..common import read_resume_checkpoint, refuse_size_changes, warn_if_run_changed
from ..config import SynthesisTrainingConfig
from ..distributed import DistributedContext
from .data import PreparedData
from .sampling import Sampling

LOGGER = logging.getLogger(__name__)

STAGE = "synthesis"
CHECKPOINT_LAST = "epoch-last.pth"
CHECKPOINT_BEST = "epoch-best.pth"


@dataclass
class RunState:
    """Where a run stands; stored in every checkpoint so that ``--resume`` can continue it."""

    #: Completed epochs (the authors' ``epoch``; a resumed run starts at ``epoch + 1``).
    epoch: int = 0
    #: Optimiser steps in total, and within the unfinished epoch ``epoch + 1``.
    step: int = 0
    epoch_step: int = 0
    #: Sum of the unfinished epoch's losses so far (for the training-loss fallback of "best").
    epoch_loss_sum: float = 0.0
    #: The metric deciding epoch-best.pth: name, value and epoch of the best so far.
    best_metric: str = ""
    best_value: float | None = None
    best_epoch: int | None = None

    def improves(self, name: str, value: float) -> bool:
        """Higher PSNR, or lower training loss, than the best so far."""
        if self.best_metric != name or self.best_value is None:
            return True
        return value > self.best_value if name == "val_psnr" else value < self.best_value

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _size_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = ("n_resblocks", "n_feats", "out_dim", "res_scale", "decoder_hidden", "fusion_heads")
    out = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, tuple | list):
            a = list(a)
        if isinstance(b, tuple | list):
            b = list(b)
        if a != b:
            out.append(f"{key}: checkpoint {a}, options {b}")
    return out


def resume(
    path: Path,
    network: SynthesisNetwork,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    meta: dict[str, Any],
) -> RunState:
    """Restore network, optimiser, scheduler and the run state from ``epoch-last.pth``."""
    ckpt = read_resume_checkpoint(path, STAGE)
    extra = ckpt[EXTRA_KEY]
    refuse_size_changes(path, _size_differences(extra.get("model", {}), network.config.to_dict()))
    sd = {k.removeprefix("module."): v for k, v in ckpt["model_G"]["sd_G"].items()}
    network.load_state_dict(sd)
    optimizer.load_state_dict(ckpt["optimizer_G"]["sd_G"])
    scheduler.load_state_dict(extra["scheduler"])
    saved_text = (extra.get("text_encoder") or {}).get("sha256")
    if saved_text and saved_text != meta["text_encoder"]["sha256"]:
        LOGGER.warning(
            "resuming with a different text encoder than %s was trained with (sha256 %s, now "
            "%s): the prompt embeddings change under the network",
            path,
            saved_text[:12],
            meta["text_encoder"]["sha256"][:12],
        )
    warn_if_run_changed(extra, meta, ("batches_per_epoch", "sampling", "val_scale"), path)
    state = RunState(**extra["run_state"])
    state.epoch = int(ckpt["epoch"])
    return state


def payload(
    network: SynthesisNetwork,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    state: RunState,
    meta: dict[str, Any],
    lr: float,
) -> dict[str, Any]:
    extra = {
        **meta,
        "model": network.config.to_dict(),
        "scheduler": scheduler.state_dict(),
        "run_state": state.to_dict(),
        "global_step": state.step,
        "best": {"metric": state.best_metric, "value": state.best_value, "epoch": state.best_epoch},
    }
    optimizer_g = {"name": "adam", "args": {"lr": lr}, "sd_G": optimizer.state_dict()}
    return synthesis_checkpoint(network, extra, optimizer=optimizer_g, epoch=state.epoch)


def metadata(
    config: SynthesisTrainingConfig,
    data: PreparedData,
    sampling: Sampling,
    ctx: DistributedContext,
    batches_per_epoch: int,
) -> dict[str, Any]:
    """Provenance stored in every checkpoint (next to the model sizes and the run state)."""
    init_from = None
    if config.init_from:
        init_from = {
            "path": str(Path(config.init_from).resolve()),
            "sha256": file_sha256(config.init_from),
        }
    return {
        "stage": STAGE,
        "version": __version__,
        "config": config.to_dict(),
        "text_encoder": data.text_encoder,
        "init_from": init_from,
        "sampling": dict(sampling.__dict__),
        "val_scale": config.val_scale,
        "world_size": ctx.world_size,
        "batches_per_epoch": batches_per_epoch,
        "n_train_pairs": len(data.train),
        "n_val_pairs": data.n_val_pairs,
        "prompts": data.prompts,
    }
