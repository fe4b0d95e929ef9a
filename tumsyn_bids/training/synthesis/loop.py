"""The stage-2 training loop: set a run up, then per epoch train, validate and write checkpoints.

:func:`setup` builds everything a run needs (data, loader, network, optimiser, the state restored
by ``--resume``) into a :class:`Run`; :func:`train_epoch` trains one epoch from where the run
stands; :func:`validate` scores it and keeps track of the best epoch; :func:`save_checkpoints`
writes ``epoch-last.pth``, ``epoch-N.pth`` and ``epoch-best.pth``. Only rank 0 validates and
writes; every rank trains.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...model.checkpoints import CheckpointError
from ...model.network import SynthesisNetwork
from ..common import (
    atomic_torch_save,
    checkpoint_to_continue,
    progress,
    seed_everything,
    write_run_config,
)
from ..config import SynthesisTrainingConfig
from ..distributed import DistributedContext, init_distributed, shutdown
from ..errors import TrainingDataError
from ..metrics import MetricsLog
from .checkpoints import CHECKPOINT_BEST, CHECKPOINT_LAST, RunState, metadata, payload, resume
from .data import PreparedData, prepare_data
from .network import (
    BidirectionalSynthesis,
    build_network,
    memory_format,
    to_device,
    train_step,
)
from .sampling import EpochSampler, PatchDataset, Sampling, make_train_loader
from .validation import evaluate

LOGGER = logging.getLogger(__name__)

#: Columns of train_log: the loss and its two directions.
LOSS_COLUMNS = ("loss", "loss_src_to_tgt", "loss_tgt_to_src")


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


@dataclass
class Throughput:
    """Seconds spent in the loop (data loading included; validation and saving not) and patches
    trained since the last ``train_log`` row, for its ``patches_per_s``."""

    busy: float = 0.0
    patches: int = 0


@dataclass
class Run:
    """One stage-2 run on this rank, as :func:`setup` leaves it."""

    #: The options, with the network sizes of ``--init-from`` when it is given.
    config: SynthesisTrainingConfig
    ctx: DistributedContext
    data: PreparedData
    #: The prompt embedding table on the training device.
    table: torch.Tensor
    sampler: EpochSampler
    loader: DataLoader
    network: SynthesisNetwork
    #: The bidirectional forward around ``network``, wrapped for DistributedDataParallel.
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    #: Provenance stored in every checkpoint.
    meta: dict[str, Any]
    state: RunState
    last_path: Path
    batches_per_epoch: int
    #: The step after which the run stops (``--max-steps``, else the end of the last epoch).
    stop_step: int
    train_log: MetricsLog
    val_log: MetricsLog
    bar: Any
    throughput: Throughput = field(default_factory=Throughput)

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def save(self, path: Path) -> None:
        """Write the run as it stands to ``path`` (rank 0 only)."""
        if self.ctx.is_main:
            state = payload(
                self.network, self.optimizer, self.scheduler, self.state, self.meta, self.config.lr
            )
            atomic_torch_save(state, path)


def _train(config: SynthesisTrainingConfig, ctx: DistributedContext) -> Path:
    run = setup(config, ctx)
    state = run.state
    saved_step = state.step if run.config.resume else -1
    for epoch in range(state.epoch + 1, run.config.epochs + 1):
        if state.step >= run.stop_step:
            break
        # The authors set the lr to 1e-5 here, every epoch: a bug we do not copy (see the top).
        lr = run.optimizer.param_groups[0]["lr"]
        train_epoch(run, epoch)
        if state.epoch_step < run.batches_per_epoch:  # --max-steps stopped inside the epoch
            break
        epoch_loss = close_epoch(run, epoch)
        info = [f"epoch {epoch}/{run.config.epochs}", f"lr {lr:.3g}", f"loss {epoch_loss:.4f}"]
        is_best = False
        # Only rank 0 validates and saves, so only its record of the best matters.
        if (epoch % run.config.epoch_val == 0 or epoch == run.config.epochs) and ctx.is_main:
            is_best, note = validate(run, epoch, epoch_loss)
            info += [note] if note else []
        if ctx.is_main:
            LOGGER.info(", ".join(info))
        save_checkpoints(run, epoch, is_best)
        saved_step = state.step
        ctx.barrier()
    run.bar.close()
    finish(run, saved_step)
    return run.last_path


def setup(config: SynthesisTrainingConfig, ctx: DistributedContext) -> Run:
    """Check the options, load the data, build loader, network and optimiser, and with
    ``--resume`` restore them from ``epoch-last.pth``.

    Raises :class:`~.errors.TrainingDataError` on bad options or data,
    :class:`~tumsyn_bids.model.checkpoints.CheckpointError` on unusable weights, and
    ``FileExistsError`` when ``OUT_DIR`` holds a run and ``--resume`` is not given.
    """
    _check_options(config)
    last_path = checkpoint_to_continue(config, CHECKPOINT_LAST)
    show = config.progress and ctx.is_main
    sampling = Sampling.from_config(config)
    data = prepare_data(config, sampling, show, ctx)
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
    meta = metadata(config, data, sampling, ctx, batches_per_epoch)
    state = RunState()
    if config.resume:
        state = resume(last_path, network, optimizer, scheduler, meta)
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
    out_dir = Path(config.out_dir)
    return Run(
        config=config,
        ctx=ctx,
        data=data,
        table=table,
        sampler=sampler,
        loader=loader,
        network=network,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        meta=meta,
        state=state,
        last_path=last_path,
        batches_per_epoch=batches_per_epoch,
        stop_step=stop_step,
        train_log=MetricsLog(out_dir, "train_log", enabled=ctx.is_main),
        val_log=MetricsLog(out_dir, "val_log", enabled=ctx.is_main),
        bar=progress(None, show, total=stop_step, initial=state.step, unit="step"),
    )


def train_epoch(run: Run, epoch: int) -> None:
    """Train epoch ``epoch`` from where the run stands (mid-epoch after a resume) to its end, or
    to the ``--max-steps`` stop; write a ``train_log`` row every ``--log-every`` steps."""
    config, ctx, state, speed = run.config, run.ctx, run.state, run.throughput
    lr = run.optimizer.param_groups[0]["lr"]
    run.sampler.set_epoch(epoch, skip=state.epoch_step * config.batch_size)
    tick = time.perf_counter()
    for batch in run.loader:
        losses = train_step(run.model, to_device(batch, ctx.device), run.table, run.optimizer)
        state.step += 1
        state.epoch_step += 1
        state.epoch_loss_sum += losses[0].item()
        speed.patches += len(batch["src_lr"])
        run.bar.update(1)
        now = time.perf_counter()
        speed.busy, tick = speed.busy + now - tick, now
        if state.step % max(1, config.log_every) == 0 or state.step == run.stop_step:
            row = {"epoch": epoch, "step": state.step, "lr": lr}
            for key, value in zip(LOSS_COLUMNS, losses, strict=True):
                row[key] = ctx.mean(value.item())
            row["patches_per_s"] = speed.patches * ctx.world_size / max(speed.busy, 1e-9)
            row["world_size"] = ctx.world_size
            run.train_log.write(row)
            run.bar.set_postfix(loss=f"{row['loss']:.4f}")
            speed.busy, speed.patches = 0.0, 0
        if state.step >= run.stop_step:
            break


def close_epoch(run: Run, epoch: int) -> float:
    """Step the learning-rate schedule and mark ``epoch`` complete; its mean training loss over
    all ranks."""
    run.scheduler.step()
    state = run.state
    epoch_loss = run.ctx.mean(state.epoch_loss_sum / state.epoch_step)
    state.epoch, state.epoch_step, state.epoch_loss_sum = epoch, 0, 0.0
    return epoch_loss


def validate(run: Run, epoch: int, epoch_loss: float) -> tuple[bool, str | None]:
    """Score ``epoch`` and update the best so far: (whether it is the best, the validation PSNR
    for the log line, or None without validation pairs).

    The mean PSNR of the validation patches decides, written to ``val_log``; without validation
    pairs, the epoch's mean training loss.
    """
    data, state = run.data, run.state
    note = None
    if data.val_examples:
        scores = evaluate(
            run.network,
            data.val_examples,
            run.table,
            run.ctx.device,
            run.config.batch_size,
            data.prompt_suffixes,
        )
        run.val_log.write({"epoch": epoch, "step": state.step, **scores})
        note = f"val PSNR {scores['val_psnr']:.2f} dB"
        metric, value = "val_psnr", scores["val_psnr"]
    else:
        metric, value = "train_loss", epoch_loss
    is_best = state.improves(metric, value)
    if is_best:
        state.best_metric, state.best_value, state.best_epoch = metric, value, epoch
    return is_best, note


def save_checkpoints(run: Run, epoch: int, is_best: bool) -> None:
    """``epoch-last.pth`` after every epoch, ``epoch-N.pth`` every ``--epoch-save`` epochs, and
    ``epoch-best.pth`` when ``epoch`` is the best so far (rank 0 only)."""
    run.save(run.last_path)
    if epoch % run.config.epoch_save == 0:
        run.save(run.out_dir / f"epoch-{epoch}.pth")
    if is_best:
        run.save(run.out_dir / CHECKPOINT_BEST)


def finish(run: Run, saved_step: int) -> None:
    """Save where ``--max-steps`` stopped inside an epoch, and log the outcome."""
    state = run.state
    if saved_step != state.step:
        run.save(run.last_path)
    if run.ctx.is_main:
        best = "none yet"
        if state.best_value is not None:
            best = f"{state.best_metric} {state.best_value:.4f} at epoch {state.best_epoch}"
        LOGGER.info(
            "stopped after epoch %d, step %d: %s; best: %s",
            state.epoch,
            state.step,
            run.last_path,
            best,
        )
    run.ctx.barrier()
