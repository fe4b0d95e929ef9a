"""TUMSyn in PyTorch: tokenizer, text encoder, synthesis network and patch inference.

Knows nothing about BIDS or nipype; arrays are in the authors' (z, y, x) order except in
:mod:`.volume`, the one place that converts from and to NIfTI files.
"""

from .checkpoints import (
    CheckpointError,
    file_sha256,
    load_synthesis,
    load_text_encoder,
    synthesis_checkpoint,
)
from .inference import InputImageError, PatchSettings, Synthesizer, percentile_normalise
from .network import SynthesisConfig, SynthesisNetwork
from .text_encoder import TextEncoder, TextEncoderConfig
from .tokenizer import PromptTooLongError, count_tokens, tokenize

__all__ = [
    "CheckpointError",
    "InputImageError",
    "PatchSettings",
    "PromptTooLongError",
    "SynthesisConfig",
    "SynthesisNetwork",
    "Synthesizer",
    "TextEncoder",
    "TextEncoderConfig",
    "count_tokens",
    "file_sha256",
    "load_synthesis",
    "load_text_encoder",
    "percentile_normalise",
    "synthesis_checkpoint",
    "tokenize",
]
