"""Stage 2: train TUMSyn's synthesis network on co-registered modality pairs.

Follows the authors' ``train.py`` with the ``sr-implicit-paired`` sampling (see
:mod:`tumsyn_bids.model.patches`): every example is an LR patch of both images of a pair plus
query coordinates with their HR values, and the loss is the mean of the L1 errors of both
directions, source→target under the target's prompt and target→source under the source's.
Adam, with a MultiStepLR schedule stepped once per epoch; validation PSNR every ``epoch_val``
epochs; checkpoints in the authors' layout, which :func:`~tumsyn_bids.model.load_synthesis` reads
(and the authors' own ``models.make``, for their hard-coded decoder widths).

The text encoder (stage 1) stays frozen: every distinct prompt is embedded once, up front, on the
CPU, and the encoder is dropped. Only the embedding table travels to the training device.

Differences worth knowing:

* The authors set the learning rate to 1e-5 at the start of every epoch (``train.py``:
  ``optimizer_G.param_groups[0]['lr'] = 0.00001``), overriding both ``--lr`` and the schedule;
  their published recipe says 1e-4 with MultiStepLR, so we do not reproduce that line.
* The patch of epoch ``e`` at position ``p`` of that epoch's (shuffled, rank-padded) order is a
  pure function of ``(seed, e, p)``, and the order of ``(seed, e)``. Runs are reproducible
  whatever the number of data-loader workers, and ``--resume`` (even mid-epoch, after
  ``--max-steps``) continues where an uninterrupted run would be: on the CPU to the bit; on GPUs
  up to the run-to-run noise of their kernels.
* Validation uses fixed patches (the same every epoch), so its PSNR changes only with the model.
  The mean PSNR of both directions decides ``epoch-best.pth`` (the authors' sum, halved). Without
  validation subjects the epoch's mean training loss decides instead, at the same epochs, which
  says little about generalisation; a warning says so.
* Validation also runs after the last epoch, so every complete run has an ``epoch-best.pth``.

Outputs in ``OUT_DIR``: ``epoch-last.pth`` (after every epoch, and where ``--max-steps`` stops),
``epoch-best.pth``, ``epoch-N.pth`` every ``epoch_save`` epochs, ``train_log.{csv,jsonl}``,
``val_log.{csv,jsonl}`` and ``config.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import __version__
from ..model.checkpoints import (
    EXTRA_KEY,
    CheckpointError,
    load_synthesis,
    load_text_encoder,
    synthesis_checkpoint,
)
from ..model.inference import InputImageError
from ..model.metadata import file_sha256
from ..model.network import FUSION_HEADS, SynthesisConfig, SynthesisNetwork
from ..model.patches import crop_to_source, sample_training_patch
from ..model.text_encoder import TextEncoder
from ..model.tokenizer import PromptTooLongError, tokenize
from .augmentation import Degradation
from .common import (
    atomic_torch_save,
    checkpoint_to_continue,
    progress,
    read_resume_checkpoint,
    refuse_size_changes,
    seed_everything,
    select_images,
    warn_if_run_changed,
    worker_init,
    write_run_config,
)
from .config import SynthesisTrainingConfig
from .data import ImagePair, load_normalised, modality_pairs
from .distributed import DistributedContext, init_distributed, shutdown
from .errors import NoTrainingData, TrainingDataError
from .metrics import MetricsLog

LOGGER = logging.getLogger(__name__)

STAGE = "synthesis"
CHECKPOINT_LAST = "epoch-last.pth"
CHECKPOINT_BEST = "epoch-best.pth"
#: Fixed validation patches drawn from every validation pair.
VAL_PATCHES_PER_PAIR = 4
#: First words of the seed sequences, so training and validation draw unrelated patches.
_TRAIN_STREAM, _VAL_STREAM = 0, 1
#: Keys of a training example that go to the device.
_BATCH_KEYS = ("src_lr", "tgt_lr", "coord", "src_hr", "tgt_hr", "src_prompt", "tgt_prompt")
#: Columns of train_log: the loss and its two directions.
LOSS_COLUMNS = ("loss", "loss_src_to_tgt", "loss_tgt_to_src")


# --------------------------------------------------------------------------- prompts


def embed_prompts(
    encoder: TextEncoder, prompts: Sequence[str], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Every distinct prompt's (C,) float32 embedding, computed once on the CPU.

    Embedding exactly like :meth:`tumsyn_bids.model.Synthesizer.embed` (same tokenizer, same
    pooling) matters: the network learns the embeddings the app will later feed it.
    """
    unique = list(dict.fromkeys(prompts))
    encoder = encoder.cpu().eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():  # not inference_mode: the table feeds layers that save it for backward
        for i in range(0, len(unique), batch_size):
            chunk = unique[i : i + batch_size]
            tokens = tokenize(chunk, encoder.config.context_length)
            for prompt, emb in zip(chunk, encoder(tokens).float(), strict=True):
                out[prompt] = emb.clone()
    return out


