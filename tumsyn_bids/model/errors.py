"""Exceptions of the model package, importable without torch."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not in an expected format."""


class TextHeadsError(CheckpointError):
    """The text encoder's width is not divisible by the attention head count in use."""


class InputImageError(ValueError):
    """The image cannot be synthesized from (non-finite voxels, no intensity range, ...)."""
