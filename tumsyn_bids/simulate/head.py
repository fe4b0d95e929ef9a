"""Simulated heads: extra-axial CSF, skull, scalp muscle and fat around a simulated brain.

Real BIDS anatomy is a head, and preprocessing (brain extraction, N4) must be tested on heads
whose brain is known exactly. ``tumsyn-simulate --with-head`` wraps each simulated brain in
layers of non-brain tissue, built outward from the brain's own surface, so every subject's head
follows its (warped) brain:

1. The **envelope**: the brain mask (GM + WM + CSF >= 0.5) closed morphologically with a ball
   of :data:`CLOSING_MM`, which bridges fissures and notches as the inner table of the skull
   does; what the closing adds is extra-axial CSF.
2. **Layers** by distance ``d`` from the envelope (:data:`LAYERS`, mm outward): extra-axial CSF
   (subarachnoid space and dura), the skull's inner table, the diploe (half bone, half fatty
   marrow), the outer table, the galea and scalp muscle, subcutaneous fat and skin (modelled as
   muscle): about 12.5 mm in all, within the adult ranges (skull 5-7 mm, scalp 5-7 mm).
   Partial volume: each voxel takes the share of ``[d - v/2, d + v/2]`` (``v`` the voxel size)
   that falls in each layer.
3. The head tissues fill only what the brain leaves free outside the brain mask (``1 - GM - WM
   - CSF`` there), and nothing inside it: **inside the brain mask the head image equals the
   brain-only image exactly**, and the brain ground truth (tissue maps, brain mask,
   :func:`~.dataset.render_ground_truth`) is unchanged.

Signals come from the same signal equations as the brain (:func:`.signal.signal_of`) with the
head tissues' parameters (:func:`.tissues.head_tissue_parameters`, literature values there).
Not modelled: face, eyes, neck (the head ends below the brainstem like the brain does), vessels,
sinuses, air cells and chemical shift. Fractions are stored like the brain's, as uint8 levels
of 1/255 (:func:`head_levels`), and scans are rendered from the levels, so a dataset's
derivatives reproduce its scans exactly.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..prompts.protocol import Protocol
from .anatomy import FRACTION_LEVELS, TissueMaps
from .signal import signal_of
from .tissues import HEAD_TISSUES, head_tissue_parameters

__all__ = [
    "CLOSING_MM",
    "HEAD_MARGIN_MM",
    "HEAD_THICKNESS_MM",
    "LAYERS",
    "head_fractions",
    "head_levels",
    "render_head",
]

#: Radius (mm) of the closing that turns the brain mask into the inner surface of the skull.
CLOSING_MM = 6.0

#: Layers outward from the envelope: (outer edge in mm, {head tissue: share}).
LAYERS: tuple[tuple[float, dict[str, float]], ...] = (
    (1.0, {"EXTCSF": 1.0}),  # subarachnoid space and dura
    (2.5, {"BONE": 1.0}),  # inner table
    (5.0, {"BONE": 0.5, "FAT": 0.5}),  # diploe: cancellous bone with fatty marrow
    (6.5, {"BONE": 1.0}),  # outer table
    (8.0, {"MUSCLE": 1.0}),  # galea aponeurotica, pericranium, scalp muscle
    (11.0, {"FAT": 1.0}),  # subcutaneous fat
    (12.5, {"MUSCLE": 1.0}),  # skin (soft tissue)
)

#: Total head thickness outside the envelope (mm).
HEAD_THICKNESS_MM = LAYERS[-1][0]

#: Extra field of view (mm per side) of a head grid over a brain grid: the layers plus the
#: subjects' displacement (shift and warp, up to about 6 mm), with air around the scalp.
HEAD_MARGIN_MM = 16.0


def _envelope(mask: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """``mask`` closed with a ball of :data:`CLOSING_MM` (distance transforms: exact radius)."""
    outside = ndimage.distance_transform_edt(~mask, sampling=voxel)
    dilated = outside <= CLOSING_MM
    closed = ndimage.distance_transform_edt(dilated, sampling=voxel) > CLOSING_MM
    return closed | mask


def head_fractions(brain: TissueMaps) -> dict[str, np.ndarray]:
    """Fractions (float32, the brain maps' grid) of every head tissue, by the module's rules.

    ``brain`` is a subject's brain on a grid with room for the head (:data:`HEAD_MARGIN_MM`);
    the result sums with the brain fractions to at most 1 per voxel and is 0 inside the brain
    mask. Raises ``ValueError`` when the brain is empty or the head would leave the grid.
    """
    voxel = np.asarray(brain.voxel_size, dtype=np.float64)
    total = brain.gm + brain.wm + brain.csf
    mask = total >= 0.5
    if not mask.any():
        raise ValueError("the brain maps hold no brain: nothing to put a head around")
    envelope = _envelope(mask, voxel)
    # Distance (mm) of each voxel centre outside the envelope from its surface; <= 0 inside.
    depth = ndimage.distance_transform_edt(~envelope, sampling=voxel) - 0.5 * float(voxel.mean())
    depth[envelope] = -1.0
    half = 0.5 * float(voxel.mean())
    lower, upper = depth - half, depth + half
    out = {tissue: np.zeros(brain.shape, dtype=np.float32) for tissue in HEAD_TISSUES}
    start = -math.inf
    for edge, composition in LAYERS:
        overlap = np.clip(np.minimum(upper, edge) - np.maximum(lower, start), 0.0, 2 * half)
        share = (overlap / (2 * half)).astype(np.float32)
        for tissue, weight in composition.items():
            out[tissue] += np.float32(weight) * share
        start = edge
    free = np.where(mask, 0.0, np.clip(1.0 - total, 0.0, 1.0)).astype(np.float32)
    for tissue in HEAD_TISSUES:
        out[tissue] *= free
    head = sum(out.values())
    edge_slices = [np.take(head, i, axis=a) for a in range(3) for i in (0, -1)]
    if any(float(np.max(s)) > 0 for s in edge_slices):
        raise ValueError("the simulated head reaches the edge of the grid; use a larger margin")
    return out


def head_levels(brain: TissueMaps, brain_levels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`head_fractions` as uint8 levels of ``1/FRACTION_LEVELS``, fitting beside the brain.

    ``brain_levels`` are the brain's own levels (:func:`.anatomy.quantize_fractions`); each head
    tissue is capped at what the classes before it leave, so no voxel exceeds 100 %.
    """
    used = sum(np.asarray(brain_levels[t], dtype=np.int16) for t in brain_levels)
    out: dict[str, np.ndarray] = {}
    for tissue, fraction in head_fractions(brain).items():
        level = np.rint(fraction * FRACTION_LEVELS).astype(np.int16)
        level = np.clip(level, 0, FRACTION_LEVELS - used)
        used = used + level
        out[tissue] = level.astype(np.uint8)
    return out


def render_head(
    levels: dict[str, np.ndarray], protocol: Protocol, suffix: str, field_strength: float
) -> np.ndarray:
    """The noise-free, bias-free signal (float32) of the head tissues alone.

    ``levels`` are :func:`head_levels`; add the result to the brain's
    :func:`.signal.render` image for the whole head.
    """
    params = head_tissue_parameters(field_strength)
    scale = np.float32(1.0 / FRACTION_LEVELS)
    image = None
    for tissue in HEAD_TISSUES:
        signal = np.float32(signal_of(params[tissue], protocol, suffix))
        part = signal * (np.asarray(levels[tissue], dtype=np.float32) * scale)
        image = part if image is None else image + part
    return image
