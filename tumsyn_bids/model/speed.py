"""The ``--speed`` presets: which of the engine's speed-ups a run uses (issue 21).

One option instead of hand-tuned flags. Each preset is a fixed set of engine settings; the
command-line tools resolve it once (:func:`preset`) and pass the settings to the
:class:`~tumsyn_bids.model.inference.Synthesizer` (:meth:`SpeedPreset.synthesizer_options`) and
to each call (:meth:`SpeedPreset.engine_options`).

``reference``
    The authors' loop exactly: their patch placement and output-grid arithmetic, every patch
    computed (a brain mask skips nothing), every output voxel decoded, float32 without TF32 on
    CUDA. The network runs as the fused inference copy (:mod:`tumsyn_bids.model.fused`), which
    computes the same function and differs from the network as loaded only by float32 rounding
    (max |Δ| 3e-6 against the authors' outputs on the fixtures; the issue-21 bar is 1e-4): with
    the network as loaded this preset was no faster than the authors' loop (0.97-1.02x, mid-size
    model on the CPU, docs/speed.md), with the fused copy it is 2.0x (whole 1 mm head, 2 threads).
``default``
    Every speed-up that does not change the result beyond float32 rounding (max |Δ| <= 1e-4
    against the plain path inside the brain): the fused inference network
    (:mod:`tumsyn_bids.model.fused`: folded BatchNorm, voxel-major fusion block, gathered
    decoder with the cheaper first-layer order), and with a brain mask, foreground-only patches
    (a patch without a mask voxel is never encoded) and, when the output is masked anyway,
    decoding only the output voxels next to the mask.
``fast``
    ``default`` plus what changes the output by a measured, small amount: patches holding less
    than :data:`FAST_MIN_FOREGROUND` of mask voxels are skipped as long as every mask voxel stays
    covered by a computed patch (the voxels they cover are then averaged over fewer patches),
    and bf16 autocast on CUDA. Its cost, measured as PSNR against ``default`` inside the brain
    on simulated heads, is in ``docs/speed.md`` (>= 40 dB on the demo model and on mid-size and
    published-size models with random weights; 1 % skips few patches, so on the CPU ``fast`` is
    only a little faster than ``default``: its larger gain is bf16 on a GPU).
    Without a mask on the CPU it is ``default``.

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The presets, in order of speed.
SPEEDS: tuple[str, ...] = ("reference", "default", "fast")
DEFAULT_SPEED = "default"

#: ``fast``: patches whose mask voxels are fewer than this fraction of the patch are skipped
#: (while every mask voxel stays covered). Chosen from the measurements in docs/speed.md: the
#: largest fraction tried that keeps >= 40 dB against ``default`` on the published-size random
#: model (1 %: 40.85 dB; 2 %: 37.01 dB; 10 %: 23.25 dB).
FAST_MIN_FOREGROUND = 0.01


@dataclass(frozen=True)
class SpeedPreset:
    """The engine settings of one ``--speed`` value (see the module docstring).

    ``reference``: the authors' loop; ``fused``: run the fused inference network;
    ``min_foreground``: with a mask, skip patches holding fewer mask voxels than this fraction
    of the patch while every mask voxel stays covered (0: only patches without any);
    ``cuda_precision``: ``"fp32"`` or ``"bf16"`` on a CUDA device (the CPU always runs fp32).
    """

    name: str
    reference: bool
    fused: bool
    min_foreground: float
    cuda_precision: str

    def precision(self, device_type: str | None, requested: str | None = None) -> str:
        """The precision to run in: ``requested`` when given, else the preset's for the device.

        Raises ``ValueError`` for bf16 on a device that is not CUDA and for bf16 with
        ``reference`` (the authors' loop is float32).
        """
        if requested not in (None, "fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {requested!r}")
        if requested == "bf16" and self.reference:
            raise ValueError("--speed reference runs in fp32 (the authors' arithmetic); drop bf16")
        if requested == "bf16" and device_type not in (None, "cuda"):
            raise ValueError("bf16 needs a CUDA device; use fp32 on the CPU")
        if requested:
            return requested
        return self.cuda_precision if device_type == "cuda" else "fp32"

    def synthesizer_options(self, device_type: str | None, precision: str | None = None) -> dict:
        """Keyword arguments of :class:`~tumsyn_bids.model.inference.Synthesizer` (``fused``,
        ``precision``) for a device of ``device_type`` (``"cpu"``, ``"cuda"``)."""
        return {"fused": self.fused, "precision": self.precision(device_type, precision)}

    def engine_options(self, masked_output: bool = False) -> dict[str, Any]:
        """Keyword arguments of :class:`~tumsyn_bids.model.inference.PatchSettings`.

        ``masked_output``: the caller sets the output to 0 outside the brain mask afterwards, so
        output voxels away from the mask need not be decoded (never in ``reference``).
        """
        return {
            "reference": self.reference,
            "min_foreground": self.min_foreground,
            "decode_outside_mask": self.reference or not masked_output,
        }


PRESETS: dict[str, SpeedPreset] = {
    "reference": SpeedPreset("reference", True, True, 0.0, "fp32"),
    "default": SpeedPreset("default", False, True, 0.0, "fp32"),
    "fast": SpeedPreset("fast", False, True, FAST_MIN_FOREGROUND, "bf16"),
}


def preset(name: str | None) -> SpeedPreset:
    """The preset called ``name`` (None: :data:`DEFAULT_SPEED`); ``ValueError`` if unknown."""
    key = DEFAULT_SPEED if name is None else str(name)
    if key not in PRESETS:
        raise ValueError(f"unknown speed {name!r}; choose one of {', '.join(SPEEDS)}")
    return PRESETS[key]
