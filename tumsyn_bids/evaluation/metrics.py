"""Image-similarity scores inside a brain mask, and the baseline a model must beat.

MR intensities have no absolute unit, so images are compared after TUMSyn's own normalisation
(:func:`tumsyn_bids.model.percentile_normalise`: the whole volume's 0.01th-99.9th percentiles
mapped to [0, 1]), the space the model is trained to predict; PSNR then uses a peak of 1. The
callers normalise; the functions here only score.

SSIM is the usual one (Wang et al. 2004) with a Gaussian window (sigma 1.5 voxels) in 3-D, K1 =
0.01, K2 = 0.03, averaged over the mask. Masks (brain extraction, registration) are compared
with Dice's overlap coefficient (Dice L.R., Ecology 26:297-302, 1945).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def psnr(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB, peak 1) of two normalised images over the mask."""
    m = np.asarray(mask, dtype=bool)
    mse = float(np.mean((np.asarray(prediction)[m] - np.asarray(truth)[m]) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim(prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, sigma: float = 1.5) -> float:
    """Mean structural similarity over the mask (images already normalised to [0, 1])."""
    x = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma, truncate=3.5)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[np.asarray(mask, dtype=bool)].mean())


def histogram_match(source: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``source`` with the intensity distribution of ``reference`` inside the mask.

    Each masked voxel takes the reference quantile of its own rank: a monotonic map, so it can
    change brightness and spread but never invert a contrast (T1w -> T2w needs exactly that).
    """
    m = np.asarray(mask, dtype=bool)
    src = np.asarray(source, dtype=np.float64)[m]
    ref = np.sort(np.asarray(reference, dtype=np.float64)[m])
    order = np.argsort(src, kind="stable")
    ranks = np.empty(src.size, dtype=np.float64)
    ranks[order] = np.arange(src.size)
    quantiles = ranks / max(src.size - 1, 1)
    out = np.zeros(np.shape(source), dtype=np.float64)
    out[m] = np.interp(quantiles, np.linspace(0.0, 1.0, ref.size), ref)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two masks of one shape (non-zero = inside).

    1 for identical masks, 0 for disjoint ones; two empty masks count as identical (1).
    Raises ``ValueError`` when the shapes differ (masks on different grids).
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def tissue_ratio(image: np.ndarray, numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Mean intensity in one tissue mask over the mean in another (e.g. CSF / white matter)."""
    img = np.asarray(image, dtype=np.float64)
    num, den = np.asarray(numerator, bool), np.asarray(denominator, bool)
    return float(img[num].mean() / img[den].mean())
