"""Patch-wise synthesis of a whole volume: TUMSyn's inference loop, batched and chunked.

Arrays here are in the authors' SimpleITK storage order **(z, y, x)** = nibabel (k, j, i); the
conversion happens in :mod:`tumsyn_bids.model.volume` and nowhere else.

The loop (demo.py ``_get_pred``): normalise the whole volume by percentiles, cut overlapping
patches, encode each patch with the prompt, decode the implicit function at query coordinates,
and average the overlapping predictions.

Two placement modes share one engine:

* ``reference=True`` reproduces the authors' loop exactly: patch starts with a gap taken from the
  first patch axis for all axes, a fixed ``make_coord`` grid of ``query_size`` samples per patch
  and truncating placement ``int(start * scale)`` with ``scale = query_size / patch_size``. With a
  non-integer scale that truncation shifts some patches by a fraction of a voxel, so neighbouring
  patches disagree about where an output voxel is.
* the default mode samples a :class:`Sampling` grid (any voxel size, see
  :mod:`tumsyn_bids.model.grid`): output voxel ``q`` of an axis sits at input position
  ``origin + q * step``, and each patch decodes exactly the output voxels whose centres fall
  inside it (a variable count per patch), so every output voxel is sampled where the output
  affine says it is. For cubic patches and integer scales both modes query identical coordinates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputImageError
from .fused import fuse_for_inference
from .network import SynthesisNetwork
from .text_encoder import TextEncoder
from .tokenizer import CONTEXT_LENGTH, tokenize

LOGGER = logging.getLogger(__name__)

Triple = tuple[int, int, int]

#: Percentiles of TUMSyn's ``percentile_clip`` (0.01 is the 0.01-th percentile, not 1 %).
P_LOW, P_HIGH = 0.01, 99.9


@dataclass(frozen=True)
class PatchSettings:
    """How a volume is cut into patches; every triple is in array (z, y, x) order.

    ``query_size`` is the authors' ``coord_size``, the number of output samples per patch axis;
    it sets the output grid in reference mode only (the default mode samples a
    :class:`Sampling`). ``None`` means the patch size (same resolution).
    """

    patch_size: Triple = (60, 60, 60)
    query_size: Triple | None = None
    overlap: float = 0.5
    batch_size: int = 1
    #: Query points per decoder call (times the batch); bounds peak memory whatever the volume.
    decoder_chunk: int = 1 << 16
    reference: bool = False
    #: With a mask (default mode): also skip patches whose mask voxels are fewer than this
    #: fraction of the patch, as long as every mask voxel stays covered by a computed patch
    #: (``--speed fast``); 0 skips only patches without any mask voxel.
    min_foreground: float = 0.0
    #: With a mask (default mode): False decodes only output voxels next to the mask (those
    #: with a mask voxel among the input voxels around their centre), the others are 0; for
    #: callers that mask the output anyway.
    decode_outside_mask: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 <= self.min_foreground < 1.0:
            raise ValueError(f"min_foreground must be in [0, 1), got {self.min_foreground}")
        if self.query_size is None:
            object.__setattr__(self, "query_size", tuple(self.patch_size))
        if min(self.patch_size) < 1 or min(self.query_size) < 1:
            raise ValueError("patch and query sizes must be positive")
        if self.batch_size < 1 or self.decoder_chunk < 1:
            raise ValueError("batch_size and decoder_chunk must be positive")

    @property
    def scale(self) -> tuple[float, float, float]:
        """The authors' per-axis scale ``query_size / patch_size``."""
        return tuple(q / p for q, p in zip(self.query_size, self.patch_size, strict=True))


