"""Errors a user can fix by changing the training data or options."""


class TrainingDataError(ValueError):
    """The selected data cannot be trained on (no images, no pairs, mismatched grids)."""


class NoTrainingData(TrainingDataError):
    """Nothing usable was selected (exit code 66)."""