def _check_prompts(pairs: Sequence[ImagePair], context_length: int) -> None:
    """Fail before any training if a prompt does not fit the text encoder, naming its image."""
    for pair in pairs:
        for image in (pair.source, pair.target):
            try:
                tokenize(image.prompt, context_length)
            except PromptTooLongError as exc:
                raise TrainingDataError(f"{image.relpath}: {exc}") from exc


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PairVolumes:
    """A pair's normalised volumes, cropped to the source's non-zero box, and its prompt ids."""

    source: np.ndarray
    target: np.ndarray
    source_prompt: int
    target_prompt: int
    name: str


def load_pairs(
    pairs: Sequence[ImagePair], prompt_ids: dict[str, int], show_progress: bool = False
) -> list[PairVolumes]:
    """Read, normalise and crop every pair once; sampling then never touches the disk.

    Cropping here is what the authors do per sample; it is idempotent, so sampling from the
    cropped arrays gives the same patches while skipping a pass over the full volume. An image
    that is in several pairs (every image is, and with several runs per modality in many) is
    read once: the pairs hold views of one array, so memory grows with images, not pairs.
    """
    volumes: dict[tuple[Path, Path | None], np.ndarray] = {}

    def volume(path: Path, reference: Path | None = None) -> np.ndarray:
        if (path, reference) not in volumes:
            volumes[path, reference] = load_normalised(path, reference=reference)
        return volumes[path, reference]

    out = []
    for pair in progress(pairs, show_progress, desc="loading pairs", unit="pair"):
        name = f"{pair.source.relpath} + {pair.target.relpath}"
        try:
            reference = pair.source.path if pair.resample else None
            src, tgt, _ = crop_to_source(
                volume(pair.source.path), volume(pair.target.path, reference)
            )
        except (InputImageError, ValueError) as exc:
            raise TrainingDataError(f"{name}: {exc}") from exc
        out.append(
            PairVolumes(
                source=src,
                target=tgt,
                source_prompt=prompt_ids[pair.source.prompt],
                target_prompt=prompt_ids[pair.target.prompt],
                name=name,
            )
        )
    return out


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


# --------------------------------------------------------------------------- model and loss


