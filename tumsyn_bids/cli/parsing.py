"""Command-line value checks shared by ``tumsyn``, ``tumsyn-synth`` and ``tumsyn-eval``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

LOGGER = logging.getLogger("tumsyn_bids")


class Parser(argparse.ArgumentParser):
    """argparse with the BIDS Apps' usage exit code (64) instead of argparse's 2."""

    def error(self, message: str):
        from .errors import EX_USAGE

        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class UsageError(ValueError):
    """A command-line value that parses but cannot be used (exit code 64)."""


def one_or_three(values: Sequence[float] | None, name: str, default: float) -> tuple:
    """One value for every axis, or one per axis in the image's (i, j, k) order."""
    if not values:
        return (default,) * 3
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) == 3:
        return tuple(values)
    raise UsageError(f"{name} takes one or three values, got {len(values)}")


#: The authors' inference patch side (their demo's 60-voxel cubes).
AUTHORS_PATCH_SIZE = 60


def default_patch_size(checkpoint: Path) -> int:
    """The patch side to infer with when none is given: the one the weights were trained on
    if they record it (models trained with tumsyn-train, the bundled demo model), else the
    authors' 60.

    The fusion block pools over every voxel of a patch, so the patch extent is part of what a
    network sees; inferring on the training extent keeps it in the conditions it learned.
    """
    from ..model.metadata import training_patch_size

    trained = training_patch_size(checkpoint)
    if trained:
        LOGGER.info("no --patch-size: %d-voxel patches, as %s was trained on", trained, checkpoint)
        return trained
    return AUTHORS_PATCH_SIZE


def add_patch_size_argument(parser) -> None:
    """``--patch-size`` with the same meaning and default in every command."""
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        metavar="N",
        help="input patch side, one or three values in (i, j, k) order (default: the patch size "
        f"the weights were trained on if they record it, else {AUTHORS_PATCH_SIZE})",
    )


def patch_size(values: Sequence[int] | None, checkpoint: Path) -> tuple[int, int, int]:
    """``--patch-size`` as (i, j, k): the values given, else :func:`default_patch_size`."""
    if values:
        return tuple(int(v) for v in one_or_three(values, "--patch-size", 0))
    return (default_patch_size(checkpoint),) * 3


#: Patches of at most this many voxels go two to a forward pass unless --batch-size says otherwise.
SMALL_PATCH_VOXELS = 24**3


def default_batch_size(patch_ijk: Sequence[int]) -> int:
    """Patches per forward pass when none is given: 2 for patches of at most 24³ voxels, else 1.

    On the CPU, PyTorch gives a 3x3x3 convolution to oneDNN only when the batch holds more than
    one patch or batch x channels x depth x height exceeds 20,480; a lone small patch (20 voxels,
    32 features: 12,800) runs on its slow native kernel, two patches per pass on oneDNN. Measured
    on 2 CPU cores with the demo model, whole volumes: 2.4x (16-voxel patches), 2.7x (20) and
    3.7x (24) faster than one patch per pass; at 30, 40 and 60 voxels one patch per pass was as
    fast or faster, so larger patches (the authors' 60) keep it. (Not measured on a GPU, where one
    small patch leaves most of the device idle.) Batching changes values only at float-rounding
    level (< 1e-6).
    """
    return 2 if math.prod(int(side) for side in patch_ijk) <= SMALL_PATCH_VOXELS else 1


def add_batch_size_argument(parser) -> None:
    """``--batch-size`` with the same meaning and default in every command."""
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="patches per forward pass (default: 2 for patches of at most 24^3 voxels, else 1)",
    )


def check_batch_size(value: int | None) -> None:
    """Refuse a ``--batch-size`` below 1 (None: not given, the default applies)."""
    if value is not None and value < 1:
        raise UsageError(f"--batch-size must be at least 1, got {value}")


def batch_size(value: int | None, patch_ijk: Sequence[int]) -> int:
    """``--batch-size``: the value given (at least 1), else :func:`default_batch_size`."""
    check_batch_size(value)
    return default_batch_size(patch_ijk) if value is None else int(value)


def add_speed_arguments(parser) -> None:
    """``--speed`` (and ``--reference``, its old spelling) with the same meaning everywhere."""
    from ..model.speed import DEFAULT_SPEED, SPEEDS

    parser.add_argument(
        "--speed",
        choices=SPEEDS,
        default=None,
        help="reference: the authors' loop exactly; default: every speed-up that leaves the "
        "result unchanged (to 1e-4); fast: also skip patches with little brain and, on CUDA, "
        f"bf16 (changes the result; PSNR in docs/speed.md). Default: {DEFAULT_SPEED}",
    )
    parser.add_argument(
        "--reference", action="store_true", help="the same as --speed reference (older spelling)"
    )


def speed(value: str | None, reference: bool = False) -> str:
    """The ``--speed`` preset asked for: ``--reference`` means ``reference``; neither, the
    default. Raises :class:`UsageError` for ``--reference`` with another ``--speed``."""
    from ..model.speed import DEFAULT_SPEED

    if reference and value not in (None, "reference"):
        raise UsageError(
            f"--reference means --speed reference; it cannot be combined with --speed {value}"
        )
    return "reference" if reference else (value or DEFAULT_SPEED)


def precision(speed_name: str, device_type: str | None, requested: str | None) -> str:
    """``--precision`` as given, else the preset's for the device (bf16 for fast on CUDA).

    Raises :class:`UsageError` for bf16 on the CPU or with ``--speed reference``.
    """
    from ..model.speed import preset

    try:
        return preset(speed_name).precision(device_type, requested)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def weights_or_demo(checkpoint: str | None, text_encoder: str | None) -> tuple[Path, Path]:
    """The two weight files to use: both given, or neither (then the bundled demo model)."""
    if not checkpoint and not text_encoder:
        from ..model.bundled import DEMO_INTENDED_USE, demo_weights

        LOGGER.warning(
            "no --checkpoint/--text-encoder: using the bundled demo model. %s", DEMO_INTENDED_USE
        )
        return demo_weights()
    if not checkpoint or not text_encoder:
        raise UsageError(
            "give both --checkpoint and --text-encoder (or TUMSYN_CHECKPOINT and "
            "TUMSYN_TEXT_ENCODER), or neither to use the bundled demo model; the official "
            "weights are in Zenodo record 13119176"
        )
    return Path(checkpoint).resolve(), Path(text_encoder).resolve()


def add_weight_arguments(parser) -> None:
    """``--checkpoint``/``--text-encoder`` with the same defaults in every command."""
    parser.add_argument(
        "--checkpoint",
        default=os.environ.get("TUMSYN_CHECKPOINT"),
        help="synthesis weights (checkpoint.pth); default $TUMSYN_CHECKPOINT, else the bundled "
        "demo model (trained on phantoms; not for research use)",
    )
    parser.add_argument(
        "--text-encoder",
        default=os.environ.get("TUMSYN_TEXT_ENCODER"),
        help="text encoder weights (checkpoint_CLIP.pt); default $TUMSYN_TEXT_ENCODER, else the "
        "bundled demo model",
    )
