"""``tumsyn-simulate``: write a simulated multi-contrast BIDS dataset with exact ground truth.

Training and evaluating TUMSyn needs subjects scanned with many protocols, and evaluation needs
the true image of the requested protocol. This command writes such data offline, from the
MNI ICBM152 2009 template and MR signal equations (:mod:`tumsyn_bids.simulate`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from .errors import EX_CANTCREAT, EX_OK, EX_USAGE

#: Mirrors tumsyn_bids.simulate (not imported here so that --help stays fast).
_SUFFIXES = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")
_DEFAULT_MODALITIES = ("T1w", "T2w", "FLAIR", "PDw")

_EPILOG = """\
Each subject is the MNI ICBM152 2009 template's grey-matter, white-matter and CSF maps warped
by a smooth random deformation and a small random rotation, shift and scale. Every image is
rendered from those maps with the signal equation of its sequence (spin echo, variable-flip-
angle 3-D TSE, inversion recovery, spoiled gradient echo, MPRAGE) and literature relaxation
times at the subject's field strength (1.5 T or 3 T), then given a smooth bias field and Rician
noise. Protocol parameters (TR, TE, TI, flip angle) are drawn per scan from typical ranges and
written to the JSON sidecars in BIDS units (seconds, degrees).

With --with-head each brain is wrapped in a simulated head (extra-axial CSF, skull, scalp
muscle, fat, skin; same signal equations, literature relaxation values) on a wider grid, for
testing brain extraction and bias correction; the brain ground truth stays exact.

The exact tissue maps go to OUT_DIR/derivatives/simulation, on the scans' grid; with them
tumsyn_bids.simulate.render_ground_truth() gives the noise-free image of ANY protocol. Output is
deterministic: the same options give byte-identical files. A subject depends only on --seed
and its label, so held-out subjects can be written later with --first-subject or another seed.

Example:
  tumsyn-simulate sim --subjects 10 --voxel-size 1.5
  tumsyn-simulate sim-test --subjects 5 --first-subject 11

Exit codes: 0 success, 64 bad option value, 73 OUT_DIR cannot be written (e.g. exists and is
not empty without --overwrite).
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with EX_USAGE (64), like the other tumsyn commands."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tumsyn-simulate",
        description="Simulate a multi-contrast brain MRI BIDS dataset (T1w, T2w, FLAIR, PDw,\n"
        "T2starw) with physics-based contrast, random protocols per scan, and exact\n"
        "ground-truth tissue maps.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must be new or empty)")
    p.add_argument(
        "--subjects",
        type=_positive_int,
        default=4,
        metavar="N",
        help="number of subjects (default: %(default)s)",
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        choices=_SUFFIXES,
        default=list(_DEFAULT_MODALITIES),
        metavar="SUFFIX",
        help=f"BIDS suffixes to simulate, one scan each per subject; from {', '.join(_SUFFIXES)} "
        f"(default: {' '.join(_DEFAULT_MODALITIES)})",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        help="random seed of the dataset (default: %(default)s)",
    )
    p.add_argument(
        "--voxel-size",
        type=_positive_float,
        default=1.5,
        metavar="MM",
        help="isotropic voxel size in mm (default: %(default)s; 1.0 gives 167x204x177 voxels, "
        "3.0 is fast for tests)",
    )
    p.add_argument(
        "--snr",
        type=_positive_float,
        default=30.0,
        help="signal-to-noise ratio: mean brain signal over the noise SD (default: %(default)s)",
    )
    p.add_argument(
        "--first-subject",
        type=_non_negative_int,
        default=1,
        metavar="K",
        help="number of the first subject label, e.g. 11 gives sub-11, sub-12, ... "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--nprocs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="simulate N subjects in parallel processes; output is identical "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--runs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="scans per modality and subject, each with its own random protocol (BIDS run-1 "
        "... run-N when N > 1): more protocols per anatomy for training (default: %(default)s)",
    )
    p.add_argument(
        "--with-head",
        action="store_true",
        help="add non-brain tissue around each brain (skull, scalp, fat, extra-axial CSF): "
        "raw-looking heads with an exact brain mask in the derivatives",
    )
    p.add_argument(
        "--no-derivatives",
        action="store_true",
        help="do not write the ground-truth tissue maps to OUT_DIR/derivatives/simulation",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT_DIR if it holds a dataset tumsyn-simulate wrote earlier (other "
        "non-empty folders are never replaced)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if len(set(args.modalities)) != len(args.modalities):
        print("tumsyn-simulate: error: --modalities lists a suffix twice", file=sys.stderr)
        return EX_USAGE
    # Imported here so that --help does not pay for scipy and nibabel.
    from ..simulate import write_simulated_dataset

    try:
        root = write_simulated_dataset(
            args.out_dir,
            n_subjects=args.subjects,
            modalities=tuple(args.modalities),
            seed=args.seed,
            voxel_size=args.voxel_size,
            snr=args.snr,
            derivatives=not args.no_derivatives,
            first_subject=args.first_subject,
            overwrite=args.overwrite,
            n_procs=args.nprocs,
            runs=args.runs,
            with_head=args.with_head,
        )
    except (FileExistsError, NotADirectoryError) as exc:
        print(f"tumsyn-simulate: error: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"tumsyn-simulate: error: cannot write {args.out_dir}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    runs = f" x {args.runs} runs" if args.runs > 1 else ""
    heads = " (heads)" if args.with_head else ""
    print(
        f"wrote {args.subjects} simulated subject(s){heads} x {len(args.modalities)} "
        f"modalities{runs} to {root}"
    )
    return EX_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
