"""The plan table: one row per synthesis job, the spine of a tumsyn-bids run.

``--dry-run`` prints it, the workflow executes it, each run's ``logs/run-<run_id>/prompts.tsv``
records it (:mod:`tumsyn_bids.runlog`) and the reports read its outcome. It is built from the
BIDS index (:mod:`tumsyn_bids.bids.layout`) and the user's synthesis choices, with the prompt
builder of :mod:`tumsyn_bids.prompts`; nothing here loads a model or imports torch.

Rules:

* **Sources.** In each subject/session, the first modality of ``sources`` (the preference
  order) that has usable images is the source; every image of that modality is a source.
* **Targets.** ``targets`` are BIDS suffixes; ``missing`` expands to every supported suffix the
  session lacks. An explicit target protocol means the user wants it: the suffix of
  ``target_like`` (``--target-like``) is a target in every session, whatever ``targets`` says,
  also where the session has that suffix already. A target equal to the source's suffix is
  skipped unless it has an explicit protocol (``target_like`` or a ``target_specs`` entry):
  that is a domain transfer to another protocol of the same contrast. A ``target_specs``
  (``--target-spec``) entry is a protocol *for* a target, not a request: where its suffix is not
  a target (the session has it and ``targets`` is ``missing``, or ``targets`` does not name it)
  it is unused, and a warning says where and why.
* **Target protocol.** Per target suffix: the ``target_specs`` entry, else the protocol of
  ``target_like``, else the built-in default (``tumsyn_bids/data/default_protocols.json``); a
  suffix given by both ``target_specs`` and ``target_like`` is refused as ambiguous. Field
  strength and manufacturer missing from the target come from the source image.
* **Output grid.** One :class:`~tumsyn_bids.model.grid.OutputGrid` per job (column
  ``output_grid``), from :func:`~tumsyn_bids.model.grid.output_grid` (numpy only):
  ``output_resolution=None`` keeps the source grid; three numbers (mm, along the image's i, j, k
  axes) give exactly that voxel size over the source's field of view, centred (the rule is in
  that module's docstring); with ``reference=True`` the authors' rounding applies. The target
  prompt's ``Voxel size``, the sidecar, the workflow and the post-processing check all read it.
  With preprocessing (``preprocess=True``) the network runs on the conformed (RAS+) image and
  the grid is :func:`~tumsyn_bids.preproc.orientation.conformed_output_grid`'s, which for the
  centred default rule is the same grid and in reference mode anchors the authors' grid at the
  conformed axes' first voxel.
  Its prompts (source and target) then state voxel sizes along the conformed axes, the order
  of the image the network reads; the sidecar's ``TargetProtocol.VoxelSize`` and the header
  keep the source's (i, j, k) order of the written image.
* **T1w reference.** With preprocessing, a source of another suffix gets the first T1w of its
  session (by path, without a ``ce`` entity) as ``anat_reference``: its brain mask is carried
  over to the source (docs/preprocessing.md). None when the session has no T1w.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .bids.io import atomic_write_text, is_finished
from .bids.modalities import modality_table, resolve_modality
from .bids.names import derivative_relpath
from .bids.records import ScanIndex, ScanRecord, t1w_reference
from .config import DEFAULT_SOURCES, SUPPORTED_TARGETS, SynthesisRequest
from .model.grid import GridError, OutputGrid, output_grid
from .model.tokenizer import count_tokens
from .preproc.orientation import conformed_output_grid, orientation_of, to_conformed_axes
from .prompts.protocol import Protocol, protocol_from_sidecar
from .prompts.template import build_prompt, target_prompt
from .prompts.values import PromptError

__all__ = [
    "DEFAULT_SOURCES",
    "PLAN_COLUMNS",
    "SUPPORTED_TARGETS",
    "PlanError",
    "SynthesisRequest",
    "build_plan",
    "write_plan_tsv",
]

LOGGER = logging.getLogger(__name__)

PLAN_COLUMNS: tuple[str, ...] = (
    "subject",
    "session",
    "source",
    "source_suffix",
    "source_modality",
    "source_prompt",
    "target_suffix",
    "target_modality",
    "target_protocol",
    "target_prompt",
    "output_grid",
    "output",
    "anat_reference",
    "status",
    "message",
)
"""Plan columns: ``source`` and ``output`` are paths relative to the input and output roots;
``target_protocol`` is a dict in BIDS names and units; ``output_grid`` the job's
:class:`~tumsyn_bids.model.grid.OutputGrid` (shape, voxel size, affine; None when the source
cannot be used); ``anat_reference`` the T1w whose brain mask a non-T1w source takes (input
path; None otherwise); ``status`` is ``planned``, ``done`` (finished output found),
``skipped`` (nothing to do) or ``error`` (this job cannot run; ``message`` says why)."""


class PlanError(ValueError):
    """The synthesis request itself is unusable (unknown target, bad target spec)."""


@lru_cache(maxsize=1)
def default_protocols() -> dict[str, dict[str, Any]]:
    text = resources.files("tumsyn_bids.data").joinpath("default_protocols.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _target_metadata(suffix: str, request: SynthesisRequest) -> dict[str, Any]:
    if request.target_specs and suffix in request.target_specs:
        return dict(request.target_specs[suffix])
    if request.target_like and request.target_like["suffix"] == suffix:
        return dict(request.target_like["metadata"])
    defaults = default_protocols()
    if suffix not in defaults:
        raise PlanError(
            f"no protocol for target {suffix}: give one with --target-spec or --target-like"
        )
    return dict(defaults[suffix])


def check_request(request: SynthesisRequest) -> None:
    """Refuse unknown target/source names and implausible target protocols before indexing.

    The ``--target-spec`` and ``--target-like`` protocols pass the same checks as a source
    sidecar (:func:`tumsyn_bids.prompts.protocol.check_timing`); raises :class:`PlanError`.
    """
    known = set(SUPPORTED_TARGETS) | set(request.target_specs or {})
    if request.target_like:
        known.add(request.target_like["suffix"])
    for name in request.targets:
        if name != "missing" and name not in known:
            raise PlanError(
                f"unknown target {name!r}; choose from {', '.join(sorted(known))} or 'missing'"
            )
    for suffix, spec in (request.target_specs or {}).items():
        try:
            protocol_from_sidecar(spec)
        except PromptError as exc:
            raise PlanError(f"--target-spec entry {suffix}: {exc}") from exc
    if request.target_like:
        like = request.target_like
        if like["suffix"] in (request.target_specs or {}):
            raise PlanError(
                f"both --target-spec and --target-like give a {like['suffix']} protocol; "
                "drop one of them"
            )
        try:
            protocol_from_sidecar(like["metadata"])
        except PromptError as exc:
            name = like.get("path") or f"the {like['suffix']} sidecar"
            raise PlanError(f"--target-like {name}: {exc}") from exc


def _targets_for(
    present: set[str], source_suffix: str, request: SynthesisRequest
) -> tuple[list[str], dict[str, str]]:
    """The targets of one session, and why each unused ``--target-spec`` entry is unused."""
    wanted: list[str] = []
    for name in request.targets:
        names = [s for s in SUPPORTED_TARGETS if s not in present] if name == "missing" else [name]
        wanted += [n for n in names if n not in wanted]
    like = request.target_like["suffix"] if request.target_like else None
    if like is not None and like not in wanted:
        wanted.append(like)  # an explicit target protocol means the user wants it
    explicit = {like} | set(request.target_specs or {})
    targets = [t for t in wanted if t != source_suffix or t in explicit]
    unused: dict[str, str] = {}
    for suffix in request.target_specs or {}:
        if suffix in targets:
            continue
        if "missing" in request.targets and suffix in present:
            unused[suffix] = (
                f"they have {suffix} and --target missing synthesizes only what a session "
                f"lacks (add --target {suffix} to synthesize it there too)"
            )
        else:
            unused[suffix] = f"--target ({' '.join(request.targets)}) does not name {suffix}"
    return targets, unused


def _warn_unused_specs(unused: Mapping[tuple[str, str], list[str]]) -> None:
    """One warning per unused ``--target-spec`` entry and reason, naming up to 5 sessions."""
    for (suffix, reason), sessions in unused.items():
        shown = ", ".join(sessions[:5]) + (
            f" and {len(sessions) - 5} more" if len(sessions) > 5 else ""
        )
        LOGGER.warning(
            "--target-spec: the %s protocol is not used for %d session(s) (%s): %s",
            suffix,
            len(sessions),
            shown,
            reason,
        )


def _row(record: ScanRecord, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(PLAN_COLUMNS)
    row.update(
        subject=record.subject,
        session=record.session,
        source=record.relpath,
        source_suffix=record.suffix,
        source_modality=record.modality,
        source_prompt=record.prompt,
    )
    row.update(values)
    return row


def build_plan(
    index: ScanIndex,
    request: SynthesisRequest,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    modalities: Mapping[str, str | None] | None = None,
    *,
    patch_size: Sequence[int] | None = None,
    reference: bool = False,
    preprocess: bool = False,
    output_spaces: Sequence[str] = (),
) -> pd.DataFrame:
    """The plan table for every subject/session of ``index`` (see the module docstring).

    ``patch_size`` (i, j, k voxels) is needed with ``reference=True``, whose output grids
    depend on it. ``preprocess`` (``--preproc full``) fills ``anat_reference`` and computes
    grids on the conformed axes. ``output_spaces`` (``--output-spaces``): a job counts as
    finished only when its output exists in every template space too. Raises
    :class:`PlanError` for an unusable request.
    """
    check_request(request)
    table = modality_table(modalities)
    rows: list[dict[str, Any]] = []
    sessions: dict[tuple[str, str | None], list[ScanRecord]] = {}
    unused_specs: dict[tuple[str, str], list[str]] = {}
    for record in index:
        sessions.setdefault((record.subject, record.session), []).append(record)

    for records in sessions.values():
        present = {r.suffix for r in records if r.ok}
        for bad in (r for r in records if not r.ok):
            rows.append(_row(bad, status="error", message=bad.error))
        sources: list[ScanRecord] = []
        for suffix in request.sources:
            sources = [
                r for r in records if r.ok and r.suffix == suffix and not r.entities.get("ce")
            ]
            if sources:
                break
        if not sources:
            continue
        targets, unused = _targets_for(present, sources[0].suffix, request)
        anat_reference = None
        if preprocess and sources[0].suffix != "T1w":
            anat_reference = t1w_reference([r for r in records if r.ok])
        name = f"sub-{sources[0].subject}" + (
            f" ses-{sources[0].session}" if sources[0].session else ""
        )
        for suffix, reason in unused.items():
            unused_specs.setdefault((suffix, reason), []).append(name)
        for record in sources:
            for target in targets:
                row = _plan_job(
                    record,
                    target,
                    request,
                    table,
                    output_dir,
                    overwrite,
                    patch_size,
                    reference,
                    preprocess,
                    output_spaces,
                )
                row["anat_reference"] = anat_reference
                rows.append(row)
    _warn_unused_specs(unused_specs)
    frame = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    return frame.sort_values(
        ["subject", "session", "source", "target_suffix"], na_position="first", kind="stable"
    ).reset_index(drop=True)


def _plan_job(
    record: ScanRecord,
    target: str,
    request: SynthesisRequest,
    table: Mapping[str, str],
    output_dir: str | Path | None,
    overwrite: bool,
    patch_size: Sequence[int] | None,
    reference: bool,
    preprocess: bool = False,
    output_spaces: Sequence[str] = (),
) -> dict[str, Any]:
    modality = resolve_modality(target, {}, table) or target
    output = derivative_relpath(record.relpath, target, record.suffix)
    metadata = _target_metadata(target, request)
    base = {
        "target_suffix": target,
        "target_modality": modality,
        "target_protocol": metadata,
        "output": output,
    }
    try:
        grid = job_grid(record, request.output_resolution, patch_size, reference, preprocess)
    except GridError as exc:
        return _row(record, **base, status="error", message=f"{record.relpath}: {exc}")
    base["output_grid"] = grid
    voxel = grid.voxel_size if grid is not None else (None, None, None)
    source_prompt = record.prompt
    if preprocess and grid is not None:
        # The network reads the conformed image: its prompts state voxel sizes in that order.
        axes = orientation_of(record.shape, record.affine)
        voxel = to_conformed_axes(grid.voxel_size, axes)
        stored = tuple(record.voxel_size or ())
        source_voxels = to_conformed_axes(stored, axes) if len(stored) == 3 else stored
        if source_prompt and source_voxels != stored:
            source_prompt = build_prompt(
                record.modality, record.protocol, record.demographics, source_voxels
            )
        base["source_prompt"] = source_prompt
    try:
        protocol: Protocol = protocol_from_sidecar(metadata)
        prompt = target_prompt(
            modality, protocol, record.demographics, voxel, source_protocol=record.protocol
        )
    except PromptError as exc:
        return _row(record, **base, status="error", message=f"{output}: {exc}")
    base["target_prompt"] = prompt
    for which, text in (("source", source_prompt), ("target", prompt)):
        n = count_tokens(text)
        if n > request.context_length:
            return _row(
                record,
                **base,
                status="error",
                message=f"{record.relpath}: the {which} prompt needs {n} tokens, more than the "
                f"text encoder's {request.context_length}: {text!r}",
            )
    if output_dir is not None and not overwrite and is_finished(output_dir, output):
        from .templates.spaces import parse_output_spaces

        in_spaces = [
            derivative_relpath(
                record.relpath, target, record.suffix, space=s.name, res=str(s.resolution)
            )
            for s in parse_output_spaces(output_spaces)
            if s.is_template
        ]
        if all(is_finished(output_dir, path) for path in in_spaces):
            return _row(record, **base, status="done", message="output exists (use --overwrite)")
    return _row(record, **base, status="planned", message="")


def job_grid(
    record: ScanRecord,
    resolution: Sequence[float] | None,
    patch_size: Sequence[int] | None,
    reference: bool,
    preprocess: bool = False,
) -> OutputGrid | None:
    """The output grid of a job from ``record`` (None when its header could not be read);
    with ``preprocess``, synthesized on the conformed axes (module docstring)."""
    if record.affine is None or record.shape is None:
        return None
    if preprocess:
        try:
            return conformed_output_grid(
                record.shape[:3],
                record.affine,
                voxel_size=resolution,
                patch_size=patch_size,
                reference=reference,
            )
        except ValueError as exc:  # a non-invertible affine: no axis order to conform to
            raise GridError(str(exc)) from exc
    return output_grid(
        record.shape[:3],
        record.affine,
        voxel_size=resolution,
        patch_size=patch_size,
        reference=reference,
    )


def write_plan_tsv(plan: pd.DataFrame, path: str | Path) -> Path:
    """Record the plan (as planned, or as executed) in the TSV file ``path``: a run's
    ``logs/run-<run_id>/prompts.tsv`` (:mod:`tumsyn_bids.runlog`)."""
    frame = plan.copy()
    frame["target_protocol"] = [
        json.dumps(p, sort_keys=True) if isinstance(p, dict) else p
        for p in frame["target_protocol"]
    ]
    frame["output_grid"] = [
        json.dumps(g.record()) if isinstance(g, OutputGrid) else g for g in frame["output_grid"]
    ]
    return atomic_write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a"))
