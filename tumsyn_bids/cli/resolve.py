"""``tumsyn``'s arguments, checked and resolved once into the frozen :class:`RunConfig`.

:func:`check_values` checks every option value; :func:`build_config` resolves what depends on
the environment or the weights (weight files, device, patch size, batch size, nipype plugin,
output spaces in the TemplateFlow home). Errors are :class:`~tumsyn_bids.cli.errors.CLIError`
with the exit code of :mod:`tumsyn_bids.exitcodes`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..config import (
    ExecutionConfig,
    InferenceConfig,
    PreprocConfig,
    RunConfig,
    SynthesisRequest,
)
from . import errors
from .errors import CLIError
from .parsing import (
    UsageError,
    batch_size,
    check_batch_size,
    one_or_three,
    patch_size,
    precision,
    speed,
    weights_or_demo,
)

LOGGER = logging.getLogger("tumsyn_bids")


def _resolution(values: list[str]) -> tuple[float, float, float] | None:
    if values == ["native"]:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or not all(0 < n < float("inf") for n in numbers):
        raise CLIError(errors.EX_USAGE, "--output-resolution takes 'native' or three sizes in mm")
    return numbers


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from ``path``; :class:`CLIError` (66 missing, 64 not a JSON object)."""
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
    from ..bids.names import parse_filename

    sidecar = path
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            sidecar = path.with_name(path.name[: -len(ext)] + ".json")
    if not sidecar.is_file():
        raise CLIError(errors.EX_NOINPUT, f"--target-like: no sidecar {sidecar}")
    _, suffix, _ = parse_filename(path.name)
    metadata = read_json_object(sidecar, "--target-like sidecar")
    return {"suffix": suffix, "metadata": metadata, "path": str(sidecar)}


def _request(args: argparse.Namespace) -> SynthesisRequest:
    specs = read_json_object(args.target_spec, "--target-spec") if args.target_spec else None
    return SynthesisRequest(
        targets=tuple(args.target),
        sources=tuple(args.source),
        target_specs=specs,
        target_like=_target_like(args.target_like) if args.target_like else None,
        output_resolution=_resolution(args.output_resolution),
    )


def _filters(args: argparse.Namespace):
    if not args.bids_filter_file:
        return None
    from ..bids.layout import BIDSIndexError, read_bids_filter_file

    try:
        return read_bids_filter_file(args.bids_filter_file)
    except (OSError, BIDSIndexError) as exc:
        raise CLIError(errors.EX_USAGE, f"--bids-filter-file: {exc}") from None


def _weights(args: argparse.Namespace) -> tuple[Path, Path]:
    from ..model.errors import CheckpointError

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


def _device_type(device: str, plugin: str = "Linear") -> str:
    """``cpu`` or ``cuda``; asking torch only when it must (``auto``, ``cuda``).

    With a batch plugin (SLURM...) the synthesis runs on other machines: ``cuda`` is taken as
    asked (the submitting host often has no GPU), ``auto`` still means this host's devices.
    """
    from ..batch import LOCAL_PLUGINS

    if device == "cpu":
        return "cpu"
    if device == "cuda" and plugin not in LOCAL_PLUGINS:
        return "cuda"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise CLIError(errors.EX_USAGE, "--device cuda: no CUDA device is available")
    return "cpu"


def check_weight_files(checkpoint: Path, text_encoder: Path, text_heads: int | None) -> None:
    """Load both checkpoints once before anything runs (not in a dry run, which loads no model):
    exit 64 when ``--text-heads`` does not divide the text width, 65 for any other unusable
    weights (:func:`tumsyn_bids.model.checkpoints.check_weights`)."""
    from ..model.checkpoints import check_weights
    from ..model.errors import CheckpointError, TextHeadsError

    try:
        check_weights(checkpoint, text_encoder, heads=text_heads)
    except TextHeadsError as exc:
        code = errors.EX_USAGE if text_heads else errors.EX_DATAERR
        raise CLIError(code, f"--text-encoder: {exc}") from None
    except CheckpointError as exc:
        raise CLIError(errors.EX_DATAERR, str(exc)) from None


