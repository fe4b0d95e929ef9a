"""Patch-wise synthesis of a whole volume: TUMSyn's inference loop, batched and chunked.

Arrays here are in the authors' SimpleITK storage order **(z, y, x)** = nibabel (k, j, i); the
conversion happens in :mod:`tumsyn_bids.model.volume` and nowhere else.

The loop (demo.py ``_get_pred``): normalise the whole volume by percentiles, cut overlapping
patches, encode each patch with the prompt, decode the implicit function on a grid of query
coordinates, and average the overlapping predictions. Output voxel ``m`` of an axis with scale
``s`` is the value at input voxel position ``(m + 0.5) / s - 0.5``, so the output covers the input's
field of view (see :func:`tumsyn_bids.model.volume.scaled_affine`).

Two placement modes share one engine:

* ``reference=True`` reproduces the authors' loop exactly: patch starts with a gap taken from the
  first patch axis for all axes, a fixed ``make_coord`` grid per patch and truncating placement
  ``int(start * scale)``. With a non-integer scale that truncation shifts some patches by a fraction
  of a voxel, so neighbouring patches disagree about where an output voxel is.
* the default mode uses a gap per axis and gives every patch the query coordinates of exactly the
  output voxels that fall inside it, so every output voxel is sampled where the output affine says
  it is. For cubic patches and integer scales both modes query identical coordinates.
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

from .fused import fuse_for_inference
from .network import SynthesisNetwork
from .text_encoder import TextEncoder
from .tokenizer import CONTEXT_LENGTH, tokenize

LOGGER = logging.getLogger(__name__)

Triple = tuple[int, int, int]

#: Percentiles of TUMSyn's ``percentile_clip`` (0.01 is the 0.01-th percentile, not 1 %).
P_LOW, P_HIGH = 0.01, 99.9


class InputImageError(ValueError):
    """The image cannot be synthesized from (non-finite voxels, no intensity range, ...)."""


@dataclass(frozen=True)
class PatchSettings:
    """How a volume is cut and sampled; every triple is in array (z, y, x) order.

    ``query_size`` is the number of output samples per patch axis (the authors' ``coord_size``);
    the scale of an axis is ``query_size / patch_size``.
    """

    patch_size: Triple = (60, 60, 60)
    query_size: Triple = (60, 60, 60)
    overlap: float = 0.5
    batch_size: int = 1
    #: Query points per decoder call (times the batch); bounds peak memory whatever the volume.
    decoder_chunk: int = 1 << 16
    reference: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if min(self.patch_size) < 1 or min(self.query_size) < 1:
            raise ValueError("patch and query sizes must be positive")
        if self.batch_size < 1 or self.decoder_chunk < 1:
            raise ValueError("batch_size and decoder_chunk must be positive")

    @property
    def scale(self) -> tuple[float, float, float]:
        return tuple(q / p for q, p in zip(self.query_size, self.patch_size, strict=True))

    @classmethod
    def for_scale(
        cls, patch_size: Sequence[int], scale: Sequence[float], **kwargs
    ) -> PatchSettings:
        """Settings whose per-patch query grid realises ``scale`` (rounded to whole samples)."""
        patch = tuple(int(p) for p in patch_size)
        query = tuple(max(1, round(p * s)) for p, s in zip(patch, scale, strict=True))
        return cls(patch_size=patch, query_size=query, **kwargs)


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


def output_shape(shape: Sequence[int], settings: PatchSettings) -> Triple:
    return tuple(int(n * s) for n, s in zip(shape, settings.scale, strict=True))


def plan_patches(shape: Sequence[int], settings: PatchSettings) -> list[PatchJob]:
    """Every patch of a volume of ``shape`` (already at least one patch large) in loop order."""
    patch, query, scale = settings.patch_size, settings.query_size, settings.scale
    if any(n < p for n, p in zip(shape, patch, strict=True)):
        raise ValueError(f"volume {tuple(shape)} is smaller than the patch {patch}; pad it first")
    out_shape = output_shape(shape, settings)
    if settings.reference:
        gap = int(patch[0] * (1 - settings.overlap))
        starts = [axis_starts(n, p, gap) for n, p in zip(shape, patch, strict=True)]
        grids = [make_coord(q) for q in query]
    else:
        starts = [
            axis_starts(n, p, int(p * (1 - settings.overlap)))
            for n, p in zip(shape, patch, strict=True)
        ]
    per_axis: list[list[tuple[int, torch.Tensor]]] = []
    for axis in range(3):
        entries = []
        for p0 in starts[axis]:
            if settings.reference:
                lo, coords = int(p0 * scale[axis]), grids[axis]
                keep = max(0, min(len(coords), out_shape[axis] - lo))
                if keep < len(coords):
                    # The authors' loop dies here with a numpy broadcast error.
                    LOGGER.warning(
                        "reference placement overruns the output on axis %d; cropping", axis
                    )
                coords = coords[:keep]
            else:
                lo, coords = _exact_axis_queries(p0, patch[axis], scale[axis], out_shape[axis])
            entries.append((lo, coords))
        per_axis.append(entries)
    jobs = []
    for (z0, (oz, cz)), (y0, (oy, cy)), (x0, (ox, cx)) in product(
        *[zip(starts[a], per_axis[a], strict=True) for a in range(3)]
    ):
        jobs.append(PatchJob(start=(z0, y0, x0), out_start=(oz, oy, ox), coords=(cz, cy, cx)))
    return jobs


def _exact_axis_queries(
    start: int, patch: int, scale: float, out_size: int
) -> tuple[int, torch.Tensor]:
    """Output voxels whose centres lie in this patch, with their patch-normalised coordinates.

    Output voxel ``m`` sits at input position ``x = (m + 0.5)/s - 0.5``; the patch spans
    ``[start - 0.5, start + patch - 0.5)``. Its coordinate is ``-1 + r + 2 r t`` with
    ``r = 1/(patch*s)`` and ``t = m - start*s``, the authors' make_coord formula (bit-identical
    to it whenever ``start*s`` is a whole number).
    """
    lo = max(0, math.ceil(start * scale - 0.5))
    hi = min(out_size, math.ceil((start + patch) * scale - 0.5))
    r = 1.0 / (patch * scale)
    t = torch.arange(lo, hi, dtype=torch.float64) - start * scale
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
        # fused=True: the default mode runs an inference-only copy with exact speed-ups
        # (model.fused); reference mode always runs the network as loaded.
        self.fused_network = None
        if fused:
            self.fused_network = fuse_for_inference(self.network)
            self.fused_network.to(memory_format=self.memory_format)
        self.text_encoder = text_encoder.to(self.device).eval()
        self._embeddings: dict[str, torch.Tensor] = {}

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

    @contextmanager
    def _exact_float32(self, reference: bool):
        """In reference mode on CUDA, forbid TF32 so results stay at float32 accuracy."""
        if not (reference and self.device.type == "cuda"):
            yield
            return
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    @torch.inference_mode()
    def synthesize(
        self,
        volume: np.ndarray,
        prompt: str,
        settings: PatchSettings | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Synthesize the (z, y, x) ``volume`` under ``prompt``; returns float64 (z, y, x)."""
        settings = settings or PatchSettings()
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise InputImageError(f"expected a 3-D volume, got shape {vol.shape}")
        if not np.isfinite(vol).all():
            raise InputImageError(
                f"the image has {int((~np.isfinite(vol)).sum())} non-finite voxels"
            )
        norm = percentile_normalise(vol)
        shape = norm.shape
        padded_shape = tuple(max(n, p) for n, p in zip(shape, settings.patch_size, strict=True))
        if padded_shape != shape:
            LOGGER.info(
                "volume %s is smaller than the %s patch: zero-padding to %s and cropping back",
                shape,
                settings.patch_size,
                padded_shape,
            )
            norm = np.pad(norm, [(0, p - n) for n, p in zip(shape, padded_shape, strict=True)])
        text = self.embed(prompt)
        out = self._run(norm, text, settings, progress)
        final = output_shape(shape, settings)
        return out[: final[0], : final[1], : final[2]]

    def _run(
        self, norm: np.ndarray, text: torch.Tensor, settings: PatchSettings, progress: bool
    ) -> np.ndarray:
        jobs = plan_patches(norm.shape, settings)
        out_shape = output_shape(norm.shape, settings)
        total = np.zeros(out_shape, dtype=np.float64)
        count = np.zeros(out_shape, dtype=np.float64)
        cz, cy, cx = settings.patch_size
        source = torch.from_numpy(np.ascontiguousarray(norm))
        network = self.network
        if self.fused_network is not None and not settings.reference:
            network = self.fused_network
        bar = tqdm(total=len(jobs), desc="synthesis", unit="patch", disable=not progress)
        with self._autocast(settings.reference), self._exact_float32(settings.reference):
            for batch in _batches(jobs, settings.batch_size):
                crops = [source[z : z + cz, y : y + cy, x : x + cx] for z, y, x in _starts(batch)]
                patches = torch.stack(crops)[:, None].to(self.device)
                patches = patches.contiguous(memory_format=self.memory_format)
                feats = network.features(patches, text.expand(len(batch), -1))
                pad_to = tuple(max(j.out_shape[a] for j in batch) for a in range(3))
                grid = torch.stack([_grid(j.coords, pad_to) for j in batch]).to(self.device)
                preds = network.decode_chunked(feats, grid, settings.decoder_chunk)
                preds = preds.float().cpu().numpy().reshape(len(batch), *pad_to)
                for job, pred in zip(batch, preds, strict=True):
                    (oz, oy, ox), (nz, ny, nx) = job.out_start, job.out_shape
                    total[oz : oz + nz, oy : oy + ny, ox : ox + nx] += pred[:nz, :ny, :nx]
                    count[oz : oz + nz, oy : oy + ny, ox : ox + nx] += 1
                bar.update(len(batch))
        bar.close()
        uncovered = int((count == 0).sum())
        if uncovered:
            LOGGER.warning("%d output voxels are covered by no patch (left as NaN)", uncovered)
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count


def _starts(batch: list[PatchJob]) -> Iterator[Triple]:
    return (job.start for job in batch)


def _batches(jobs: list[PatchJob], size: int) -> Iterator[list[PatchJob]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]
