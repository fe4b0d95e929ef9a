"""``tumsyn bids_dir output_dir {participant,group}``: the BIDS App.

Parses and validates the command line into a run configuration, indexes the dataset, builds the
plan table and runs it as a nipype workflow. Exit codes follow the BIDS Apps execution spec
(see :mod:`tumsyn_bids.cli.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no telemetry, ever; before nipype is imported

from .. import __version__  # noqa: E402
from . import errors  # noqa: E402
from .parsing import (  # noqa: E402
    UsageError,
    add_batch_size_argument,
    add_patch_size_argument,
    add_weight_arguments,
    batch_size,
    check_batch_size,
    one_or_three,
    patch_size,
    weights_or_demo,
)

LOGGER = logging.getLogger("tumsyn_bids")


class CLIError(Exception):
    """A failure the user can fix; carries the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default exit code 2 is not the spec's 64
        self.print_usage(sys.stderr)
        self.exit(errors.EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from ..plan import DEFAULT_SOURCES, SUPPORTED_TARGETS

    p = _Parser(
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
    g.add_argument("--bids-database-dir", type=Path, metavar="DIR")
    g.add_argument("--skip-bids-validation", action="store_true")

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
        help="'native' (the source grid) or X Y Z voxel size in mm",
    )
    add_weight_arguments(s)
    s.add_argument("--text-heads", type=int, default=None)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    add_patch_size_argument(s)
    s.add_argument("--overlap", type=float, default=0.5)
    add_batch_size_argument(s)
    s.add_argument("--reference", action="store_true", help="the authors' loop, exactly")
    s.add_argument("--dry-run", action="store_true", help="print the plan; load no model")

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


def check_paths(args: argparse.Namespace) -> None:
    bids = args.bids_dir
    if not bids.is_dir():
        raise CLIError(errors.EX_NOINPUT, f"BIDS dataset folder not found: {bids}")
    if not (bids / "dataset_description.json").is_file():
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"{bids} has no dataset_description.json: not a BIDS dataset",
        )
    out = args.output_dir
    derivatives = bids / "derivatives"
    allowed = _inside(out, derivatives) and out.resolve() != derivatives.resolve()
    if _inside(out, bids) and not allowed:
        raise CLIError(
            errors.EX_USAGE,
            f"output_dir {out} is inside the input dataset; use a folder outside it or "
            f"{derivatives / 'tumsyn'}",
        )
    from ..bids.derivatives import DerivativesError, existing_version

    try:
        previous = existing_version(out)
    except DerivativesError as exc:
        raise CLIError(errors.EX_CANTCREAT, f"{exc}; choose another output_dir") from None
    if previous is not None and previous != __version__:
        LOGGER.warning(
            "%s holds outputs of tumsyn-bids %s; this is %s: outputs of two versions will mix",
            out,
            previous,
            __version__,
        )
    if _inside(args.work_dir, bids):
        raise CLIError(errors.EX_USAGE, f"work dir {args.work_dir} is inside the input dataset")
    for folder in (out, args.work_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".tumsyn-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            msg = f"cannot write to {folder}: {exc.strerror}"
            raise CLIError(errors.EX_CANTCREAT, msg) from None


def _resolution(values: list[str]) -> tuple[float, float, float] | None:
    if values == ["native"]:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or min(numbers) <= 0:
        raise CLIError(errors.EX_USAGE, "--output-resolution takes 'native' or three sizes in mm")
    return numbers


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CLIError(errors.EX_NOINPUT, f"{what} not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CLIError(errors.EX_USAGE, f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(errors.EX_USAGE, f"{what} {path} must hold a JSON object")
    return data


def _target_like(path: Path) -> dict:
    from ..bids.layout import parse_filename

    sidecar = path
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            sidecar = path.with_name(path.name[: -len(ext)] + ".json")
    if not sidecar.is_file():
        raise CLIError(errors.EX_NOINPUT, f"--target-like: no sidecar {sidecar}")
    _, suffix, _ = parse_filename(path.name)
    metadata = _read_json(sidecar, "--target-like sidecar")
    return {"suffix": suffix, "metadata": metadata, "path": str(sidecar)}


def build_request(args: argparse.Namespace):
    from ..plan import SynthesisRequest

    specs = _read_json(args.target_spec, "--target-spec") if args.target_spec else None
    return SynthesisRequest(
        targets=tuple(args.target),
        sources=tuple(args.source),
        target_specs=specs,
        target_like=_target_like(args.target_like) if args.target_like else None,
        output_resolution=_resolution(args.output_resolution),
    )


def validate_input(bids_dir: Path) -> None:
    from ..bids.validation import ValidatorNotFound, validate_bids

    try:
        result = validate_bids(bids_dir)
    except ValidatorNotFound as exc:
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"cannot validate {bids_dir}: {exc}; install bids-validator-deno or pass "
            "--skip-bids-validation",
        ) from None
    if not result.ok:
        listing = "\n  ".join(result.errors[:20])
        raise CLIError(
            errors.EX_INVALID_DATASET,
            f"{bids_dir} is not a valid BIDS dataset:\n  {listing}\n(fix the dataset, or pass "
            "--skip-bids-validation to run anyway)",
        )


def _print_plan(plan) -> None:
    cols = ["subject", "session", "source", "target_suffix", "status", "output"]
    print(plan[cols].to_string(index=False))
    for row in plan.itertuples(index=False):
        if row.status == "error":
            print(f"ERROR {row.message}")
        elif row.target_prompt:
            print(f"{row.output}\n  source: {row.source_prompt}\n  target: {row.target_prompt}")


def run_participant(args: argparse.Namespace) -> int:
    from ..bids.layout import BIDSIndexError, index_anatomical, read_bids_filter_file
    from ..plan import PlanError, build_plan, write_plan_tsv

    request = build_request(args)
    if not args.skip_bids_validation:
        validate_input(args.bids_dir)
    filters = None
    if args.bids_filter_file:
        try:
            filters = read_bids_filter_file(args.bids_filter_file)
        except (OSError, BIDSIndexError) as exc:
            raise CLIError(errors.EX_USAGE, f"--bids-filter-file: {exc}") from None
    try:
        index = index_anatomical(
            args.bids_dir,
            participant_labels=args.participant_label,
            session_labels=args.session_label,
            bids_filters=filters,
            database_dir=args.bids_database_dir,
        )
        plan = build_plan(index, request, args.output_dir, overwrite=args.overwrite)
    except BIDSIndexError as exc:
        raise CLIError(errors.EX_NOINPUT, str(exc)) from None
    except PlanError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    if args.reports_only:
        return write_reports(args, sorted(set(plan["subject"])))
    if plan.empty:
        raise CLIError(
            errors.EX_NOINPUT,
            f"no anatomical image of a source modality ({', '.join(request.sources)}) was "
            f"selected in {args.bids_dir}",
        )
    write_plan_tsv(plan, args.output_dir)
    if args.dry_run:
        _print_plan(plan)
        return errors.EX_OK
    code = run_plan(plan, args)
    write_reports(args, sorted(set(plan["subject"])))
    return code


def write_reports(args: argparse.Namespace, subjects: list[str]) -> int:
    """Write ``sub-XX.html`` for ``subjects`` from what the output folder holds.

    A report that cannot be written is logged, never turned into a failed run: the images are
    the product, the report is a view of them.
    """
    from ..reports import build_subject_report

    if not subjects:
        raise CLIError(errors.EX_NOINPUT, f"no participant selected in {args.bids_dir}")
    for subject in subjects:
        try:
            path = build_subject_report(args.output_dir, subject, args.bids_dir)
        except Exception as exc:  # noqa: BLE001 - reported, the run's outcome stands
            LOGGER.error("report of sub-%s failed: %s", subject, exc)
            continue
        LOGGER.info("report: %s", path)
    return errors.EX_OK


def run_group(args: argparse.Namespace) -> int:
    """Group level: ``group_synthesis.tsv`` and ``group.html`` over every participant's outputs."""
    from ..reports import build_group_report, list_subjects

    if not list_subjects(args.output_dir):
        raise CLIError(
            errors.EX_NOINPUT,
            f"{args.output_dir} holds no participant outputs; run the participant level first",
        )
    summary = build_group_report(args.output_dir, args.bids_dir)
    table = summary["table"]
    LOGGER.info("group: %s (%d rows), %s", summary["tsv"], len(table), summary["html"])
    if summary["missing"]:
        LOGGER.warning(
            "participants without outputs: %s", ", ".join(f"sub-{m}" for m in summary["missing"])
        )
    outliers = table.loc[table["outlier"].eq("yes"), "output"] if len(table) else []
    for output in outliers:
        LOGGER.warning("intensity outlier: %s", output)
    return errors.EX_OK


def resolve_weights(args: argparse.Namespace) -> tuple[Path, Path]:
    from ..model.checkpoints import CheckpointError

    try:
        paths = weights_or_demo(args.checkpoint, args.text_encoder)
    except UsageError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    except CheckpointError as exc:
        raise CLIError(errors.EX_NOINPUT, str(exc)) from None
    for path in paths:
        if not path.is_file():
            raise CLIError(errors.EX_NOINPUT, f"weights file not found: {path}")
    return paths


def plugin_settings(args: argparse.Namespace) -> tuple[str, dict]:
    """Nipype plugin and its arguments: from ``--use-plugin`` YAML, else MultiProc/Linear."""
    if args.use_plugin:
        import yaml

        try:
            spec = yaml.safe_load(args.use_plugin.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CLIError(errors.EX_USAGE, f"--use-plugin {args.use_plugin}: {exc}") from None
        if not isinstance(spec, dict):
            raise CLIError(errors.EX_USAGE, f"--use-plugin {args.use_plugin}: not a mapping")
        return spec.get("plugin", "MultiProc"), dict(spec.get("plugin_args") or {})
    if args.nprocs == 1:
        return "Linear", {}
    plugin_args: dict = {"n_procs": args.nprocs, "raise_insufficient": False}
    if args.mem_gb:
        plugin_args["memory_gb"] = args.mem_gb
    return "MultiProc", plugin_args


def run_plan(plan, args: argparse.Namespace) -> int:
    """Execute the plan and turn its outcome into messages and an exit code."""
    from ..bids.derivatives import subject_log_dir
    from ..pipeline import execute_plan
    from ..workflows import ModelSpec

    checkpoint, text_encoder = resolve_weights(args)
    args.patch_size = patch_size(args.patch_size, checkpoint)
    args.batch_size = batch_size(args.batch_size, args.patch_size)
    plugin, plugin_args = plugin_settings(args)
    model = ModelSpec(
        checkpoint=str(checkpoint),
        text_encoder=str(text_encoder),
        text_heads=args.text_heads,
        device=args.device,
        precision=args.precision,
        patch_size=tuple(args.patch_size),
        overlap=args.overlap,
        batch_size=args.batch_size,
        reference=args.reference,
        num_threads=args.omp_nthreads,
    )
    output_dir = args.output_dir.resolve()
    run_config = {
        "bids_dir": str(args.bids_dir.resolve()),
        "output_dir": str(output_dir),
        "work_dir": str(args.work_dir.resolve()),
        "targets": list(args.target),
        "sources": list(args.source),
        "output_resolution": args.output_resolution,
        "participant_label": args.participant_label,
        "session_label": args.session_label,
        "plugin": {"name": plugin, "args": plugin_args},
    }
    final = execute_plan(
        plan,
        bids_dir=args.bids_dir.resolve(),
        output_dir=output_dir,
        work_dir=args.work_dir.resolve(),
        model=model,
        plugin=plugin,
        plugin_args=plugin_args,
        run_config=run_config,
        write_graph=args.write_graph,
        stop_on_first_crash=args.stop_on_first_crash,
    )
    counts = final["status"].value_counts().to_dict()
    LOGGER.info("outputs: %s", json.dumps(counts, sort_keys=True))
    for message in final.loc[final["status"] == "error", "message"]:
        print(f"tumsyn: error: {message}", file=sys.stderr)
    failed = sorted(set(final.loc[final["status"] == "failed", "subject"]))
    if failed:
        where = ", ".join(str(subject_log_dir(output_dir, s)) for s in failed)
        print(
            f"tumsyn: error: {counts['failed']} synthesis job(s) failed for "
            f"{', '.join('sub-' + s for s in failed)}; crash files in {where}",
            file=sys.stderr,
        )
        return errors.EX_FAILURE
    return errors.EX_DATAERR if counts.get("error") else errors.EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    # Our own handler only: nipype configures its loggers itself, a root handler would echo them.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    start = time.time()
    try:
        if args.patch_size:  # checked now; resolved with the weights in run_plan
            one_or_three(args.patch_size, "--patch-size", 0)
        if not 0 <= args.overlap < 1:
            raise CLIError(errors.EX_USAGE, "--overlap must be in [0, 1)")
        check_batch_size(args.batch_size)  # checked now; resolved with the patch in run_plan
        check_paths(args)
        if args.analysis_level == "group":
            code = run_group(args)
        else:
            code = run_participant(args)
    except CLIError as exc:
        print(f"tumsyn: error: {exc}", file=sys.stderr)
        return exc.code
    except UsageError as exc:
        print(f"tumsyn: error: {exc}", file=sys.stderr)
        return errors.EX_USAGE
    except KeyboardInterrupt:
        print("tumsyn: interrupted", file=sys.stderr)
        return 130
    LOGGER.info("finished in %.1f s", time.time() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