def _inference(args: argparse.Namespace, plugin: str = "Linear") -> InferenceConfig:
    from ..model.errors import CheckpointError

    checkpoint, text_encoder = _weights(args)
    try:
        patch = patch_size(args.patch_size, checkpoint)
        batch = batch_size(args.batch_size, patch)
        preset = speed(args.speed, args.reference)
    except UsageError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    except CheckpointError as exc:  # reading the recorded patch size of a broken file
        raise CLIError(errors.EX_DATAERR, f"--checkpoint: {exc}") from None
    if not args.dry_run:
        check_weight_files(checkpoint, text_encoder, args.text_heads)
    if min(patch) < 1:
        raise CLIError(errors.EX_USAGE, f"--patch-size must be positive, got {patch}")
    device_type = None if args.dry_run else _device_type(args.device, plugin)
    try:
        # a dry run resolves no device: take an explicit --device as asked
        asked = device_type or (None if args.device == "auto" else args.device)
        resolved_precision = precision(preset, asked, args.precision)
    except UsageError as exc:
        raise CLIError(errors.EX_USAGE, f"--precision: {exc}") from None
    return InferenceConfig(
        checkpoint=str(checkpoint),
        text_encoder=str(text_encoder),
        text_heads=args.text_heads,
        device=args.device,
        device_type=device_type,
        precision=resolved_precision,
        patch_size=tuple(int(n) for n in patch),
        overlap=args.overlap,
        batch_size=batch,
        speed=preset,
        num_threads=args.omp_nthreads,
    )


def _preproc(args: argparse.Namespace) -> PreprocConfig:
    """The preprocessing settings; refuses options that only ``--preproc full`` can use."""
    if args.preproc == "none":
        unused = [
            option
            for option, given in (
                ("--skull-strip-source", args.skull_strip_source != "auto"),
                ("--no-inu", args.no_inu),
                ("--no-mask-output", args.no_mask_output),
                ("--save-preproc", args.save_preproc),
            )
            if given
        ]
        if unused:
            raise CLIError(
                errors.EX_USAGE,
                f"{', '.join(unused)}: only used with --preproc full; drop "
                f"{'them' if len(unused) > 1 else 'it'} or --preproc none",
            )
    return PreprocConfig(
        preproc=args.preproc,
        skull_strip_source=args.skull_strip_source,
        inu=not args.no_inu,
        mask_output=not args.no_mask_output,
        save_preproc=args.save_preproc,
    )


def _output_spaces(args: argparse.Namespace, check_templates: bool = False) -> tuple[str, ...]:
    """``--output-spaces`` in canonical spelling (``T1w``, ``MNI152NLin2009aSym:res-2``).

    Exit 64 for a malformed value, for a template space without ``--preproc full`` (the
    registration reads the preprocessed brain and its mask) and, with ``check_templates``, for
    a template or resolution the TemplateFlow home lacks (one line: template, home, fix).
    """
    from ..templates.spaces import parse_output_spaces

    try:
        spaces = parse_output_spaces(args.output_spaces)
    except ValueError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    templates = [space for space in spaces if space.is_template]
    if templates and args.preproc != "full":
        raise CLIError(
            errors.EX_USAGE,
            f"--output-spaces {templates[0]}: template spaces need --preproc full (the "
            "registration reads the preprocessed brain and its mask); drop --preproc none",
        )
    if check_templates:
        from ..templates.flow import TemplateNotFoundError, get_template
        from ..templates.references import brain_reference, reference_grid

        for space in templates:
            try:
                brain_reference(space.name, 1)  # what registration aims at
                try:  # the output grid: the home's file at that resolution ...
                    get_template(space.name, space.resolution, "mask", desc="brain")
                except TemplateNotFoundError:
                    if space.resolution != 2:
                        raise
                    reference_grid(space.name, 2)  # ... or res-2 derived from a 1 mm res-1
            except TemplateNotFoundError as exc:
                raise CLIError(errors.EX_USAGE, f"--output-spaces {space}: {exc}") from None
    return tuple(str(space) for space in spaces)


