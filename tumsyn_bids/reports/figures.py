"""Source-versus-synthesized comparison figures (matplotlib, Agg backend).

One PNG per synthesized image: for each of the three orthogonal views a row of slices of the
source above the same slices of the synthesized image. Slice positions are chosen in world
(scanner) coordinates from the extent of the source's head mask, so both rows show the same
anatomy even when the output was written on another grid (``--output-resolution``). Each image
gets its own robust window (1st-99.5th percentile inside its head) because the two contrasts
have unrelated intensity scales. Images are shown in RAS orientation: anterior to the right in
sagittal views, and the subject's right on the right in coronal and axial views (neurological
convention).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.io import temporary_name
from .masks import brain_mask, robust_window

#: Views as (name, RAS axis the slices cut).
VIEWS = (("sagittal", 0), ("coronal", 1), ("axial", 2))
N_SLICES = 5


def use_agg() -> None:
    """Select matplotlib's file-only backend, with a writable config folder.

    Containers often run with a read-only or missing HOME, where matplotlib would warn and
    rebuild its font cache on every call; a private temporary folder avoids both.
    """
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="tumsyn-mpl-")
    import matplotlib

    matplotlib.use("Agg", force=True)


class _Volume:
    """A 3D image in RAS+ voxel order, with what slicing needs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        img = nib.as_closest_canonical(nib.load(os.fspath(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        while data.ndim > 3:
            data = data[..., 0]
        self.data = np.nan_to_num(data)
        self.affine = img.affine
        self.zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
        self.mask = brain_mask(self.data)
        self.window = robust_window(self.data, self.mask)

    def index_of(self, world: np.ndarray, axis: int) -> int:
        """Voxel index along ``axis`` of the slice through the world point ``world``."""
        ijk = np.linalg.inv(self.affine) @ np.append(world, 1.0)
        return int(np.clip(np.rint(ijk[axis]), 0, self.data.shape[axis] - 1))

    def slice(self, axis: int, index: int) -> tuple[np.ndarray, float]:
        """The 2D slice (rows = superior/anterior up after ``origin='lower'``) and its aspect."""
        plane = np.take(self.data, index, axis=axis).T
        shown = [a for a in range(3) if a != axis]
        return plane, float(self.zooms[shown[1]] / self.zooms[shown[0]])


def slice_positions(volume: _Volume, n: int = N_SLICES) -> dict[int, list[np.ndarray]]:
    """World points, per RAS axis, of ``n`` slices evenly spread over the head (10-90 %)."""
    ijk = np.argwhere(volume.mask)
    if ijk.size == 0:
        ijk = np.argwhere(np.ones(volume.data.shape, bool))
    world = nib.affines.apply_affine(volume.affine, ijk)
    low, high = world.min(axis=0), world.max(axis=0)
    centre = (low + high) / 2
    points: dict[int, list[np.ndarray]] = {}
    for axis in range(3):
        span = high[axis] - low[axis]
        coords = np.linspace(low[axis] + 0.1 * span, high[axis] - 0.1 * span, n)
        points[axis] = []
        for c in coords:
            p = centre.copy()
            p[axis] = c
            points[axis].append(p)
    return points


def compare_figure(
    source_file: str | os.PathLike[str],
    synthesized_file: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    source_label: str = "source",
    synthesized_label: str = "synthesized",
    n_slices: int = N_SLICES,
    dpi: int = 72,
) -> Path:
    """Write the comparison PNG of one synthesized image; return its path."""
    use_agg()
    from matplotlib.figure import Figure

    source = _Volume(source_file)
    synth = _Volume(synthesized_file)
    # slices over what was synthesized: with preprocessing that is the brain, not the whole head
    # of the source, so no panel of the synthesized row is empty
    points = slice_positions(synth, n_slices)
    rows = [(view, axis, vol, label) for view, axis in VIEWS for vol, label in
            ((source, source_label), (synth, synthesized_label))]  # fmt: skip
    fig = Figure(figsize=(2.0 * n_slices + 1.2, 2.0 * len(rows)), facecolor="black")
    axes = fig.subplots(len(rows), n_slices, squeeze=False)
    for r, (view, axis, vol, label) in enumerate(rows):
        vmin, vmax = vol.window
        for c, point in enumerate(points[axis]):
            ax = axes[r][c]
            plane, aspect = vol.slice(axis, vol.index_of(point, axis))
            ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r % 2 == 0:
                ax.set_title(f"{'xyz'[axis]}={point[axis]:.0f} mm", color="white", fontsize=9)
        axes[r][0].set_ylabel(f"{label}\n{view}", color="white", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.99, top=0.97, bottom=0.01, wspace=0.02, hspace=0.12)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(temporary_name(out))  # names its writer: see tumsyn_bids.bids.io
    fig.savefig(tmp, dpi=dpi, facecolor="black")
    os.replace(tmp, out)
    return out


def _views_figure(
    base: _Volume,
    overlay,
    points: dict[int, list[np.ndarray]],
    out_file: str | os.PathLike[str],
    label: str,
    dpi: int,
    colorbar: tuple | None = None,
) -> Path:
    """Three rows (sagittal, coronal, axial) of ``base`` slices at ``points``; ``overlay(ax,
    axis, index, aspect)`` draws on each panel. Written atomically (see :func:`compare_figure`).
    """
    use_agg()
    from matplotlib.figure import Figure

    n_slices = len(points[0])
    fig = Figure(figsize=(2.0 * n_slices + 1.2, 2.0 * len(VIEWS) + 0.3), facecolor="black")
    axes = fig.subplots(len(VIEWS), n_slices, squeeze=False)
    drawn = None
    vmin, vmax = base.window
    for r, (view, axis) in enumerate(VIEWS):
        for c, point in enumerate(points[axis]):
            ax = axes[r][c]
            index = base.index_of(point, axis)
            plane, aspect = base.slice(axis, index)
            ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect,
                      interpolation="nearest")  # fmt: skip
            drawn = overlay(ax, axis, index, aspect) or drawn
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(f"{'xyz'[axis]}={point[axis]:.0f} mm", color="white", fontsize=9)
        axes[r][0].set_ylabel(f"{label}\n{view}", color="white", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.92 if colorbar else 0.99, top=0.95, bottom=0.02,
                        wspace=0.02, hspace=0.15)  # fmt: skip
    if colorbar and drawn is not None:
        cax = fig.add_axes((0.935, 0.1, 0.015, 0.8))
        bar = fig.colorbar(drawn, cax=cax)
        bar.set_label(colorbar[0], color="white")
        bar.ax.tick_params(colors="white")
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(temporary_name(out))
    fig.savefig(tmp, dpi=dpi, facecolor="black")
    os.replace(tmp, out)
    return out


def mask_figure(
    image_file: str | os.PathLike[str],
    mask_file: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    label: str = "source",
    n_slices: int = N_SLICES,
    dpi: int = 72,
) -> Path:
    """The brain mask's outline (red) over the image, as sMRIPrep's brain-mask reportlet shows
    it: three rows of ``n_slices`` slices spread over the mask's extent (10-90 %) in world
    coordinates, RAS orientation. Image and mask must share a grid (``ValueError`` otherwise).
    Returns the PNG's path."""
    image = _Volume(image_file)
    mask = _Volume(mask_file)
    if mask.data.shape != image.data.shape or not np.allclose(mask.affine, image.affine, atol=1e-4):
        raise ValueError(f"{mask_file} is not on the grid of {image_file}")
    inside = mask.data > 0.5
    mask.mask = inside
    if inside.any():  # window on the brain: bright scalp and fat would make it dark
        image.window = robust_window(image.data, inside)

    def outline(ax, axis, index, aspect):
        plane = np.take(inside, index, axis=axis).T.astype(np.float32)
        if plane.any() and not plane.all():
            ax.contour(plane, levels=[0.5], colors="#ff3030", linewidths=0.9, origin="lower")
        return None

    return _views_figure(image, outline, slice_positions(mask, n_slices), out_file, label, dpi)


def bias_figure(
    image_file: str | os.PathLike[str],
    bias_file: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    *,
    label: str = "N4 bias field",
    n_slices: int = N_SLICES,
    dpi: int = 72,
) -> Path:
    """N4's multiplicative bias field in colour over the image's head, with a colour bar.

    The head is the image's Otsu mask with its holes filled (dark CSF inside the brain is
    head too). N4's field has an arbitrary overall scale, so it is shown divided by its median
    inside the head (1 = the median); the colour range is its 1st-99th percentile there.
    Image and field must share a grid (``ValueError`` otherwise). Returns the PNG's path."""
    from scipy.ndimage import binary_fill_holes

    image = _Volume(image_file)
    bias = _Volume(bias_file)
    if bias.data.shape != image.data.shape or not np.allclose(bias.affine, image.affine, atol=1e-4):
        raise ValueError(f"{bias_file} is not on the grid of {image_file}")
    head = binary_fill_holes(image.mask)
    values = bias.data[head] if head.any() else bias.data.ravel()
    median = float(np.median(values))
    if median > 0:
        bias.data = bias.data / np.float32(median)
        values = values / median
    low, high = (float(v) for v in np.percentile(values, (1, 99)))
    if high <= low:
        low, high = low - 0.01, high + 0.01

    def field(ax, axis, index, aspect):
        plane = np.take(bias.data, index, axis=axis).T
        shown = np.ma.masked_where(~np.take(head, index, axis=axis).T, plane)
        return ax.imshow(shown, cmap="coolwarm", vmin=low, vmax=high, origin="lower",
                         aspect=aspect, alpha=0.7, interpolation="nearest")  # fmt: skip

    points = slice_positions(image, n_slices)
    colorbar = ("field / its median in the head",)
    return _views_figure(image, field, points, out_file, label, dpi, colorbar)
