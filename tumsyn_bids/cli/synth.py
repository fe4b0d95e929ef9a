"""``tumsyn-synth``: synthesize one image from one NIfTI file and a prompt.

In the spirit of FreeSurfer's ``mri_synthsr``: no BIDS, no workflow engine, one image in, one
image out. Patch size, voxel size and scale given as three numbers are in the image's (i, j, k)
voxel order; ``--voxel-size`` is exact (the output grid rule of :mod:`tumsyn_bids.model.grid`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .errors import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_SOFTWARE, EX_USAGE
from .parsing import (
    UsageError,
    add_batch_size_argument,
    add_patch_size_argument,
    add_speed_arguments,
    add_weight_arguments,
    batch_size,
    one_or_three,
    patch_size,
    speed,
    weights_or_demo,
)

LOGGER = logging.getLogger("tumsyn_bids.synth")

#: The authors' prompt files hold lines like ``"file.nii.gz": "Age: ...; ..."``.
_PROMPT_LINE = re.compile(r'^\s*"[^"]*"\s*:\s*"(?P<prompt>.*)"\s*$')


def read_prompt_file(path: str | Path) -> str:
    """The single prompt of a prompt file, in the authors' ``"name": "prompt"`` form or plain."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise FileNotFoundError(f"cannot read prompt file {path}: {exc.strerror}") from exc
    if len(lines) != 1:
        raise UsageError(
            f"prompt file {path} holds {len(lines)} non-empty lines; tumsyn-synth takes one prompt"
        )
    match = _PROMPT_LINE.match(lines[0])
    return match.group("prompt") if match else lines[0].strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tumsyn-synth",
        description="Synthesize a brain MR image with TUMSyn from one input image and a text "
        "prompt describing the target contrast and protocol.",
    )
    p.add_argument("input", help="input NIfTI image (3-D)")
    p.add_argument("output", help="output NIfTI path (.nii or .nii.gz)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="target prompt, in TUMSyn's template")
    src.add_argument("--prompt-file", help="file holding one target prompt")
    add_weight_arguments(p)
    res = p.add_mutually_exclusive_group()
    res.add_argument(
        "--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), help="output voxel size, mm"
    )
    res.add_argument(
        "--scale", type=float, nargs="+", metavar="S", help="output samples per input voxel"
    )
    add_patch_size_argument(p)
    p.add_argument("--overlap", type=float, default=0.5, help="patch overlap ratio in [0, 1)")
    add_batch_size_argument(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="default: bf16 with --speed fast on CUDA, else fp32",
    )
    p.add_argument(
        "--text-heads",
        type=int,
        default=None,
        help="attention heads of the text tower when the checkpoint does not record it "
        "(default 8, the published value)",
    )
    add_speed_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or info messages")
    p.add_argument("--version", action="version", version=f"tumsyn-synth {__version__}")
    return p


def _fail(code: int, message: str) -> int:
    print(f"tumsyn-synth: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    # Imported here so that --help and usage errors answer without loading torch.
    import numpy as np

    from ..bids.io import atomic_save_nifti
    from ..model import (
        CheckpointError,
        InputImageError,
        PromptTooLongError,
        Synthesizer,
        load_synthesis,
        load_text_encoder,
    )
    from ..model.grid import GridError
    from ..model.inference import resolve_device
    from ..model.speed import preset as speed_preset
    from ..model.volume import load_volume, synthesize_nifti

    out = Path(args.output)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        return _fail(EX_USAGE, f"output {out} must end in .nii or .nii.gz")
    if not out.parent.is_dir():
        return _fail(EX_CANTCREAT, f"output folder {out.parent} does not exist")
    try:
        checkpoint, text_encoder_path = weights_or_demo(args.checkpoint, args.text_encoder)
    except UsageError as exc:
        return _fail(EX_USAGE, str(exc))
    except CheckpointError as exc:
        return _fail(EX_NOINPUT, str(exc))
    try:
        prompt = args.prompt if args.prompt is not None else read_prompt_file(args.prompt_file)
        patch_ijk = patch_size(args.patch_size, checkpoint)
        volume = load_volume(args.input)
        if args.voxel_size and min(args.voxel_size) <= 0:
            raise UsageError("--voxel-size must be positive")
        scale = None
        if args.scale:
            scale = one_or_three(args.scale, "--scale", 1.0)
            if min(scale) <= 0:
                raise UsageError("--scale must be positive")
        batch = batch_size(args.batch_size, patch_ijk)
        speed_name = speed(args.speed, args.reference)
        if not 0 <= args.overlap < 1:
            raise UsageError(f"--overlap must be in [0, 1), got {args.overlap}")
    except FileNotFoundError as exc:
        return _fail(EX_NOINPUT, str(exc))
    except InputImageError as exc:
        code = EX_NOINPUT if "no such file" in str(exc) else EX_DATAERR
        return _fail(code, str(exc))
    except (UsageError, ValueError) as exc:
        return _fail(EX_USAGE, str(exc))

    preset = speed_preset(speed_name)
    try:
        device = resolve_device(args.device)
        options = preset.synthesizer_options(device.type, args.precision)
    except ValueError as exc:  # bf16 on the CPU or with --speed reference
        return _fail(EX_USAGE, f"--precision: {exc}")
    except RuntimeError as exc:  # --device cuda without CUDA
        return _fail(EX_USAGE, str(exc))
    try:
        network = load_synthesis(checkpoint).model
        text_encoder = load_text_encoder(text_encoder_path, heads=args.text_heads).model
        synth = Synthesizer(network, text_encoder, device=device, **options)
        img, grid = synthesize_nifti(
            synth,
            volume,
            prompt,
            patch_size=patch_ijk,
            voxel_size=args.voxel_size,
            scale=scale,
            overlap=args.overlap,
            batch_size=batch,
            progress=not args.quiet,
            **preset.engine_options(),
        )
    except CheckpointError as exc:
        code = EX_NOINPUT if "not found" in str(exc) else EX_DATAERR
        return _fail(code, str(exc))
    except PromptTooLongError as exc:
        return _fail(EX_DATAERR, f"{exc}; shorten the prompt")
    except InputImageError as exc:
        return _fail(EX_DATAERR, f"{args.input}: {exc}")
    except GridError as exc:
        return _fail(EX_USAGE, str(exc))
    except (RuntimeError, ValueError) as exc:
        return _fail(EX_SOFTWARE, str(exc))

    if preset.reference and grid.query_size is not None and args.voxel_size:
        if any(abs(a - b) > 1e-6 for a, b in zip(grid.voxel_size, args.voxel_size, strict=True)):
            LOGGER.info(
                "--reference: voxel size %s rounded to %s (whole query samples per %s-voxel "
                "patch, as the authors' loop does)",
                tuple(args.voxel_size),
                tuple(round(v, 4) for v in grid.voxel_size),
                tuple(patch_ijk),
            )
    if not np.isfinite(np.asarray(img.dataobj)).all():
        LOGGER.warning("output has voxels no patch covered (NaN); check --patch-size/--overlap")
    try:
        atomic_save_nifti(img, out)
    except OSError as exc:
        return _fail(EX_CANTCREAT, f"cannot write {out}: {exc.strerror}")
    LOGGER.info("wrote %s (%s voxels of %s mm)", out, grid.shape, grid.voxel_size)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
