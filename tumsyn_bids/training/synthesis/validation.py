"""Stage-2 validation: the PSNR of the fixed validation patches, in both directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...model.network import SynthesisNetwork
from .network import BATCH_KEYS, BidirectionalSynthesis, predict_both, to_device


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example PSNR for data in [0, 1] (the authors' ``calc_psnr``, one per patch)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate(
    network: SynthesisNetwork,
    examples: Sequence[dict[str, torch.Tensor]],
    table: torch.Tensor,
    device: torch.device,
    batch_size: int,
    prompt_suffixes: Sequence[str] = (),
) -> dict[str, float]:
    """Mean PSNR over the validation patches in both directions (eval-mode BatchNorm).

    With ``prompt_suffixes`` (the modality of each prompt id), also the mean PSNR of the
    predictions of each target modality, ``psnr_to_<suffix>``: one task can regress while the
    overall mean holds.
    """
    was_training = network.training
    network.eval()
    forward = BidirectionalSynthesis(network)
    to_tgt, to_src = [], []
    for i in range(0, len(examples), max(1, batch_size)):
        chunk = examples[i : i + batch_size]
        batch = to_device({k: torch.stack([e[k] for e in chunk]) for k in BATCH_KEYS}, device)
        pred_tgt, pred_src = predict_both(forward, batch, table)
        to_tgt.append(psnr(pred_tgt, batch["tgt_hr"]).cpu())
        to_src.append(psnr(pred_src, batch["src_hr"]).cpu())
    network.train(was_training)
    src_to_tgt, tgt_to_src = torch.cat(to_tgt), torch.cat(to_src)
    a, b = float(src_to_tgt.mean()), float(tgt_to_src.mean())
    scores = {
        "psnr_src_to_tgt": a,
        "psnr_tgt_to_src": b,
        "val_psnr": (a + b) / 2,
        "n_patches": len(examples),
    }
    if prompt_suffixes:
        per_target: dict[str, list[float]] = {}
        for example, x, y in zip(examples, src_to_tgt.tolist(), tgt_to_src.tolist(), strict=True):
            per_target.setdefault(prompt_suffixes[int(example["tgt_prompt"])], []).append(x)
            per_target.setdefault(prompt_suffixes[int(example["src_prompt"])], []).append(y)
        for suffix in sorted(per_target):
            scores[f"psnr_to_{suffix}"] = float(np.mean(per_target[suffix]))
    return scores
