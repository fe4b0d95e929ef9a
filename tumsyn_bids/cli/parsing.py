"""Command-line value checks shared by ``tumsyn`` and ``tumsyn-synth``."""

from __future__ import annotations

from collections.abc import Sequence


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
