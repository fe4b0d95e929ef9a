"""Nipype workflow factories (public API for embedding TUMSyn in other pipelines)."""

from ..config import InferenceConfig
from .anat import init_anat_wf
from .base import init_tumsyn_wf
from .preproc import init_preproc_wf
from .synthesis import init_job_wf, init_synthesis_wf
from .template import add_output_spaces, init_template_wf

__all__ = [
    "InferenceConfig",
    "add_output_spaces",
    "init_anat_wf",
    "init_job_wf",
    "init_preproc_wf",
    "init_synthesis_wf",
    "init_template_wf",
    "init_tumsyn_wf",
]
