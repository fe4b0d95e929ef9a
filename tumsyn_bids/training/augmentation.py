"""Input degradation for stage-2 training: random blur and Rician noise on the LR inputs.

The authors train on the scans as acquired, so a model learns the noise level and sharpness of
its training scans as part of each contrast: the bundled demo model, trained on simulated scans
of one signal-to-noise ratio, draws texture into its output and fails on cleaner or smoother
inputs (T1w -> FLAIR of a held-out subject, 60-voxel patches: 13 dB from the noise-free T1w
against 21 dB from the scan). Degrading each network input by a random amount asks for the same
target from inputs of any quality in the range, which rewards ignoring the input's noise.

Only the low-resolution inputs are degraded; the high-resolution targets stay as acquired, so
the loss still compares against real voxels. Both settings default to off, the paper's training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class Degradation:
    """Upper bounds of the per-input draws (0 turns a degradation off)."""

    #: Gaussian blur sigma, in low-resolution voxels, drawn uniformly in [0, blur_max].
    blur_max: float = 0.0
    #: Rician noise sigma, as a fraction of the normalised intensity range [0, 1], drawn
    #: uniformly in [0, noise_max].
    noise_max: float = 0.0

    def __post_init__(self) -> None:
        if self.blur_max < 0 or self.noise_max < 0:
            raise ValueError(
                f"augmentation bounds must be >= 0, got blur {self.blur_max}, "
                f"noise {self.noise_max}"
            )

    @property
    def active(self) -> bool:
        return self.blur_max > 0 or self.noise_max > 0

    def apply(self, patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A degraded copy of one normalised LR patch (blur first, as a scanner's PSF acts
        before its noise); the patch itself is returned untouched when both bounds are 0.

        Each call draws its own sigmas, so the two inputs of a bidirectional example get
        independent degradations. Noise is Rician, the magnitude of a complex Gaussian, so
        background stays non-negative and dark tissue is biased up the way MR magnitude is.
        """
        if not self.active:
            return patch
        out = np.asarray(patch, dtype=np.float32)
        if self.blur_max > 0:
            sigma = rng.uniform(0.0, self.blur_max)
            out = gaussian_filter(out, sigma, mode="nearest")
        if self.noise_max > 0:
            sigma = rng.uniform(0.0, self.noise_max)
            real = out + rng.normal(0.0, sigma, out.shape)
            imag = rng.normal(0.0, sigma, out.shape)
            out = np.sqrt(real * real + imag * imag)
        return out.astype(np.float32, copy=False)
