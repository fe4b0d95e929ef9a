"""Stage 1: train TUMSyn's text encoder contrastively against a 3-D image tower.

Every training image is paired with the prompt the BIDS App would write for it; a batch of pairs
gives a logit matrix of scaled cosine similarities between every image and every prompt, and the
symmetric cross-entropy pulls the matching pairs (the diagonal) together and pushes the rest
apart. This follows the authors' ``CLIP_training/train.py``: AdamW, cosine schedule with linear
warm-up over the first 20 % of the steps, the logit scale clamped after every step, images
percentile-normalised and centred in a cube.

Differences worth knowing:

* Under ``torchrun`` the features of every rank are gathered (with gradients) before the loss, so
  the negatives are the global batch, as with the authors' ``DataParallel``.
* The schedule spans ``epochs x batches per epoch`` (the authors' ``t_total``); ``--max-steps``
  only stops early, so a run cut into chunks with ``--max-steps`` and ``--resume`` follows the
  same learning-rate curve as one uninterrupted run.
* The shuffling of epoch ``e`` depends only on the seed and ``e``, so a resumed run sees the same
  batches as an uninterrupted one.

Outputs in ``OUT_DIR``: ``checkpoint_last.pt`` (the authors' format plus scheduler state and our
metadata; rewritten after every epoch), ``text_encoder.pt`` (the same without optimiser state,
for ``tumsyn --text-encoder``), ``train_log.{csv,jsonl}``, ``val_log.{csv,jsonl}`` and
``config.json``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .. import __version__
from ..model.clip import (
    ContrastiveModel,
    ImageTowerConfig,
    centre_cube,
    clamp_logit_scale,
    contrastive_loss,
    feature_grid,
)
from ..model.inference import InputImageError
from ..model.metadata import EXTRA_KEY
from ..model.text_encoder import TextEncoderConfig
from ..model.tokenizer import CONTEXT_LENGTH, PromptTooLongError, tokenize
from .common import (
    atomic_torch_save,
    checkpoint_to_continue,
    make_loader,
    progress,
    read_resume_checkpoint,
    refuse_size_changes,
    seed_everything,
    select_images,
    set_epoch,
    warn_if_run_changed,
    write_run_config,
)
from .config import TextEncoderTrainingConfig
from .data import TrainingImage, load_normalised
from .distributed import DistributedContext, init_distributed, shutdown
from .errors import TrainingDataError
from .metrics import MetricsLog
from .schedules import cosine_with_warmup

LOGGER = logging.getLogger(__name__)

STAGE = "text-encoder"
CHECKPOINT_LAST = "checkpoint_last.pt"
TEXT_ENCODER_FILE = "text_encoder.pt"
#: Decoded cubes are kept in memory when all of them fit in this many bytes (per process).
CACHE_LIMIT_BYTES = 2 * 1024**3


# --------------------------------------------------------------------------- data


class ImageTextDataset(Dataset):
    """``(cube [1, S, S, S] float32, token ids [context])`` for every training image.

    Prompts are tokenised up front, so a prompt that does not fit fails before training starts.
    Cubes are decoded on first use and kept when ``cache`` is set (reading and normalising a
    NIfTI costs far more than a step of a small model).
    """

    def __init__(self, images: Sequence[TrainingImage], image_size: int, cache: bool) -> None:
        self.images = list(images)
        self.image_size = int(image_size)
        self.tokens = tokenize_prompts(self.images)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> torch.Tensor:
        image = self.images[index]
        try:
            volume = load_normalised(image.path)
        except InputImageError as exc:
            raise TrainingDataError(f"{image.relpath}: {exc}") from exc
        cube = centre_cube(volume, self.image_size).astype(np.float32, copy=False)
        return torch.from_numpy(np.ascontiguousarray(cube))[None]

    def preload(self, show_progress: bool = False) -> None:
        """Decode every cube now (before data-loader workers fork and share the memory)."""
        if self._cache is None:
            return
        for i in progress(range(len(self)), show_progress, desc="loading images", unit="img"):
            self._cache.setdefault(i, self.load(i))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            return self.load(index), self.tokens[index]
        cube = self._cache.get(index)
        if cube is None:
            cube = self._cache[index] = self.load(index)
        return cube, self.tokens[index]


def tokenize_prompts(images: Sequence[TrainingImage]) -> torch.Tensor:
    """Token ids of every prompt; a prompt that does not fit names its image."""
    rows = []
    for image in images:
        try:
            rows.append(tokenize(image.prompt, CONTEXT_LENGTH))
        except PromptTooLongError as exc:
            raise TrainingDataError(f"{image.relpath}: {exc}") from exc
    return torch.cat(rows) if rows else torch.zeros(0, CONTEXT_LENGTH, dtype=torch.long)


def check_pairs(images: Sequence[TrainingImage], batch_size: int, world_size: int) -> None:
    """Refuse data the contrastive loss cannot learn from; warn about what weakens it.

    A batch of one pair has nothing to contrast with (the loss is identically 0), and when every
    prompt is the same the text tower has nothing to tell apart.
    """
    if len(images) < 2:
        raise TrainingDataError(
            f"contrastive training needs at least 2 training images (each image is contrasted "
            f"with the other prompts of its batch); the selection holds {len(images)}"
        )
    if batch_size * world_size < 2:
        raise TrainingDataError(
            "a global batch of 1 image gives a contrastive loss of 0; use --batch-size 2 or more"
        )
    counts = Counter(image.prompt for image in images)
    if len(counts) == 1:
        raise TrainingDataError(
            f"all {len(images)} training images have the same prompt, so the text encoder has "
            f"nothing to learn: {next(iter(counts))!r}"
        )
    shared = sum(n for n in counts.values() if n > 1)
    if shared:
        LOGGER.warning(
            "%d of %d training images share their prompt with another image; when two of them "
            "meet in a batch each is counted as the other's negative",
            shared,
            len(images),
        )


def _cache_fits(n_images: int, image_size: int) -> bool:
    return n_images * image_size**3 * 4 <= CACHE_LIMIT_BYTES


def _start_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make epoch ``epoch``'s order a function of (seed, epoch) only, so resuming repeats it."""
    set_epoch(loader, epoch)
    if isinstance(loader.sampler, RandomSampler) and loader.generator is not None:
        loader.generator.manual_seed(seed + epoch)


