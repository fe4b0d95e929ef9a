"""Nipype interfaces wrapping tumsyn-bids' units of work; usable as nodes in other pipelines."""

from .images import CheckImage, Postprocess
from .sink import DerivativesSink
from .synthesis import Synthesize

__all__ = ["CheckImage", "DerivativesSink", "Postprocess", "Synthesize"]
