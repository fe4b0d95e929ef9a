"""Nipype workflow factories (public API for embedding TUMSyn in other pipelines)."""

from ..config import InferenceConfig
from .base import init_synthesis_wf, init_tumsyn_wf

__all__ = ["InferenceConfig", "init_synthesis_wf", "init_tumsyn_wf"]
