"""Pieces both training stages share: seeding, data selection, loaders, checkpoint files."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..bids.layout import index_anatomical
from ..model.errors import CheckpointError
from ..model.metadata import EXTRA_KEY
from .config import CommonConfig
from .data import TrainingImage, training_images
from .distributed import DistributedContext
from .errors import NoTrainingData

LOGGER = logging.getLogger(__name__)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch; ranks get different streams so they draw different patches."""
    s = int(seed) + 1000 * int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def worker_init(worker_id: int) -> None:
    """Give every data-loader worker its own numpy/random stream derived from torch's seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed((s + worker_id) % 2**32)
    random.seed(s + worker_id)


def select_images(
    config: CommonConfig, ctx: DistributedContext | None = None
) -> tuple[list[TrainingImage], list[TrainingImage]]:
    """Index the dataset like the app does; split off the validation subjects.

    Every image left out is logged with its reason. With ``config.preproc`` the images' paths
    are those of their preprocessed copies (:mod:`tumsyn_bids.training.preproc`; made by the
    main process, ``ctx``). Raises :class:`NoTrainingData` when nothing is left to train on.
    """
    index = index_anatomical(
        config.bids_dir,
        participant_labels=config.participant_labels,
        session_labels=config.session_labels,
        bids_filters=config.bids_filters,
        database_dir=config.database_dir,
    )
    images, skipped = training_images(index)
    for line in skipped:
        LOGGER.warning("left out: %s", line)
    val_subjects = {s.removeprefix("sub-") for s in (config.val_participants or [])}
    unknown = val_subjects - {i.subject for i in images}
    if unknown:
        raise NoTrainingData(
            f"{config.bids_dir}: no usable images for validation subject(s) {sorted(unknown)}"
        )
    if config.preproc:
        images = _preprocessed(config, images, ctx)
    train = [i for i in images if i.subject not in val_subjects]
    val = [i for i in images if i.subject in val_subjects]
    if not train:
        raise NoTrainingData(
            f"{config.bids_dir}: no usable anatomical images to train on"
            + (f" ({len(skipped)} left out, see the warnings above)" if skipped else "")
        )
    return train, val


def _preprocessed(
    config: CommonConfig, images: list[TrainingImage], ctx: DistributedContext | None
) -> list[TrainingImage]:
    from ..config import PreprocConfig
    from .preproc import preprocessed

    work_dir = Path(config.work_dir or Path(config.out_dir) / "work").resolve()
    settings = PreprocConfig(skull_strip_source=config.skull_strip_source, inu=config.inu)
    return preprocessed(
        images,
        Path(config.bids_dir).resolve(),
        work_dir,
        settings,
        is_main=ctx is None or ctx.is_main,
        barrier=ctx.barrier if ctx is not None and ctx.distributed else None,
        omp_nthreads=config.omp_nthreads,
    )


def make_loader(
    dataset: Dataset,
    ctx: DistributedContext,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    seed: int,
    drop_last: bool = False,
) -> DataLoader:
    """A loader that hands every rank its own share of ``dataset`` (DistributedSampler)."""
    sampler = None
    if ctx.distributed:
        sampler = DistributedSampler(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        worker_init_fn=worker_init,
        generator=generator,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed sampler for ``epoch`` (plain samplers reshuffle by themselves)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file and rename, so a killed job never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_run_config(config: CommonConfig, extra: dict[str, Any] | None = None) -> Path:
    """``OUT_DIR/config.json``: every option of the run, for the record and for ``--resume``."""
    data = {**config.to_dict(), **(extra or {})}
    path = Path(config.out_dir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def checkpoint_to_continue(config: CommonConfig, name: str) -> Path:
    """``OUT_DIR/name``: it must exist with ``--resume`` and must not without it (no run is ever
    overwritten by starting a new one in the same folder)."""
    path = Path(config.out_dir) / name
    if config.resume and not path.is_file():
        raise CheckpointError(
            f"--resume: no {name} in {config.out_dir} to continue from; drop --resume to start "
            "a new run"
        )
    if not config.resume and path.exists():
        raise FileExistsError(
            f"{path} exists: pass --resume to continue that run, or choose another OUT_DIR"
        )
    return path


def read_resume_checkpoint(path: Path, stage: str) -> dict[str, Any]:
    """A checkpoint of ``stage`` fully in memory (the optimiser state is updated in place)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    extra = ckpt.get(EXTRA_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(extra, dict) or extra.get("stage") != stage:
        raise CheckpointError(f"{path}: not written by tumsyn-train {stage}; cannot resume it")
    return ckpt


def refuse_size_changes(path: Path, differences: list[str]) -> None:
    if differences:
        raise CheckpointError(
            f"{path}: the model options differ from the run being resumed "
            f"({'; '.join(differences)}); resume with the original options or start a new run "
            "in another OUT_DIR"
        )


def warn_if_run_changed(
    saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...], path: Path
) -> None:
    """A resumed run continues exactly only with the same data, batches and processes."""
    for key in keys:
        if key in saved and saved[key] != current[key]:
            LOGGER.warning(
                "resuming %s with %s=%s (the checkpoint's run had %s): the data, batch size, "
                "sampling options or number of processes changed, so the run does not continue "
                "exactly",
                path,
                key,
                current[key],
                saved[key],
            )
