"""``tumsyn``'s command line: the parser, the path checks, and :func:`parse_config`.

:func:`parse_config` is the only way from ``argv`` to a run: it parses, checks every value and
every path, and resolves the arguments into one :class:`RunConfig`
(:mod:`tumsyn_bids.cli.resolve`). Errors are :class:`~tumsyn_bids.cli.errors.CLIError` with the
exit code of :mod:`tumsyn_bids.exitcodes`. Importing this module imports neither torch nor the
model code; resolving ``--device auto`` (not in a dry run) does.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..config import (
    DEFAULT_SOURCES,
    PREPROC_MODES,
    SKULL_STRIP_MODES,
    SUPPORTED_TARGETS,
    RunConfig,
)
from . import errors
from .errors import CLIError
from .parsing import (
    Parser,
    add_batch_size_argument,
    add_patch_size_argument,
    add_speed_arguments,
    add_weight_arguments,
)
from .resolve import build_config, check_values

LOGGER = logging.getLogger("tumsyn_bids")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``tumsyn`` (options are documented in docs/usage.md)."""
    p = Parser(
        prog="tumsyn",
        description="TUMSyn BIDS App: synthesize brain MR images of other contrasts and "
        "resolutions from the anatomical images of a BIDS dataset.",
    )
    p.add_argument("bids_dir", type=Path, help="the input BIDS dataset (never written to)")
    p.add_argument("output_dir", type=Path, help="where the derivatives go")
    p.add_argument("analysis_level", choices=["participant", "group"])
    p.add_argument("--version", action="version", version=f"tumsyn-bids {__version__}")

    g = p.add_argument_group("selecting data")
    g.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL")
    g.add_argument("--session-label", nargs="+", metavar="LABEL")
    g.add_argument("--bids-filter-file", type=Path, metavar="FILE", help="PyBIDS query JSON")
    g.add_argument(
        "--bids-database-dir",
        type=Path,
        metavar="DIR",
        help="shared PyBIDS index: built once (with the validator's verdict), reused while the "
        "selected participants' files are unchanged (docs/hpc.md)",
    )
    g.add_argument("--skip-bids-validation", action="store_true")
    g.add_argument(
        "--index-only",
        action="store_true",
        help="build or update the index in --bids-database-dir, validate the dataset once and "
        "record the verdict there, then exit (before a cluster array; docs/hpc.md)",
    )
    g.add_argument(
        "--list-participants",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the labels of the participants this selection would process, one per line, "
        "to FILE (default: standard output) and exit; 66 when none (docs/hpc.md)",
    )

    s = p.add_argument_group("synthesis")
    s.add_argument(
        "--target",
        nargs="+",
        default=["missing"],
        metavar="MOD",
        help=f"modalities to synthesize ({', '.join(SUPPORTED_TARGETS)}) or 'missing' "
        "(every supported modality the session lacks; default)",
    )
    s.add_argument(
        "--source",
        nargs="+",
        default=list(DEFAULT_SOURCES),
        metavar="MOD",
        help="modalities to synthesize from, in order of preference",
    )
    s.add_argument("--target-spec", type=Path, metavar="FILE", help="JSON target protocols")
    s.add_argument("--target-like", type=Path, metavar="BIDS_FILE", help="copy this protocol")
    s.add_argument(
        "--output-resolution",
        nargs="+",
        default=["native"],
        metavar="MM",
        help="'native' (the source grid) or X Y Z voxel size in mm (exact; the field of view "
        "is kept centred)",
    )
    add_weight_arguments(s)
    s.add_argument("--text-heads", type=int, default=None)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="default: bf16 with --speed fast on CUDA, else fp32",
    )
    add_patch_size_argument(s)
    s.add_argument("--overlap", type=float, default=0.5)
    add_batch_size_argument(s)
    add_speed_arguments(s)
    s.add_argument("--dry-run", action="store_true", help="print the plan; load no model")

    q = p.add_argument_group("preprocessing (docs/preprocessing.md)")
    q.add_argument(
        "--preproc",
        default="full",
        choices=list(PREPROC_MODES),
        help="'full' (default): conform to RAS+, brain mask, N4, brain extraction, results "
        "back on the source grid; 'none': the source as stored into the network, no mask",
    )
    q.add_argument(
        "--skull-strip-source",
        default="auto",
        choices=list(SKULL_STRIP_MODES),
        help="'auto' (default): brain-extract unless the image is already brain-extracted; "
        "'force': always; 'skip': never (the mask is the image's non-zero voxels)",
    )
    q.add_argument("--no-inu", action="store_true", help="no N4 bias-field correction")
    q.add_argument(
        "--no-mask-output",
        action="store_true",
        help="keep the network's output everywhere (default: 0 outside the brain mask grown by one "
        "voxel)",
    )
    q.add_argument(
        "--save-preproc",
        action="store_true",
        help="also write the preprocessed source (desc-preproc_<suffix>) on the source grid",
    )

    t = p.add_argument_group("output spaces (docs/templates.md)")
    t.add_argument(
        "--output-spaces",
        nargs="+",
        default=["T1w"],
        metavar="SPACE",
        help="where outputs are written: 'T1w' (the source grid; default, always written) "
        "and TemplateFlow templates, e.g. MNI152NLin2009aSym or MNI152NLin2009aSym:res-2 "
        "(registration with ANTs; needs --preproc full and the template in "
        "$TEMPLATEFLOW_HOME: tumsyn-templates init)",
    )

    r = p.add_argument_group("running")
    r.add_argument("-w", "--work-dir", type=Path, default=Path("work"))
    r.add_argument("--nprocs", "--n-cpus", type=int, default=os.cpu_count() or 1)
    r.add_argument("--omp-nthreads", type=int, default=None)
    r.add_argument("--mem-gb", "--mem", type=float, default=None)
    r.add_argument("--use-plugin", type=Path, metavar="YAML", help="nipype plugin settings")
    r.add_argument("--stop-on-first-crash", action="store_true")
    r.add_argument("--write-graph", action="store_true")
    r.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    r.add_argument(
        "--reports-only",
        action="store_true",
        help="participant level: rebuild the HTML reports (sub-XX.html) from the existing "
        "derivatives without running the model",
    )
    r.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def check_input(bids: Path) -> None:
    """The dataset exists and is BIDS (exit 66, 16)."""
    if not bids.is_dir():
        raise CLIError(errors.EX_NOINPUT, f"BIDS dataset folder not found: {bids}")
    if not (bids / "dataset_description.json").is_file():
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"{bids} has no dataset_description.json: not a BIDS dataset",
        )