@dataclass(frozen=True)
class Sampling:
    """The output grid in input voxel units, (z, y, x): output voxel ``q`` of axis ``a`` sits at
    input voxel position ``origin[a] + q * step[a]``; ``shape`` output voxels per axis.

    Built from an :class:`tumsyn_bids.model.grid.OutputGrid` at the NIfTI boundary
    (:mod:`.volume`); :meth:`identity` is the input grid itself.
    """

    shape: Triple
    origin: tuple[float, float, float]
    step: tuple[float, float, float]

    def __post_init__(self) -> None:
        if min(self.shape) < 1 or min(self.step) <= 0:
            raise ValueError(f"bad sampling grid: shape {self.shape}, step {self.step}")

    @classmethod
    def identity(cls, shape: Sequence[int]) -> Sampling:
        return cls(tuple(int(n) for n in shape), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @classmethod
    def authors(cls, shape: Sequence[int], settings: PatchSettings) -> Sampling:
        """The grid the authors' loop fills: ``int(n * s)`` voxels at ``(q + 1/2)/s - 1/2``."""
        scale = settings.scale
        return cls(
            tuple(int(n * s) for n, s in zip(shape, scale, strict=True)),
            tuple(0.5 / s - 0.5 for s in scale),
            tuple(1.0 / s for s in scale),
        )


def percentile_normalise(volume: np.ndarray) -> np.ndarray:
    """TUMSyn's ``percentile_clip`` of the whole volume, in float32 as under numpy 1.x.

    The low bound is raised to 0 when negative; values are clipped and mapped to [0, 1].
    """
    vol = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(vol, [P_LOW, P_HIGH])
    lo = max(float(lo), 0.0)
    span = float(hi) - lo
    if not span > 0:
        raise InputImageError(
            f"the image has no intensity range to normalise (0.01-99.9th percentiles "
            f"{lo:g}..{float(hi):g}); is it empty or constant?"
        )
    lo32, hi32 = np.float32(lo), np.float32(hi)
    return (np.clip(vol, lo32, hi32) - lo32) / np.float32(span)


def make_coord(n: int) -> torch.Tensor:
    """Cell centres of ``n`` cells on [-1, 1], computed bit-for-bit like the authors' make_coord."""
    r = 1.0 / n
    return (-1 + r) + (2 * r) * torch.arange(n).float()


def axis_starts(size: int, patch: int, gap: int) -> list[int]:
    """Patch starts along one axis: every ``gap`` voxels, then one flush with the end."""
    starts = [s for s in range(0, size, max(gap, 1)) if s < size - patch]
    starts.append(size - patch)
    return starts


@dataclass(frozen=True)
class PatchJob:
    """One patch: where to cut the input and which output voxels its queries fill."""

    start: Triple
    out_start: Triple
    coords: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = field(repr=False)

    @property
    def out_shape(self) -> Triple:
        return tuple(len(c) for c in self.coords)


def plan_patches(
    shape: Sequence[int], settings: PatchSettings, sampling: Sampling | None = None
) -> list[PatchJob]:
    """Every patch of a volume of ``shape`` (already at least one patch large) in loop order.

    Reference mode ignores ``sampling`` (the authors' grid follows from ``query_size``); the
    default mode samples ``sampling`` (default: the authors' grid, which for integer scales is
    the same).
    """
    patch = settings.patch_size
    if any(n < p for n, p in zip(shape, patch, strict=True)):
        raise ValueError(f"volume {tuple(shape)} is smaller than the patch {patch}; pad it first")
    if settings.reference:
        gap = int(patch[0] * (1 - settings.overlap))
        starts = [axis_starts(n, p, gap) for n, p in zip(shape, patch, strict=True)]
        out_shape = Sampling.authors(shape, settings).shape
        per_axis = [
            [_reference_axis_queries(p0, settings, axis, out_shape[axis]) for p0 in starts[axis]]
            for axis in range(3)
        ]
    else:
        grid = sampling or Sampling.authors(shape, settings)
        starts = [
            axis_starts(n, p, int(p * (1 - settings.overlap)))
            for n, p in zip(shape, patch, strict=True)
        ]
        per_axis = [
            [
                _exact_axis_queries(p0, patch[a], grid.origin[a], grid.step[a], grid.shape[a])
                for p0 in starts[a]
            ]
            for a in range(3)
        ]
    jobs = []
    for (z0, (oz, cz)), (y0, (oy, cy)), (x0, (ox, cx)) in product(
        *[zip(starts[a], per_axis[a], strict=True) for a in range(3)]
    ):
        jobs.append(PatchJob(start=(z0, y0, x0), out_start=(oz, oy, ox), coords=(cz, cy, cx)))
    return jobs


def _reference_axis_queries(
    start: int, settings: PatchSettings, axis: int, out_size: int
) -> tuple[int, torch.Tensor]:
    """The authors' placement: ``int(start * scale)`` and a fixed ``make_coord`` grid."""
    lo, coords = int(start * settings.scale[axis]), make_coord(settings.query_size[axis])
    keep = max(0, min(len(coords), out_size - lo))
    if keep < len(coords):
        # The authors' loop dies here with a numpy broadcast error.
        LOGGER.warning("reference placement overruns the output on axis %d; cropping", axis)
    return lo, coords[:keep]


def _exact_axis_queries(
    start: int, patch: int, origin: float, step: float, out_size: int
) -> tuple[int, torch.Tensor]:
    """Output voxels whose centres lie in this patch, with their patch-normalised coordinates.

    Output voxel ``q`` sits at input position ``x = origin + q * step``; the patch spans
    ``[start - 1/2, start + patch - 1/2)``. Its coordinate is ``-1 + r + 2 r t`` with
    ``r = step / patch`` and ``t = (x - start + 1/2) / step - 1/2`` (so that grid_sample with
    align_corners=False reads input position ``x``): the authors' make_coord formula,
    bit-identical to it whenever the output grid is theirs and ``start / step`` is whole.
    """
    lo = max(0, math.ceil((start - 0.5 - origin) / step))
    hi = min(out_size, math.ceil((start + patch - 0.5 - origin) / step))
    r = 1.0 / (patch / step)
    q = torch.arange(lo, hi, dtype=torch.float64)
    t = (origin + q * step - start + 0.5) / step - 0.5
    return lo, (-1 + r) + (2 * r) * t.float()


def _grid(coords: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pad_to: Triple) -> torch.Tensor:
    """Flattened (K, 3) meshgrid in C order, each axis padded by repeating its last value."""
    padded = [
        torch.cat([c, c[-1:].expand(n - len(c))]) if len(c) < n else c
        for c, n in zip(coords, pad_to, strict=True)
    ]
    return torch.stack(torch.meshgrid(*padded, indexing="ij"), dim=-1).reshape(-1, 3)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
    return dev


@contextmanager
def exact_float32(device: torch.device, exact: bool = True):
    """With ``exact`` on a CUDA ``device``, forbid TF32 inside the block so float32 results
    stay at float32 accuracy (PyTorch lets cuDNN convolutions use TF32 by default: a 10-bit
    mantissa); elsewhere it does nothing."""
    if not (exact and torch.device(device).type == "cuda"):
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Synthesizer:
    """A loaded text encoder + synthesis network on one device, ready to synthesize volumes.

    Prompt embeddings are cached per prompt string: in a BIDS run most images share a handful of
    target prompts.
    """

    def __init__(
        self,
        network: SynthesisNetwork,
        text_encoder: TextEncoder,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        channels_last: bool | None = None,
        fused: bool = False,
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.device = resolve_device(device)
        if precision == "bf16" and self.device.type != "cuda":
            raise ValueError("precision 'bf16' needs a CUDA device; use fp32 on the CPU")
        self.precision = precision
        # Channels-last 3-D tensors let oneDNN pick its fastest convolution kernels (about
        # 1.3-2x on the encoder on CPU); results change only at float-rounding level.
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.network = network.to(self.device).eval()
        self.network.to(memory_format=self.memory_format)
        # fused=True: every mode runs an inference-only copy with exact speed-ups (model.fused:
        # the same function, float32 rounding apart); fused=False runs the network as loaded.
        # Reference mode's faithfulness is the patch placement and output grid, not the kernels.
        self.fused_network = None
        if fused:
            self.fused_network = fuse_for_inference(self.network)
            self.fused_network.to(memory_format=self.memory_format)
        self.text_encoder = text_encoder.to(self.device).eval()
        self._embeddings: dict[str, torch.Tensor] = {}
        self.last_stats: PatchStats | None = None

    @property
    def context_length(self) -> int:
        return getattr(getattr(self.text_encoder, "config", None), "context_length", CONTEXT_LENGTH)

    @torch.inference_mode()
    def embed(self, prompt: str) -> torch.Tensor:
        """The (1, C) embedding of ``prompt``, always computed in float32."""
        if prompt not in self._embeddings:
            tokens = tokenize(prompt, self.context_length).to(self.device)
            self._embeddings[prompt] = self.text_encoder(tokens).float()
        return self._embeddings[prompt]

    def _autocast(self, reference: bool):
        enabled = self.precision == "bf16" and not reference
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.inference_mode()
    def synthesize(
        self,
        volume: np.ndarray,
        prompt: str,
        settings: PatchSettings | None = None,
        progress: bool = False,
        sampling: Sampling | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Synthesize the (z, y, x) ``volume`` under ``prompt``; returns float64 (z, y, x).

        ``sampling`` (default mode only) is the output grid; default: the authors' grid for
        ``settings.query_size`` (the input grid when it equals the patch size). ``mask``, a
        (z, y, x) boolean array of the volume's shape, restricts the work of the default mode
        to the foreground (:func:`select_patches`): patches holding no mask voxel (or, with
        ``settings.min_foreground``, too few) are never encoded, and with
        ``settings.decode_outside_mask=False`` only output voxels next to the mask
        (:func:`mask_on_grid`) are decoded; output voxels left out are 0.
        :attr:`last_stats` says how many patches were computed and skipped and how many points
        were decoded. Reference mode computes every patch (the authors' loop) whatever the mask.

        Raises :class:`InputImageError` for a volume that is not 3-D, has non-finite voxels or
        no intensity range, and ``ValueError`` for a mask of another shape.
        """
        settings = settings or PatchSettings()
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise InputImageError(f"expected a 3-D volume, got shape {vol.shape}")
        if not np.isfinite(vol).all():
            raise InputImageError(
                f"the image has {int((~np.isfinite(vol)).sum())} non-finite voxels"
            )
        if mask is not None and np.shape(mask) != vol.shape:
            raise ValueError(f"mask shape {np.shape(mask)} differs from the volume's {vol.shape}")
        if settings.reference:
            mask = None  # the authors' loop: every patch
        norm = percentile_normalise(vol)
        shape = norm.shape
        if settings.reference:
            final = Sampling.authors(shape, settings)
        else:
            final = sampling or Sampling.authors(shape, settings)
        padded_shape = tuple(max(n, p) for n, p in zip(shape, settings.patch_size, strict=True))
        if padded_shape != shape:
            LOGGER.info(
                "volume %s is smaller than the %s patch: zero-padding to %s and cropping back",
                shape,
                settings.patch_size,
                padded_shape,
            )
            pad = [(0, p - n) for n, p in zip(shape, padded_shape, strict=True)]
            norm = np.pad(norm, pad)
            if mask is not None:
                mask = np.pad(np.asarray(mask, dtype=bool), pad)
        text = self.embed(prompt)
        out = self._run(norm, text, settings, progress, None if settings.reference else final, mask)
        return out[: final.shape[0], : final.shape[1], : final.shape[2]]

    def _run(
        self,
        norm: np.ndarray,
        text: torch.Tensor,
        settings: PatchSettings,
        progress: bool,
        sampling: Sampling | None,
        mask: np.ndarray | None,
    ) -> np.ndarray:
        jobs = plan_patches(norm.shape, settings, sampling)
        grid_out = sampling or Sampling.authors(norm.shape, settings)
        out_shape = grid_out.shape
        todo = [j for j in jobs if min(j.out_shape) > 0]
        near = None
        if mask is not None:
            fg = np.asarray(mask, dtype=bool)
            todo = select_patches(todo, fg, settings.patch_size, settings.min_foreground)
            if not settings.decode_outside_mask:
                near = mask_on_grid(fg, grid_out)
                todo = [j for j in todo if near[_out_box(j)].any()]
        total = np.zeros(out_shape, dtype=np.float64)
        count = np.zeros(out_shape, dtype=np.float64)
        source = torch.from_numpy(np.ascontiguousarray(norm))
        network = self.network if self.fused_network is None else self.fused_network
        cz, cy, cx = settings.patch_size
        decoded = 0
        bar = tqdm(total=len(todo), desc="synthesis", unit="patch", disable=not progress)
        # float32 runs (reference, and default/fast without bf16) stay exact: no TF32
        exact = settings.reference or self.precision == "fp32"
        with self._autocast(settings.reference), exact_float32(self.device, exact):
            for batch in _batches(todo, settings.batch_size):
                crops = [source[z : z + cz, y : y + cy, x : x + cx] for z, y, x in _starts(batch)]
                patches = torch.stack(crops)[:, None].to(self.device)
                patches = patches.contiguous(memory_format=self.memory_format)
                feats = network.features(patches, text.expand(len(batch), -1))
                keep = None if near is None else [near[_out_box(j)] for j in batch]
                if keep is None or all(k.all() for k in keep):
                    pad_to = tuple(max(j.out_shape[a] for j in batch) for a in range(3))
                    grid = torch.stack([_grid(j.coords, pad_to) for j in batch]).to(self.device)
                    preds = network.decode_chunked(feats, grid, settings.decoder_chunk)
                    preds = preds.float().cpu().numpy().reshape(len(batch), *pad_to)
                    for job, pred in zip(batch, preds, strict=True):
                        box, (nz, ny, nx) = _out_box(job), job.out_shape
                        total[box] += pred[:nz, :ny, :nx]
                        count[box] += 1
                        decoded += nz * ny * nx
                    bar.update(len(batch))
                    continue
                # only the output voxels next to the mask: a list of points per patch
                points = [_grid(j.coords, j.out_shape)[torch.from_numpy(k.ravel())] for j, k in
                          zip(batch, keep, strict=True)]  # fmt: skip
                most = max(len(p) for p in points)
                grid = torch.stack([_pad_rows(p, most) for p in points]).to(self.device)
                preds = network.decode_chunked(feats, grid, settings.decoder_chunk)
                preds = preds.float().cpu().numpy()
                for job, sel, pts, pred in zip(batch, keep, points, preds, strict=True):
                    box = _out_box(job)
                    total[box][sel] += pred[: len(pts)]
                    count[box][sel] += 1
                    decoded += len(pts)
                bar.update(len(batch))
        bar.close()
        self.last_stats = PatchStats(len(jobs), len(todo), len(jobs) - len(todo), decoded)
        uncovered = count == 0
        if mask is not None:
            count[uncovered] = 1  # background: no patch computed, value 0
        elif uncovered.any():
            LOGGER.warning(
                "%d output voxels are covered by no patch (left as NaN)", int(uncovered.sum())
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count


def _out_box(job: PatchJob) -> tuple[slice, slice, slice]:
    """The output voxels a patch fills, as slices of the output array."""
    return tuple(slice(o, o + n) for o, n in zip(job.out_start, job.out_shape, strict=True))


def _pad_rows(points: torch.Tensor, rows: int) -> torch.Tensor:
    """(K, 3) points padded to ``rows`` rows by repeating the last one (decoded, then dropped)."""
    if len(points) == rows:
        return points
    return torch.cat([points, points[-1:].expand(rows - len(points), -1)])


def select_patches(
    jobs: Sequence[PatchJob],
    mask: np.ndarray,
    patch_size: Sequence[int],
    min_foreground: float = 0.0,
) -> list[PatchJob]:
    """The patches worth computing for a (z, y, x) boolean ``mask`` of the (padded) volume.

    A patch without any mask voxel is dropped: no mask voxel depends on it (every voxel of a
    patch is covered by it, so each mask voxel keeps all the patches that hold it, and the
    result inside the mask is unchanged). With ``min_foreground`` > 0 (``--speed fast``),
    patches holding fewer mask voxels than that fraction of the patch are dropped too, fewest
    first, as long as every mask voxel in them stays covered by at least one kept patch: this
    changes the average at those voxels (fewer patches), by the amount measured in
    ``docs/speed.md``. Keeps the order of ``jobs``.
    """
    cz, cy, cx = patch_size
    boxes = [(slice(z, z + cz), slice(y, y + cy), slice(x, x + cx)) for z, y, x in _starts(jobs)]
    counts = [int(np.count_nonzero(mask[b])) for b in boxes]
    keep = [c > 0 for c in counts]
    limit = min_foreground * cz * cy * cx
    candidates = sorted((c, i) for i, c in enumerate(counts) if 0 < c < limit)
    if candidates:
        cover = np.zeros(mask.shape, dtype=np.int32)  # kept patches over each voxel
        for b, k in zip(boxes, keep, strict=True):
            if k:
                cover[b] += 1
        for _, i in candidates:
            b = boxes[i]
            if cover[b][mask[b]].min() >= 2:  # every mask voxel keeps another patch
                cover[b] -= 1
                keep[i] = False
    return [j for j, k in zip(jobs, keep, strict=True) if k]


def mask_on_grid(mask: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Output voxels of ``sampling`` next to a (z, y, x) boolean input ``mask``: shape
    ``sampling.shape``, True where a mask voxel is among the input voxels around the output
    voxel's centre (the floor and the ceiling of its input position on each axis, clipped to the
    volume; on the input grid itself, the mask). Any resampling of the mask to the output grid
    by nearest neighbour or by trilinear weights is therefore inside it.
    """
    mask = np.asarray(mask, dtype=bool)
    lows, highs = [], []
    for n, m, o, s in zip(mask.shape, sampling.shape, sampling.origin, sampling.step, strict=True):
        pos = o + np.arange(m) * s
        lows.append(np.clip(np.floor(pos), 0, n - 1).astype(np.intp))
        highs.append(np.clip(np.ceil(pos), 0, n - 1).astype(np.intp))
    near = np.zeros(sampling.shape, dtype=bool)
    for pick in product((0, 1), repeat=3):
        index = [(lows, highs)[p][a] for a, p in enumerate(pick)]
        near |= mask[np.ix_(*index)]
    return near


@dataclass(frozen=True)
class PatchStats:
    """Patches of the last :meth:`Synthesizer.synthesize` call: planned, computed, skipped, and
    the number of output points decoded (padding excluded)."""

    planned: int
    computed: int
    skipped: int
    decoded: int = 0


def _starts(batch: list[PatchJob]) -> Iterator[Triple]:
    return (job.start for job in batch)


def _batches(jobs: list[PatchJob], size: int) -> Iterator[list[PatchJob]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]
