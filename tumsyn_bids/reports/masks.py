"""A rough brain (head) mask and robust intensity windows, for figures and group statistics.

Reports need a region to place slices in and to compute statistics over, not an anatomical
segmentation: Otsu's threshold separates head from background well on any MR contrast, and it
needs no template or registration, so it works on defaced, skull-stripped or phantom images
alike.
"""

from __future__ import annotations

import numpy as np

#: Percentiles of the display window: robust to a few hot voxels (vessels, artefacts) that
#: would otherwise make a min-max window too dark.
WINDOW_PERCENTILES = (1.0, 99.5)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of ``values`` (Otsu, 1979)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.argmax(between)])


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