def check_paths(bids: Path, out: Path, work: Path) -> None:
    """The dataset exists and is BIDS; output and work dirs are outside it and writable.

    Creates ``out`` and ``work`` (that is how writability is proven). Warns when ``out`` holds
    outputs of another tumsyn-bids version.
    """
    check_input(bids)
    derivatives = bids / "derivatives"
    allowed = _inside(out, derivatives) and out.resolve() != derivatives.resolve()
    if _inside(out, bids) and not allowed:
        raise CLIError(
            errors.EX_USAGE,
            f"output_dir {out} is inside the input dataset; use a folder outside it or "
            f"{derivatives / 'tumsyn'}",
        )
    from ..bids.dataset import check_output_source, existing_version
    from ..bids.names import DerivativesError

    try:
        previous = existing_version(out)
        check_output_source(out, bids)
    except DerivativesError as exc:
        fix = "" if "choose" in str(exc) else "; choose another output_dir"
        raise CLIError(errors.EX_CANTCREAT, f"{exc}{fix}") from None
    if previous is not None and previous != __version__:
        LOGGER.warning(
            "%s holds outputs of tumsyn-bids %s; this is %s: outputs of two versions will mix",
            out,
            previous,
            __version__,
        )
    if _inside(work, bids):
        raise CLIError(errors.EX_USAGE, f"work dir {work} is inside the input dataset")
    for what, folder in (("output_dir", out), ("work dir", work)):
        if folder.exists() and not folder.is_dir():
            raise CLIError(
                errors.EX_CANTCREAT, f"{what} {folder} is a file, not a folder; choose another"
            )
    from ..bids.io import temporary_name

    for folder in (out, work):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # A name of its own: runs started together (a SLURM array) probe at once.
            probe = folder / temporary_name(folder / "tumsyn-write-test")
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            msg = f"cannot write to {folder}: {exc.strerror}"
            raise CLIError(errors.EX_CANTCREAT, msg) from None


def parse_config(argv: Sequence[str] | None = None) -> tuple[RunConfig, int]:
    """``argv`` -> (:class:`RunConfig`, verbosity).

    Usage errors found by argparse exit 64 there; every other problem raises
    :class:`CLIError` with its exit code: option values first, then the paths, then what
    needs reading (JSON files, weights).
    """
    args = build_parser().parse_args(argv)
    check_values(args)
    if args.index_only or args.list_participants is not None:  # no output or work folder
        check_input(args.bids_dir)
    else:
        check_paths(args.bids_dir, args.output_dir, args.work_dir)
    return build_config(args), args.verbose