# --------------------------------------------------------------------------- model and loss


def build_model(config: TextEncoderTrainingConfig) -> ContrastiveModel:
    text = TextEncoderConfig(
        width=config.text_width,
        layers=config.text_layers,
        heads=config.text_heads,
        context_length=CONTEXT_LENGTH,
        embed_dim=config.embed_dim,
    )
    image = ImageTowerConfig(
        image_size=config.image_size,
        layers=tuple(config.vision_layers),
        width=config.vision_width,
        embed_dim=config.embed_dim,
    )
    return ContrastiveModel(text, image)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands every rank the summed gradient of its slice.

    Written out (rather than ``torch.distributed.nn.functional.all_gather``, deprecated) with an
    all-reduce in the backward, which every backend supports, gloo included.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_features(ctx: DistributedContext, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's features, concatenated in rank order, with gradients flowing back.

    Each rank's loss is the loss of the whole global batch; the backward sums every rank's
    gradient for this rank's slice, and DistributedDataParallel then averages over ranks, so the
    parameter gradient is exactly that of the global-batch loss. Every rank must pass the same
    number of rows (DistributedSampler pads the ranks to equal length).
    """
    if not ctx.distributed:
        return features
    return tuple(_GatherWithGrad.apply(f) for f in features)


@torch.no_grad()
def evaluate(
    model: ContrastiveModel, dataset: ImageTextDataset, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Loss and accuracy over the whole validation set at once (not per batch).

    Every validation image competes with every validation prompt, which makes the numbers
    independent of the batch size and of the number of ranks.
    """
    was_training = model.training
    model.eval()
    images, texts = [], []
    loader = DataLoader(dataset, batch_size=max(1, batch_size), shuffle=False)
    for cubes, tokens in loader:
        img, txt = model(cubes.to(device), tokens.to(device))
        images.append(img.float())
        texts.append(txt.float())
    loss, accuracy = contrastive_loss(torch.cat(images), torch.cat(texts), model.logit_scale)
    model.train(was_training)
    return {"val_loss": float(loss), "val_accuracy": float(accuracy), "n_images": len(dataset)}


# --------------------------------------------------------------------------- checkpoints


def _metadata(
    model: ContrastiveModel, config: TextEncoderTrainingConfig, run: dict[str, Any]
) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "version": __version__,
        # load_text_encoder reads this: shapes cannot tell the head count.
        "transformer_heads": model.config.heads,
        "model": model.sizes(),
        "config": config.to_dict(),
        **run,
    }