def _execution(args: argparse.Namespace) -> ExecutionConfig:
    """Nipype plugin and its arguments: from ``--use-plugin`` YAML, else MultiProc (workers
    started by a fork server) or Linear."""
    if args.use_plugin:
        import yaml

        try:
            spec = yaml.safe_load(args.use_plugin.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CLIError(errors.EX_USAGE, f"--use-plugin {args.use_plugin}: {exc}") from None
        if not isinstance(spec, dict):
            raise CLIError(errors.EX_USAGE, f"--use-plugin {args.use_plugin}: not a mapping")
        plugin, plugin_args = spec.get("plugin", "MultiProc"), dict(spec.get("plugin_args") or {})
        if plugin == "MultiProc":  # see below: forked workers deadlock in torch
            plugin_args.setdefault("mp_context", "forkserver")
    elif args.nprocs == 1:
        plugin, plugin_args = "Linear", {}
    else:
        # Workers from a fork server, not forked from this process: torch's OpenMP pool, once
        # used here (weights checked, device resolved), deadlocks in forked children (seen in
        # deepbet's first parallel operation).
        plugin, plugin_args = (
            "MultiProc",
            {
                "n_procs": args.nprocs,
                "raise_insufficient": False,
                "mp_context": "forkserver",
            },
        )
        if args.mem_gb:
            plugin_args["memory_gb"] = args.mem_gb
    return ExecutionConfig(
        work_dir=args.work_dir.resolve(),
        plugin=plugin,
        plugin_args=plugin_args,
        nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads,
        mem_gb=args.mem_gb,
        stop_on_first_crash=args.stop_on_first_crash,
        write_graph=args.write_graph,
        overwrite=args.overwrite,
    )


def _labels(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


#: A BIDS label: letters and digits only (``--participant-label 01`` or ``sub-01``).
_LABEL = re.compile(r"[A-Za-z0-9]+")


def check_labels(values: Sequence[str] | None, option: str, prefix: str) -> None:
    """Refuse labels that are not BIDS labels (``../x``, ``01/anat``, empty) with exit 64."""
    for value in values or ():
        label = value[len(prefix) :] if value.startswith(prefix) else value
        if not _LABEL.fullmatch(label):
            raise CLIError(
                errors.EX_USAGE,
                f"{option} {value!r} is not a BIDS label: letters and digits only, with or "
                f"without the {prefix!r} prefix (e.g. {option} 01)",
            )


def check_values(args: argparse.Namespace) -> None:
    """Refuse option values that parse but cannot be used (exit 64), before touching files."""
    check_labels(args.participant_label, "--participant-label", "sub-")
    check_labels(args.session_label, "--session-label", "ses-")
    try:
        if args.patch_size:
            one_or_three(args.patch_size, "--patch-size", 0)
        check_batch_size(args.batch_size)
        speed(args.speed, args.reference)
    except UsageError as exc:
        raise CLIError(errors.EX_USAGE, str(exc)) from None
    if not 0 <= args.overlap < 1:
        raise CLIError(errors.EX_USAGE, "--overlap must be in [0, 1)")
    if args.index_only and not args.bids_database_dir:
        raise CLIError(errors.EX_USAGE, "--index-only needs --bids-database-dir DIR")
    listing = args.list_participants is not None
    for flag, given in (("--index-only", args.index_only), ("--list-participants", listing)):
        if given and (args.analysis_level != "participant" or args.dry_run or args.reports_only):
            raise CLIError(
                errors.EX_USAGE,
                f"{flag} works at the participant level, without --dry-run and --reports-only",
            )
    if not (args.target_spec or args.target_like):  # those name more targets: checked later
        from ..plan import PlanError, check_request

        try:
            check_request(SynthesisRequest(targets=tuple(args.target)))
        except PlanError as exc:
            raise CLIError(errors.EX_USAGE, str(exc)) from None
    _preproc(args)
    _output_spaces(args)


def build_config(args: argparse.Namespace) -> RunConfig:
    """Validate parsed arguments and resolve them into the frozen :class:`RunConfig`.

    The group level and ``--reports-only`` need no weights (``inference`` is None).
    """
    check_values(args)
    needs_model = args.analysis_level == "participant" and not (
        args.reports_only or args.index_only or args.list_participants is not None
    )
    execution = _execution(args)
    return RunConfig(
        bids_dir=args.bids_dir.resolve(),
        output_dir=args.output_dir.resolve(),
        analysis_level=args.analysis_level,
        participant_label=_labels(args.participant_label),
        session_label=_labels(args.session_label),
        bids_filters=_filters(args),
        bids_database_dir=args.bids_database_dir.resolve() if args.bids_database_dir else None,
        skip_bids_validation=args.skip_bids_validation,
        request=_request(args),
        inference=_inference(args, execution.plugin) if needs_model else None,
        execution=execution,
        preproc=_preproc(args),
        output_spaces=_output_spaces(args, check_templates=needs_model),
        dry_run=args.dry_run,
        reports_only=args.reports_only,
        list_participants=args.list_participants,
        index_only=args.index_only,
        version=__version__,
    )
