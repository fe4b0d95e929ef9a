"""Learning-rate schedules of the training stages.

Stage 1 uses the schedule the authors took from Hugging Face ``transformers``: a linear warm-up
from 0 to the base rate over the first ``warmup_fraction`` of all steps, then half a cosine down
to 0. The multiplier is a pure function of the step count, so ``--resume`` only has to restore the
scheduler's step counter to continue on the same curve.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(total_steps: int, fraction: float) -> int:
    """Steps of linear warm-up; truncated like the authors' ``int(0.20 * t_total)``."""
    return int(fraction * total_steps)


def warmup_cosine_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.2
) -> LambdaLR:
    """A :class:`LambdaLR` stepping :func:`warmup_cosine_factor` once per optimiser step."""
    warmup = warmup_steps(total_steps, warmup_fraction)

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, total_steps, warmup)

    return LambdaLR(optimizer, factor)