def _checkpoint(
    model: ContrastiveModel,
    meta: dict[str, Any],
    step: int,
    batches_per_epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, Any]:
    """The authors' layout (``epoch`` is the 0-based epoch of the last step) plus ours."""
    payload: dict[str, Any] = {
        "epoch": max(step - 1, 0) // batches_per_epoch,
        "global_step": step,
        "model_state_dict": model.state_dict(),
    }
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler_state_dict"] = scheduler.state_dict()
    payload[EXTRA_KEY] = meta
    return payload


def _size_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for part in ("image", "text"):
        a, b = saved.get(part, {}), current.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{part} {key}: checkpoint {a.get(key)}, options {b.get(key)}")
    return out


def _resume(
    path: Path,
    model: ContrastiveModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    run: dict[str, Any],
) -> int:
    """Restore model, optimiser and scheduler; the global step reached."""
    ckpt = read_resume_checkpoint(path, STAGE)
    extra = ckpt[EXTRA_KEY]
    refuse_size_changes(path, _size_differences(extra.get("model", {}), model.sizes()))
    model.load_state_dict(ckpt["model_state_dict"])
    optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    warn_if_run_changed(extra, run, ("batches_per_epoch", "total_steps"), path)
    return int(ckpt["global_step"])


# --------------------------------------------------------------------------- training


