"""Index the anatomical images of a BIDS dataset into ScanRecord rows (:mod:`.records`).

This is the first step of the data flow (``cli -> bids -> plan -> workflows``) and is shared
with training, which pairs images of one session from the same index. One record describes one
image TUMSyn can read: where it is, what BIDS calls it, the modality word it gets in a prompt,
its acquisition protocol (sidecar metadata, with BIDS inheritance resolved by PyBIDS), the
subject's demographics, the voxel size of the affine its data are read with, and its own
source prompt. Problems with a single image (unreadable header, unusable sidecar value) are
recorded in the record's ``error`` text and never raised, so that one broken file cannot hide
the rest of a dataset; problems that do not stop the image go to its ``warning`` text.
Problems with the *request* (no such dataset, unknown participant label, malformed filter)
raise :class:`BIDSIndexError`.

Filters (``--bids-filter-file``), modelled on fMRIPrep's: a JSON object whose keys name a kind
of anatomical image and whose values are PyBIDS entity queries, e.g.::

    {"t1w": {"acquisition": "mprage", "reconstruction": null},
     "flair": {"session": ["pre", "post"]}}

* A key is a BIDS suffix of an indexed image (``t1w``, ``t2w``, ``flair``, ``pdw``, ``angio``...)
  or a modality word of the table (``mra``), case-insensitively. The query restricts every image
  with that suffix (so a ``t1w`` filter also applies to contrast-enhanced T1w). Suffixes without
  a key are not filtered. Keys other BIDS Apps use for non-anatomical data (``bold``,
  ``sbref``, ``fmap``, ``dwi``, ``asl``, ``pet``, ``roi``...) are ignored, so one filter file
  can serve fMRIPrep and tumsyn-bids alike; any other unknown key is an error (usually a typo).
* Entities may use PyBIDS names (``acquisition``, ``ceagent``, ``reconstruction``) or BIDS
  short names (``acq``, ``ce``, ``rec``); ``datatype``, ``suffix`` and ``extension`` are fixed
  by the app and may not be set.
* A value is a string or number (exact match), a list (any of them), ``null`` (the entity must
  be absent) or ``"*"`` (the entity must be present, any value).
* ``subject``/``session`` may appear in a filter; participant and session labels given
  separately must match as well (both restrictions apply).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tumsyn_bids.bids.ignore import BIDSIgnore
from tumsyn_bids.bids.images import ImageInfo, probe_image
from tumsyn_bids.bids.metadata import ParticipantTable
from tumsyn_bids.bids.modalities import indexed_suffixes, modality_table, resolve_modality
from tumsyn_bids.bids.names import NIFTI_EXTENSIONS, parse_filename
from tumsyn_bids.bids.pybids import INVALID_JSON_ATTR, pybids_layout
from tumsyn_bids.bids.records import ScanIndex, ScanRecord
from tumsyn_bids.prompts.protocol import (
    Protocol,
    check_timing,
    protocol_from_sidecar,
)
from tumsyn_bids.prompts.template import build_prompt, readable_prompt
from tumsyn_bids.prompts.values import PromptError

if TYPE_CHECKING:
    from bids import BIDSLayout

__all__ = [
    "BIDSIndexError",
    "index_anatomical",
    "load_layout",
    "pybids_layout",
    "read_bids_filter_file",
]

# BIDS short entity names -> PyBIDS entity names, so users may write filters either way.
_PYBIDS_ENTITY = {
    "sub": "subject",
    "ses": "session",
    "acq": "acquisition",
    "ce": "ceagent",
    "rec": "reconstruction",
    "dir": "direction",
    "mod": "modality",
    "trc": "tracer",
    "stain": "staining",
    "nuc": "nucleus",
    "voi": "volume",
}
_RESERVED_FILTER_KEYS = frozenset({"datatype", "suffix", "extension"})
# Filter keys meaningful to other BIDS Apps (fMRIPrep, QSIPrep, ASLPrep, PETPrep...), ignored here.
_OTHER_APP_FILTER_KEYS = frozenset(
    {"bold", "sbref", "fmap", "dwi", "asl", "m0scan", "pet", "roi", "epi", "events", "physio"}
)


LOGGER = logging.getLogger(__name__)


class BIDSIndexError(ValueError):
    """The dataset or the indexing request is unusable (as opposed to one bad image)."""


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def load_layout(
    bids_dir: str | os.PathLike[str],
    *,
    database_dir: str | os.PathLike[str] | None = None,
    reset_database: bool = False,
) -> BIDSLayout:
    """Build a PyBIDS layout of ``bids_dir`` without validation.

    Validation is the BIDS validator's job (the CLI runs it separately, with its own report);
    here PyBIDS only indexes, skipping what the dataset's ``.bidsignore`` lists, as the
    validator does (:mod:`tumsyn_bids.bids.ignore`). ``database_dir`` is passed to PyBIDS as
    ``database_path`` so that large datasets are indexed once and reused across runs
    (``reset_database`` re-indexes; a reused index keeps the ``.bidsignore`` of its time, but
    :func:`index_anatomical` applies the current one to the images again).
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise BIDSIndexError(f"BIDS dataset not found: {root} is not a directory")
    if not (root / "dataset_description.json").is_file():
        raise BIDSIndexError(
            f"{root} is not a BIDS dataset: it has no dataset_description.json at its top level"
        )
    try:
        return pybids_layout(root, database_dir=database_dir, reset_database=reset_database)
    except (ValueError, OSError) as exc:
        raise BIDSIndexError(f"cannot index {root}: {exc}") from exc