class BidirectionalSynthesis(nn.Module):
    """Both directions of a pair in one forward (the authors' ``LCCD.forward``).

    DistributedDataParallel expects one forward per backward; the network is called twice inside
    it, with separate BatchNorm statistics per direction as in the authors' code.
    """

    def __init__(self, network: SynthesisNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(
        self,
        src_lr: torch.Tensor,
        tgt_lr: torch.Tensor,
        coord: torch.Tensor,
        src_emb: torch.Tensor,
        tgt_emb: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network(src_lr, coord, tgt_emb), self.network(tgt_lr, coord, src_emb)


def predict_both(
    model: nn.Module, batch: dict[str, torch.Tensor], table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(source→target, target→source) predictions of a batch; prompt ids index ``table``.

    ``model`` is a :class:`BidirectionalSynthesis`, possibly wrapped in DistributedDataParallel.
    """
    return model(
        batch["src_lr"],
        batch["tgt_lr"],
        batch["coord"],
        table[batch["src_prompt"]],
        table[batch["tgt_prompt"]],
    )


def build_network(config: SynthesisTrainingConfig, embed_dim: int) -> SynthesisNetwork:
    """A fresh network whose feature width is the text embedding's, or the ``--init-from`` one."""
    if embed_dim % FUSION_HEADS:
        raise CheckpointError(
            f"{config.text_encoder}: the text embedding has {embed_dim} dimensions, which the "
            f"synthesis network's {FUSION_HEADS}-head fusion block cannot split; train the text "
            f"encoder with an --embed-dim divisible by {FUSION_HEADS}"
        )
    if config.init_from is None:
        return SynthesisNetwork(
            SynthesisConfig(
                n_resblocks=config.n_resblocks,
                n_feats=config.n_feats,
                out_dim=embed_dim,
                res_scale=config.res_scale,
                decoder_hidden=tuple(config.decoder_hidden),
            )
        )
    network = load_synthesis(config.init_from).model
    if network.config.out_dim != embed_dim:
        raise CheckpointError(
            f"{config.init_from}: its features have {network.config.out_dim} channels but the "
            f"text encoder {config.text_encoder} embeds prompts in {embed_dim}; they must match"
        )
    LOGGER.info(
        "starting from %s (its sizes replace --n-resblocks/--n-feats/--decoder-hidden)",
        config.init_from,
    )
    return network


def memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU, where oneDNN's 3-D convolutions run about 20 % faster with it
    (forward and backward; the same choice as :class:`~tumsyn_bids.model.Synthesizer`)."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: batch[k].to(device, non_blocking=True) for k in _BATCH_KEYS}
    for key in ("src_lr", "tgt_lr"):
        out[key] = out[key].contiguous(memory_format=memory_format(device))
    return out


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
        batch = _to_device({k: torch.stack([e[k] for e in chunk]) for k in _BATCH_KEYS}, device)
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


# --------------------------------------------------------------------------- checkpoints


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


def _resume(
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


def _payload(
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


# --------------------------------------------------------------------------- training


def train_synthesis(config: SynthesisTrainingConfig) -> Path:
    """Run stage 2 (in this process or as one ``torchrun`` rank); ``epoch-last.pth``'s path."""
    ctx = init_distributed(config.device)
    try:
        return _train(config, ctx)
    finally:
        shutdown(ctx)


def _check_options(config: SynthesisTrainingConfig) -> None:
    if config.text_encoder is None:
        raise CheckpointError("stage 2 needs the stage-1 text encoder (--text-encoder CKPT)")
    problems = []
    if not 1 <= config.scale_min <= config.scale_max:
        problems.append(
            f"need 1 <= --scale-min <= --scale-max (got {config.scale_min}, {config.scale_max})"
        )
    if config.val_scale is not None and config.val_scale < 1:
        problems.append(f"--val-scale must be at least 1 (got {config.val_scale})")
    if config.lr_size < 1 or not 0 < config.sample_q <= config.lr_size**3:
        problems.append(
            f"--sample-q must be between 1 and --lr-size cubed ({config.lr_size**3}): query points "
            "are drawn without replacement from the HR patch"
        )
    if config.augment_blur < 0 or config.augment_noise < 0:
        problems.append("--augment-blur and --augment-noise must be >= 0")
    for name in ("batch_size", "patches_per_pair", "epochs", "epoch_val", "epoch_save"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if problems:
        raise TrainingDataError("; ".join(problems))


def _select_pairs(
    config: SynthesisTrainingConfig,
) -> tuple[list[ImagePair], list[ImagePair]]:
    train_images, val_images = select_images(config)
    pairs, skipped = modality_pairs(train_images, config.resample_pairs)
    val_pairs, val_skipped = modality_pairs(val_images, config.resample_pairs)
    for line in skipped + val_skipped:
        LOGGER.warning("pair skipped: %s", line)
    if not pairs:
        raise NoTrainingData(
            f"{config.bids_dir}: no co-registered pairs of two modalities within one subject and "
            f"session among {len(train_images)} training images"
            + (f" ({len(skipped)} off-grid pair(s) skipped, see above)" if skipped else "")
        )
    if val_images and not val_pairs:
        LOGGER.warning(
            "the validation subjects have no usable modality pairs; validating on nothing"
        )
    return pairs, val_pairs


@dataclass(frozen=True)
class PreparedData:
    """Everything sampling needs, in memory: volumes, fixed validation patches, prompt table."""

    train: list[PairVolumes]
    n_val_pairs: int
    val_examples: list[dict[str, torch.Tensor]]
    prompts: list[str]
    #: The modality (BIDS suffix) of each prompt: a prompt names its modality, so it has one.
    prompt_suffixes: list[str]
    #: (n_prompts, embed_dim) float32 on the CPU; ``src_prompt``/``tgt_prompt`` index its rows.
    table: torch.Tensor
    text_encoder: dict[str, Any]


def prepare_data(
    config: SynthesisTrainingConfig, sampling: Sampling, show_progress: bool = False
) -> PreparedData:
    """Pairs from the BIDS index, their prompts embedded, their volumes loaded and cropped."""
    pairs, val_pairs = _select_pairs(config)
    text = load_text_encoder(config.text_encoder, heads=config.text_heads)
    encoder: TextEncoder = text.model
    _check_prompts([*pairs, *val_pairs], encoder.config.context_length)
    embeddings = embed_prompts(
        encoder, [i.prompt for p in [*pairs, *val_pairs] for i in (p.source, p.target)]
    )
    record = {
        "path": str(Path(config.text_encoder).resolve()),
        "sha256": file_sha256(config.text_encoder),
        "heads": int(text.extra["transformer_heads"]),
        "embed_dim": int(encoder.config.embed_dim),
    }
    del text, encoder  # frozen and no longer needed: only the embeddings are
    prompts = list(embeddings)
    suffixes = {i.prompt: i.suffix for p in [*pairs, *val_pairs] for i in (p.source, p.target)}
    prompt_ids = {p: i for i, p in enumerate(prompts)}
    val_data = load_pairs(val_pairs, prompt_ids, show_progress)
    return PreparedData(
        train=load_pairs(pairs, prompt_ids, show_progress),
        n_val_pairs=len(val_data),
        val_examples=validation_examples(val_data, sampling, config.seed, config.val_scale),
        prompts=prompts,
        prompt_suffixes=[suffixes[p] for p in prompts],
        table=torch.stack([embeddings[p] for p in prompts]),
        text_encoder=record,
    )


def _metadata(
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


def _train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    table: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on both directions; the detached (loss, src→tgt, tgt→src) losses."""
    pred_tgt, pred_src = predict_both(model, batch, table)
    loss_src_to_tgt = F.l1_loss(pred_tgt, batch["tgt_hr"])
    loss_tgt_to_src = F.l1_loss(pred_src, batch["src_hr"])
    loss = 0.5 * loss_src_to_tgt + 0.5 * loss_tgt_to_src
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), loss_src_to_tgt.detach(), loss_tgt_to_src.detach()


def _train(config: SynthesisTrainingConfig, ctx: DistributedContext) -> Path:
    _check_options(config)
    out_dir = Path(config.out_dir)
    last_path = checkpoint_to_continue(config, CHECKPOINT_LAST)
    show = config.progress and ctx.is_main
    sampling = Sampling.from_config(config)
    data = prepare_data(config, sampling, show)
    table = data.table.to(ctx.device)

    dataset = PatchDataset(data.train, config.patches_per_pair, sampling, config.seed)
    sampler = EpochSampler(len(dataset), ctx.rank, ctx.world_size, config.seed)
    loader = make_train_loader(dataset, sampler, config, ctx.device.type == "cuda")
    batches_per_epoch = math.ceil(sampler.per_rank / config.batch_size)
    total_steps = config.epochs * batches_per_epoch
    stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps

    seed_everything(config.seed)  # every rank builds the same initial model
    network = build_network(config, int(table.shape[1])).to(ctx.device)
    network.to(memory_format=memory_format(ctx.device))
    if config.init_from is not None:
        # Record the sizes the run trains, not the --n-*/--decoder-hidden values it ignored.
        net = network.config
        config = replace(
            config,
            n_resblocks=net.n_resblocks,
            n_feats=net.n_feats,
            res_scale=net.res_scale,
            decoder_hidden=list(net.decoder_hidden),
        )
    seed_everything(config.seed, ctx.rank)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.milestones), gamma=config.gamma
    )
    meta = _metadata(config, data, sampling, ctx, batches_per_epoch)
    state = RunState()
    if config.resume:
        state = _resume(last_path, network, optimizer, scheduler, meta)
    if ctx.is_main:
        write_run_config(config, {k: meta[k] for k in ("stage", "version", "world_size")})
        LOGGER.info(
            "%d training and %d validation pairs, %d distinct prompts; world size %d, batches of "
            "up to %d patches per process, %d steps an epoch, %d epochs%s",
            len(data.train),
            data.n_val_pairs,
            len(data.prompts),
            ctx.world_size,
            config.batch_size,
            batches_per_epoch,
            config.epochs,
            f", stopping at step {stop_step}" if stop_step < total_steps else "",
        )
        if not data.val_examples:
            LOGGER.warning(
                "no validation pairs (--val-participant-label): %s will keep the epoch with the "
                "lowest training loss, which says nothing about how well the model generalises",
                CHECKPOINT_BEST,
            )
        if config.resume:
            LOGGER.info("resuming %s after epoch %d, step %d", last_path, state.epoch, state.step)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: tuned kernels pay off

    model = ctx.wrap(BidirectionalSynthesis(network))
    model.train()
    train_log = MetricsLog(out_dir, "train_log", enabled=ctx.is_main)
    val_log = MetricsLog(out_dir, "val_log", enabled=ctx.is_main)
    bar = progress(None, show, total=stop_step, initial=state.step, unit="step")

    def save(path: Path) -> None:
        if ctx.is_main:
            atomic_torch_save(_payload(network, optimizer, scheduler, state, meta, config.lr), path)

    # Throughput counts the time spent in the loop (loading included), not validation or saving.
    busy, patches_since = 0.0, 0
    saved_step = state.step if config.resume else -1
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.step >= stop_step:
            break
        # The authors set the lr to 1e-5 here, every epoch: a bug we do not copy (see the top).
        lr = optimizer.param_groups[0]["lr"]
        sampler.set_epoch(epoch, skip=state.epoch_step * config.batch_size)
        tick = time.perf_counter()
        for batch in loader:
            losses = _train_step(model, _to_device(batch, ctx.device), table, optimizer)
            state.step += 1
            state.epoch_step += 1
            state.epoch_loss_sum += losses[0].item()
            patches_since += len(batch["src_lr"])
            bar.update(1)
            now = time.perf_counter()
            busy, tick = busy + now - tick, now
            if state.step % max(1, config.log_every) == 0 or state.step == stop_step:
                row = {"epoch": epoch, "step": state.step, "lr": lr}
                for key, value in zip(LOSS_COLUMNS, losses, strict=True):
                    row[key] = ctx.mean(value.item())
                row["patches_per_s"] = patches_since * ctx.world_size / max(busy, 1e-9)
                row["world_size"] = ctx.world_size
                train_log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                busy, patches_since = 0.0, 0
            if state.step >= stop_step:
                break

        if state.epoch_step < batches_per_epoch:  # --max-steps stopped inside the epoch
            break
        scheduler.step()
        epoch_loss = ctx.mean(state.epoch_loss_sum / state.epoch_step)
        state.epoch, state.epoch_step, state.epoch_loss_sum = epoch, 0, 0.0
        info = [f"epoch {epoch}/{config.epochs}", f"lr {lr:.3g}", f"loss {epoch_loss:.4f}"]
        is_best = False
        # Only rank 0 validates and saves, so only its record of the best matters.
        if (epoch % config.epoch_val == 0 or epoch == config.epochs) and ctx.is_main:
            if data.val_examples:
                scores = evaluate(
                    network,
                    data.val_examples,
                    table,
                    ctx.device,
                    config.batch_size,
                    data.prompt_suffixes,
                )
                val_log.write({"epoch": epoch, "step": state.step, **scores})
                info.append(f"val PSNR {scores['val_psnr']:.2f} dB")
                metric, value = "val_psnr", scores["val_psnr"]
            else:
                metric, value = "train_loss", epoch_loss
            is_best = state.improves(metric, value)
            if is_best:
                state.best_metric, state.best_value, state.best_epoch = metric, value, epoch
        if ctx.is_main:
            LOGGER.info(", ".join(info))
        save(last_path)
        if epoch % config.epoch_save == 0:
            save(out_dir / f"epoch-{epoch}.pth")
        if is_best:
            save(out_dir / CHECKPOINT_BEST)
        saved_step = state.step
        ctx.barrier()
    bar.close()

    if saved_step != state.step:
        save(last_path)
    if ctx.is_main:
        best = "none yet"
        if state.best_value is not None:
            best = f"{state.best_metric} {state.best_value:.4f} at epoch {state.best_epoch}"
        LOGGER.info(
            "stopped after epoch %d, step %d: %s; best: %s",
            state.epoch,
            state.step,
            last_path,
            best,
        )
    ctx.barrier()
    return last_path
