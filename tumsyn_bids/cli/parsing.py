"""Command-line value checks shared by ``tumsyn`` and ``tumsyn-synth``."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

LOGGER = logging.getLogger("tumsyn_bids")


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