def _sidecar_applies(sidecar: Path, image: Path, root: Path) -> bool:
    """Whether ``sidecar`` is in ``image``'s inheritance chain (BIDS inheritance principle):
    in the image's folder or one above it within the dataset, the same suffix, and entities
    that are a subset of the image's."""
    if image.parent != sidecar.parent and sidecar.parent not in image.parents:
        return False
    try:
        sidecar.parent.relative_to(root)
    except ValueError:
        return False
    json_entities, json_suffix, _ = parse_filename(sidecar.name)
    image_entities, image_suffix, _ = parse_filename(image.name)
    return json_suffix == image_suffix and all(
        image_entities.get(key) == value for key, value in json_entities.items()
    )


def read_bids_filter_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Load and shape-check a ``--bids-filter-file`` JSON (see the module docstring)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise BIDSIndexError(f"cannot read BIDS filter file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BIDSIndexError(f"BIDS filter file {path} is not valid JSON: {exc}") from exc
    _check_filter_shape(data, str(path))
    return data


def _check_filter_shape(data: Any, origin: str) -> None:
    if not isinstance(data, Mapping):
        raise BIDSIndexError(
            f"BIDS filters ({origin}) must be a JSON object such as "
            '{"t1w": {"acquisition": "mprage"}}'
        )
    for key, query in data.items():
        if not isinstance(query, Mapping):
            raise BIDSIndexError(
                f"BIDS filters ({origin}): the value of {key!r} must be an object of entity "
                f"queries, got {query!r}"
            )


# --------------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------------


def _strip(label: str, prefix: str) -> str:
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


def _check_labels(
    given: Iterable[str] | None, available: list[str], prefix: str, what: str, root: Path
) -> set[str] | None:
    if given is None:
        return None
    labels = {_strip(label, prefix) for label in given}
    missing = sorted(labels - set(available))
    if missing:
        shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
        raise BIDSIndexError(
            f"{what} label(s) not found in {root}: {', '.join(missing)} "
            f"(available: {shown or 'none'})"
        )
    return labels


def _entity_values(layout: BIDSLayout, entity: str) -> list[str]:
    """The sorted values of ``entity`` in the index, e.g. every subject label.

    One ``SELECT DISTINCT`` on PyBIDS's tag table: ``layout.get_subjects()`` loads every file's
    entities instead, which took most of a one-participant run's start-up in a dataset of 800
    participants (benchmarks/bench_scale.py). Falls back to it if PyBIDS's tables change.
    """
    try:
        from bids.layout.models import Tag

        rows = layout.session.query(Tag._value).filter(Tag.entity_name == entity).distinct()
        return sorted(str(value) for (value,) in rows)
    except Exception:  # noqa: BLE001 - another PyBIDS version: the slow public way
        return sorted(layout.get(return_type="id", target=entity))


def _filter_value(value: Any) -> Any:
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    if isinstance(value, list):
        return [_filter_value(v) for v in value]
    return value


def _queries_by_suffix(
    filters: Mapping[str, Mapping[str, Any]] | None, table: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Translate a filter object into one extra PyBIDS query per indexed suffix."""
    suffixes = indexed_suffixes(table)
    queries: dict[str, dict[str, Any]] = {suffix: {} for suffix in suffixes}
    if not filters:
        return queries
    _check_filter_shape(filters, "bids_filters")
    by_name: dict[str, set[str]] = {}
    for suffix in suffixes:
        by_name.setdefault(suffix.lower(), set()).add(suffix)
    for selector, word in table.items():
        by_name.setdefault(word.lower(), set()).add(selector.split(":")[0])
    for key, query in filters.items():
        targets = by_name.get(str(key).lower())
        if not targets and str(key).lower() in _OTHER_APP_FILTER_KEYS:
            continue
        if not targets:
            raise BIDSIndexError(
                f"BIDS filter key {key!r} names no indexed image type; use one of: "
                + ", ".join(sorted(by_name))
            )
        translated: dict[str, Any] = {}
        for entity, value in query.items():
            name = _PYBIDS_ENTITY.get(entity, entity)
            if name in _RESERVED_FILTER_KEYS:
                raise BIDSIndexError(
                    f"BIDS filter {key!r} may not set {entity!r}: datatype, suffix and extension "
                    "are fixed by tumsyn-bids"
                )
            translated[name] = _filter_value(value)
        for suffix in targets:
            queries[suffix].update(translated)
    return queries


def _relpath(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def index_anatomical(
    layout: BIDSLayout | str | os.PathLike[str],
    *,
    participant_labels: Iterable[str] | None = None,
    session_labels: Iterable[str] | None = None,
    bids_filters: Mapping[str, Mapping[str, Any]] | None = None,
    modalities: Mapping[str, str | None] | None = None,
    read_headers: bool = True,
    database_dir: str | os.PathLike[str] | None = None,
) -> ScanIndex:
    """Index every anatomical NIfTI (``.nii``/``.nii.gz``) that has a TUMSyn modality word.

    Files the dataset's ``.bidsignore`` lists are skipped, as the BIDS validator skips them: an
    ignored localizer is neither an acquired scan of its session nor a synthesis source.

    ``layout`` is a PyBIDS layout or a dataset path (then :func:`load_layout` builds one, with
    ``database_dir``). ``participant_labels``/``session_labels`` accept labels with or without
    their ``sub-``/``ses-`` prefix; a label absent from the dataset raises
    :class:`BIDSIndexError`. ``bids_filters`` follows the module docstring. ``modalities``
    overrides the default table (:func:`tumsyn_bids.bids.modalities.modality_table`).
    ``read_headers=False`` skips the NIfTI headers (voxel size and shape stay None), e.g. for a
    quick listing.
    """
    if not hasattr(layout, "get"):
        layout = load_layout(layout, database_dir=database_dir)
    root = Path(layout.root)
    table = modality_table(modalities)
    subjects = _check_labels(
        participant_labels, _entity_values(layout, "subject"), "sub-", "participant", root
    )
    sessions = _check_labels(
        session_labels, _entity_values(layout, "session"), "ses-", "session", root
    )
    queries = _queries_by_suffix(bids_filters, table)
    participants = ParticipantTable(root, layout=layout)
    bidsignore = BIDSIgnore.read(root)

    # One PyBIDS query per distinct filter, not per suffix: each query scans the whole index.
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for suffix, extra in queries.items():
        key = json.dumps(extra, sort_keys=True, default=repr)
        groups.setdefault(key, (extra, []))[1].append(suffix)
    files: dict[str, Any] = {}
    for extra, suffixes in groups.values():
        query = {"datatype": "anat", "suffix": suffixes, "extension": list(NIFTI_EXTENSIONS)}
        # Ask PyBIDS for the selected participants/sessions only: one participant of a large
        # dataset then costs the same as in a small one. A filter's own subject/session query
        # replaces these; the check below still applies both.
        if subjects is not None:
            query["subject"] = sorted(subjects)
        if sessions is not None:
            query["session"] = sorted(sessions)
        query.update(extra)
        try:
            found = layout.get(return_type="object", **query)
        except ValueError as exc:
            raise BIDSIndexError(f"invalid BIDS filter for {', '.join(suffixes)}: {exc}") from exc
        for bids_file in found:
            # Also for a layout built elsewhere or reused from a database: ignored is ignored.
            if not bidsignore.ignores(_relpath(Path(bids_file.path), root)):
                files.setdefault(bids_file.path, bids_file)

    records = []
    for path_text, bids_file in files.items():
        entities = bids_file.entities
        if subjects is not None and entities.get("subject") not in subjects:
            continue  # before _make_record: no header or sidecar read for unselected images
        if sessions is not None and entities.get("session") not in sessions:
            continue
        record = _make_record(
            bids_file,
            Path(path_text),
            root,
            table,
            participants,
            read_headers,
            getattr(layout, INVALID_JSON_ATTR, None),
        )
        if record is None:
            continue
        if subjects is not None and record.subject not in subjects:
            continue
        if sessions is not None and record.session not in sessions:
            continue
        records.append(record)
    records.sort(key=lambda r: (r.subject, r.session or "", r.relpath))
    return ScanIndex(root=root, records=tuple(records))


def _make_record(
    bids_file: Any,
    path: Path,
    root: Path,
    table: Mapping[str, str],
    participants: ParticipantTable,
    read_headers: bool,
    invalid_sidecars: Mapping[Path, str] | None = None,
) -> ScanRecord | None:
    """Build one record, turning every per-image problem into error text.

    ``invalid_sidecars`` (JSON file -> parse error,
    :func:`tumsyn_bids.bids.pybids.invalid_json_files`) were left out of the index; an image
    that would inherit from one of them is refused with that reason.
    """
    invalid_sidecars = invalid_sidecars or {}
    relpath = _relpath(path, root)
    entities, suffix, extension = parse_filename(path.name)
    subject = entities.pop("sub", None) or bids_file.entities.get("subject")
    session = entities.pop("ses", None) or bids_file.entities.get("session")
    modality = resolve_modality(suffix, entities, table)
    if modality is None or subject is None:
        return None

    problems: list[str] = []
    try:
        metadata = dict(bids_file.get_metadata())
    except Exception as exc:  # noqa: BLE001 - a broken sidecar is this image's problem only
        metadata = {}
        problems.append(f"{relpath}: cannot read sidecar metadata ({exc})")

    info = probe_image(path, relpath) if read_headers else ImageInfo()
    if info.error is not None:
        problems.append(info.error)
    warnings = [] if info.warning is None else [info.warning]

    timing_ok = True
    try:
        protocol = protocol_from_sidecar(metadata, info.voxel_size, check=False)
    except PromptError as exc:
        protocol = Protocol(voxel_size=info.voxel_size)
        problems.append(f"{relpath}: unusable sidecar value: {exc}")
    else:
        try:
            check_timing(metadata)
        except PromptError as exc:  # e.g. ms written where BIDS wants s: refuse the image
            timing_ok = False
            problems.append(f"{relpath}: unusable sidecar value: {exc}")

    for sidecar, reason in invalid_sidecars.items():
        if _sidecar_applies(sidecar, path, root):
            problems.append(
                f"{relpath}: its sidecar {_relpath(sidecar, root)} is not valid JSON ({reason}); "
                "fix or remove it"
            )

    demographics, table_warnings = participants.lookup_with_warnings(subject, session)
    warnings += [f"{relpath}: {warning}" for warning in table_warnings]
    prompt = None
    if timing_ok:  # an implausible time would only repeat the sidecar's error here
        try:
            prompt = build_prompt(modality, protocol, demographics)
        except PromptError as exc:
            problems.append(f"{relpath}: cannot build the prompt: {exc}")
    if problems:  # the record of a refused image shows every value that can be written
        prompt = readable_prompt(modality, metadata, info.voxel_size, demographics)

    return ScanRecord(
        path=path,
        relpath=relpath,
        subject=subject,
        session=session,
        suffix=suffix,
        extension=extension,
        modality=modality,
        entities=entities,
        metadata=metadata,
        protocol=protocol,
        demographics=demographics,
        voxel_size=info.voxel_size,
        shape=info.shape,
        affine=info.affine,
        prompt=prompt,
        error="\n".join(problems) or None,
        warning=_log_warnings(warnings),
    )


def _log_warnings(warnings: list[str]) -> str | None:
    """Log each warning line and join them for :attr:`ScanRecord.warning`."""
    for warning in warnings:
        LOGGER.warning("%s", warning)
    return "\n".join(warnings) or None
