"""A rough brain (head) mask and robust intensity windows, for figures and group statistics.

Reports need a region to place slices in and to compute statistics over, not an anatomical
segmentation: Otsu's threshold separates head from background well on any MR contrast, and it
needs no template or registration, so it works on defaced, skull-stripped or phantom images
alike.
"""

from __future__ import annotations

import numpy as np

from ..imagestats import otsu_threshold

__all__ = ["WINDOW_PERCENTILES", "brain_mask", "otsu_threshold", "robust_window"]

#: Percentiles of the display window: robust to a few hot voxels (vessels, artefacts) that
#: would otherwise make a min-max window too dark.
WINDOW_PERCENTILES = (1.0, 99.5)


def brain_mask(data: np.ndarray) -> np.ndarray:
    """Voxels above Otsu's threshold; all finite non-zero voxels when that leaves none."""
    data = np.nan_to_num(np.asarray(data, dtype=np.float32))
    mask = data > otsu_threshold(data)
    if not mask.any():
        mask = data != 0
    return mask


def robust_window(
    data: np.ndarray, mask: np.ndarray | None = None, percentiles=WINDOW_PERCENTILES
) -> tuple[float, float]:
    """Display range from percentiles inside ``mask`` (or of the non-zero voxels)."""
    data = np.asarray(data, dtype=np.float32)
    values = data[mask] if mask is not None and mask.shape == data.shape else data[data != 0]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high <= low:
        high = low + 1.0
    return low, high
