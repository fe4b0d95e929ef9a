"""Nipype workflow factories (public API for embedding TUMSyn in other pipelines)."""

from .base import ModelSpec, init_synthesis_wf, init_tumsyn_wf

__all__ = ["ModelSpec", "init_synthesis_wf", "init_tumsyn_wf"]
