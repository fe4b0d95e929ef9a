"""Stage-2 examples: random training patches of the in-memory pairs, and fixed validation patches.

An example is a pure function of its seed (see :class:`PatchDataset`), so runs are reproducible
whatever the number of data-loader workers, and a resumed run draws the patches an uninterrupted
one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ...model.patches import sample_training_patch
from ..augmentation import Degradation
from ..common import worker_init
from ..config import SynthesisTrainingConfig

#: Fixed validation patches drawn from every validation pair.
VAL_PATCHES_PER_PAIR = 4
#: First words of the seed sequences, so training and validation draw unrelated patches.
_TRAIN_STREAM, _VAL_STREAM = 0, 1


@dataclass(frozen=True)
class PairVolumes:
    """A pair's normalised volumes, cropped to the source's non-zero box, and its prompt ids."""

    source: np.ndarray
    target: np.ndarray
    source_prompt: int
    target_prompt: int
    name: str


@dataclass(frozen=True)
class Sampling:
    """The patch options of the run (the authors' wrapper arguments)."""

    scale_min: float
    scale_max: float
    lr_size: int
    sample_q: int
    #: Input degradation bounds (:class:`~.augmentation.Degradation`); 0 is the paper's.
    blur_max: float = 0.0
    noise_max: float = 0.0

    @classmethod
    def from_config(cls, config: SynthesisTrainingConfig) -> Sampling:
        return cls(
            config.scale_min,
            config.scale_max,
            config.lr_size,
            config.sample_q,
            config.augment_blur,
            config.augment_noise,
        )

    @property
    def degradation(self) -> Degradation:
        return Degradation(blur_max=self.blur_max, noise_max=self.noise_max)


def make_example(
    pair: PairVolumes, sampling: Sampling, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One training example as tensors (LR patches with their channel axis, prompt ids).

    The LR inputs are degraded after the patch is drawn, with the same generator, so an
    example stays a pure function of its seed.
    """
    patch = sample_training_patch(
        pair.source,
        pair.target,
        rng,
        sampling.scale_min,
        sampling.scale_max,
        sampling.lr_size,
        sampling.sample_q,
        crop=False,
    )
    degrade = sampling.degradation
    return {
        "src_lr": torch.from_numpy(degrade.apply(patch["src_lr"], rng))[None],
        "tgt_lr": torch.from_numpy(degrade.apply(patch["tgt_lr"], rng))[None],
        "coord": torch.from_numpy(patch["coord"]),
        "src_hr": torch.from_numpy(patch["src_hr"]),
        "tgt_hr": torch.from_numpy(patch["tgt_hr"]),
        "src_prompt": torch.tensor(pair.source_prompt),
        "tgt_prompt": torch.tensor(pair.target_prompt),
    }


class PatchDataset(Dataset):
    """``patches_per_pair`` fresh random patches of every pair per epoch.

    Items are addressed by ``(epoch, slot, index)`` from :class:`EpochSampler`: the patch of
    item ``index`` is drawn from a generator seeded by ``(seed, epoch, slot)``, so it differs per
    epoch and per position (hence per rank and worker) and is reproducible. The epoch travels with
    the index because persistent data-loader workers never see attributes set after they start.
    """

    def __init__(
        self, pairs: Sequence[PairVolumes], patches_per_pair: int, sampling: Sampling, seed: int
    ) -> None:
        self.pairs = list(pairs)
        self.patches_per_pair = int(patches_per_pair)
        self.sampling = sampling
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.pairs) * self.patches_per_pair

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        epoch, slot, index = key
        rng = np.random.default_rng([self.seed, _TRAIN_STREAM, int(epoch), int(slot)])
        return make_example(self.pairs[index % len(self.pairs)], self.sampling, rng)


class EpochSampler(Sampler):
    """This rank's share of a per-epoch shuffle, as ``(epoch, slot, index)`` keys.

    Like :class:`~torch.utils.data.DistributedSampler` (the order is padded to a multiple of the
    world size by repeating its start, and rank ``r`` takes every ``world_size``-th slot from
    ``r``), but the order depends only on ``(seed, epoch)`` and the first ``skip`` items can be
    left out to resume in the middle of an epoch.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int) -> None:
        self.size = int(size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.per_rank = math.ceil(self.size / self.world_size)
        self.epoch = 1
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.size))[:total]
        slots = range(self.rank, total, self.world_size)
        for slot in list(slots)[self.skip :]:
            yield self.epoch, slot, order[slot]


def make_train_loader(
    dataset: PatchDataset, sampler: EpochSampler, config: SynthesisTrainingConfig, cuda: bool
) -> DataLoader:
    """A loader over ``sampler``'s keys (``common.make_loader`` builds its own sampler)."""
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        worker_init_fn=worker_init,
        pin_memory=cuda,
        persistent_workers=config.workers > 0,
    )


def validation_examples(
    pairs: Sequence[PairVolumes], sampling: Sampling, seed: int, scale: float | None = None
) -> list[dict[str, torch.Tensor]]:
    """Fixed patches of the validation pairs, drawn once so every epoch is scored alike.

    Validation inputs are never degraded: the score tracks the task on scans as acquired,
    comparable between runs with and without augmentation. ``scale`` fixes the patches' scale
    (``--val-scale``): patches drawn over the training range are mostly super-resolution, and
    their mean PSNR can hold steady while synthesis at the acquired resolution (scale 1, what
    whole-volume inference on a scan does) loses decibels.
    """
    as_acquired = replace(sampling, blur_max=0.0, noise_max=0.0)
    if scale is not None:
        as_acquired = replace(as_acquired, scale_min=scale, scale_max=scale)
    return [
        make_example(pair, as_acquired, np.random.default_rng([seed, _VAL_STREAM, i, k]))
        for i, pair in enumerate(pairs)
        for k in range(VAL_PATCHES_PER_PAIR)
    ]