def _training_data(
    config: TextEncoderTrainingConfig, ctx: DistributedContext
) -> tuple[ImageTextDataset, ImageTextDataset | None, DataLoader, int]:
    """Training and validation sets, this rank's loader and the global batch size."""
    train_images, val_images = select_images(config, ctx)
    check_pairs(train_images, config.batch_size, ctx.world_size)
    cache = _cache_fits(len(train_images) + len(val_images), config.image_size)
    train_set = ImageTextDataset(train_images, config.image_size, cache)
    val_set = ImageTextDataset(val_images, config.image_size, cache) if val_images else None
    if cache and config.workers > 0:
        train_set.preload(config.progress and ctx.is_main)

    # Whole batches only, once there are enough images: a tail of one pair would contrast with
    # nothing on a single process. Smaller datasets give one short batch per epoch.
    drop_last = len(train_set) // ctx.world_size >= config.batch_size
    per_rank = config.batch_size if drop_last else -(-len(train_set) // ctx.world_size)
    if per_rank < 2 and feature_grid(config.image_size) < 2:
        # BatchNorm needs two values per channel; a 1^3 last feature map leaves one per image.
        raise TrainingDataError(
            f"with --image-size {config.image_size} every process needs batches of at least 2 "
            f"images, but some hold {per_rank}; raise --batch-size, use fewer processes or an "
            "image size of 64 or more"
        )
    loader = make_loader(
        train_set,
        ctx,
        config.batch_size,
        shuffle=True,
        workers=config.workers,
        seed=config.seed,
        drop_last=drop_last,
    )
    return train_set, val_set, loader, min(config.batch_size, per_rank) * ctx.world_size


def train_text_encoder(config: TextEncoderTrainingConfig) -> Path:
    """Run stage 1 (in this process or as one ``torchrun`` rank); the text encoder's path."""
    ctx = init_distributed(config.device)
    try:
        return _train(config, ctx)
    finally:
        shutdown(ctx)


def _train(config: TextEncoderTrainingConfig, ctx: DistributedContext) -> Path:
    out_dir = Path(config.out_dir)
    last_path = checkpoint_to_continue(config, CHECKPOINT_LAST)
    train_set, val_set, loader, global_batch = _training_data(config, ctx)
    batches_per_epoch = len(loader)
    total_steps = config.epochs * batches_per_epoch
    stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps

    seed_everything(config.seed)  # every rank builds the same initial model
    model = build_model(config).to(ctx.device)
    seed_everything(config.seed, ctx.rank)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    scheduler = cosine_with_warmup(optimizer, total_steps, config.warmup_fraction)
    run = {
        "world_size": ctx.world_size,
        "global_batch_size": global_batch,
        "batches_per_epoch": batches_per_epoch,
        "total_steps": total_steps,
        "n_train_images": len(train_set),
        "n_val_images": len(val_set) if val_set else 0,
    }
    meta = _metadata(model, config, run)
    step = _resume(last_path, model, optimizer, scheduler, run) if config.resume else 0
    if ctx.is_main:
        write_run_config(config, {"stage": STAGE, "version": __version__, "model": model.sizes()})
        LOGGER.info(
            "%d training and %d validation images; %d steps of %d images (%d per epoch, %d "
            "epochs)%s",
            len(train_set),
            run["n_val_images"],
            total_steps,
            global_batch,
            batches_per_epoch,
            config.epochs,
            f", stopping at step {stop_step}" if stop_step < total_steps else "",
        )
        if step:
            LOGGER.info("resuming %s at step %d", last_path, step)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed cube size: tuned kernels pay off

    bare = model
    model = ctx.wrap(model)
    model.train()
    train_log = MetricsLog(out_dir, "train_log", enabled=ctx.is_main)
    val_log = MetricsLog(out_dir, "val_log", enabled=ctx.is_main)
    saved_step = step if config.resume else -1
    bar = progress(
        None, config.progress and ctx.is_main, total=stop_step, initial=step, unit="step"
    )
    tick, images_since = time.perf_counter(), 0

    for epoch in range(step // batches_per_epoch, config.epochs):
        if step >= stop_step:
            break
        _start_epoch(loader, epoch, config.seed)
        skip = step - epoch * batches_per_epoch  # batches this epoch already ran before resuming
        for index, (cubes, tokens) in enumerate(loader):
            if index < skip:
                continue
            cubes = cubes.to(ctx.device, non_blocking=True)
            tokens = tokens.to(ctx.device, non_blocking=True)
            img, txt = gather_features(ctx, *model(cubes, tokens))
            loss, accuracy = contrastive_loss(img, txt, bare.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            clamp_logit_scale(bare)
            scheduler.step()
            step += 1
            images_since += img.shape[0]
            bar.update(1)
            if step % max(1, config.log_every) == 0 or step == stop_step:
                now = time.perf_counter()
                row = {
                    "epoch": epoch,
                    "step": step,
                    "lr": lr,
                    "loss": float(loss.detach()),
                    "accuracy": float(accuracy),
                    "logit_scale": float(bare.logit_scale.detach().exp()),
                    "images_per_s": images_since / max(now - tick, 1e-9),
                    "world_size": ctx.world_size,
                }
                train_log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}")
                tick, images_since = now, 0
            if step >= stop_step:
                break
        if step % batches_per_epoch == 0:  # the epoch ran to its end
            if val_set is not None and ctx.is_main:
                scores = evaluate(bare, val_set, ctx.device, config.batch_size)
                val_log.write({"epoch": epoch, "step": step, **scores})
                LOGGER.info(
                    "epoch %d: validation loss %.4f, accuracy %.3f",
                    epoch,
                    scores["val_loss"],
                    scores["val_accuracy"],
                )
            if ctx.is_main:
                atomic_torch_save(
                    _checkpoint(bare, meta, step, batches_per_epoch, optimizer, scheduler),
                    last_path,
                )
            saved_step = step
            ctx.barrier()
    bar.close()

    final = out_dir / TEXT_ENCODER_FILE
    if ctx.is_main:
        if saved_step != step:
            atomic_torch_save(
                _checkpoint(bare, meta, step, batches_per_epoch, optimizer, scheduler), last_path
            )
        atomic_torch_save(_checkpoint(bare, meta, step, batches_per_epoch), final)
        LOGGER.info("text encoder written to %s (step %d)", final, step)
    ctx.barrier()
    return final
