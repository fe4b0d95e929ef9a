"""What the index of a dataset holds: one :class:`ScanRecord` per usable-looking image.

:func:`tumsyn_bids.bids.layout.index_anatomical` builds them; the plan, training and the
reports read them, or their table form (:func:`records_to_frame`, columns
:data:`FRAME_COLUMNS`). Nothing here reads files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tumsyn_bids.prompts.protocol import Demographics, Protocol

__all__ = ["FRAME_COLUMNS", "ScanIndex", "ScanRecord", "records_to_frame"]


@dataclass(frozen=True)
class ScanRecord:
    """One anatomical image TUMSyn can use as a source, with everything a prompt needs.

    ``entities`` holds the BIDS short names in file-name order, without ``sub``/``ses`` (which
    are ``subject``/``session``). ``metadata`` is the full sidecar dictionary after BIDS
    inheritance; ``protocol`` its prompt-relevant part plus the voxel size. ``prompt`` is the
    source prompt (None only if one of its values cannot be written). ``error`` is None for a
    usable image, otherwise one line per problem, each starting with ``relpath``.
    """

    path: Path
    relpath: str
    subject: str
    session: str | None
    suffix: str
    extension: str
    modality: str
    entities: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    protocol: Protocol = field(default_factory=Protocol)
    demographics: Demographics = field(default_factory=Demographics)
    voxel_size: tuple[float, float, float] | None = None
    shape: tuple[int, ...] | None = None
    #: voxel (i, j, k) -> RAS+ mm affine of the image (4x4 nested tuples); None if unreadable.
    affine: tuple[tuple[float, ...], ...] | None = None
    prompt: str | None = None
    error: str | None = None
    #: Problems that do not stop the image (an ambiguous age, a header whose sform and
    #: qform/pixdim disagree): one line each, starting with ``relpath``; also logged.
    warning: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image can be synthesised from (readable header, valid prompt)."""
        return self.error is None

    @property
    def entity_string(self) -> str:
        """The non-subject/session entities as in a file name, e.g. ``acq-mprage_run-1``."""
        return "_".join(f"{key}-{value}" for key, value in self.entities.items())


FRAME_COLUMNS: tuple[str, ...] = (
    "subject",
    "session",
    "modality",
    "suffix",
    "entities",
    "acq",
    "ce",
    "rec",
    "run",
    "extension",
    "relpath",
    "path",
    "repetition_time_s",
    "echo_time_s",
    "inversion_time_s",
    "flip_angle",
    "field_strength_t",
    "manufacturer",
    "vendor",
    "age",
    "sex",
    "voxel_size",
    "shape",
    "prompt",
    "error",
    "warning",
)
"""Columns of :func:`records_to_frame`, one row per :class:`ScanRecord`:

* ``subject``, ``session`` (labels without prefix; session None when the dataset has none),
  ``modality`` (prompt word), ``suffix`` (BIDS), ``entities`` (e.g. ``"acq-mprage_run-1"``,
  ``""`` when none), ``acq``/``ce``/``rec``/``run`` (that entity's value or None),
  ``extension`` (``.nii.gz`` or ``.nii``), ``relpath`` (POSIX, relative to the dataset root),
  ``path`` (absolute): object columns of ``str``/None.
* ``repetition_time_s``, ``echo_time_s``, ``inversion_time_s`` (seconds, as in BIDS),
  ``field_strength_t`` (tesla), ``age`` (years): float64, NaN when unknown.
* ``flip_angle``: object, float degrees, a word such as ``"T2var"``, or None.
* ``manufacturer`` (as in the sidecar) and ``vendor`` (prompt word), ``sex`` (``M``/``F``):
  object, None when unknown.
* ``voxel_size`` (mm along i, j, k, 3-tuple; :mod:`tumsyn_bids.bids.images`) and ``shape``
  (tuple): object, None when the header is unreadable.
* ``prompt`` (source prompt), ``error`` (None when usable) and ``warning`` (None when there
  is nothing to report): object.
"""

_FLOAT_COLUMNS = frozenset(
    {"repetition_time_s", "echo_time_s", "inversion_time_s", "field_strength_t", "age"}
)


def _frame_row(record: ScanRecord) -> dict[str, Any]:
    protocol = record.protocol
    return {
        "subject": record.subject,
        "session": record.session,
        "modality": record.modality,
        "suffix": record.suffix,
        "entities": record.entity_string,
        "acq": record.entities.get("acq"),
        "ce": record.entities.get("ce"),
        "rec": record.entities.get("rec"),
        "run": record.entities.get("run"),
        "extension": record.extension,
        "relpath": record.relpath,
        "path": str(record.path),
        "repetition_time_s": protocol.repetition_time,
        "echo_time_s": protocol.echo_time,
        "inversion_time_s": protocol.inversion_time,
        "flip_angle": protocol.flip_angle,
        "field_strength_t": protocol.magnetic_field_strength,
        "manufacturer": protocol.manufacturer,
        "vendor": protocol.vendor,
        "age": record.demographics.age,
        "sex": record.demographics.sex,
        "voxel_size": record.voxel_size,
        "shape": record.shape,
        "prompt": record.prompt,
        "error": record.error,
        "warning": record.warning,
    }


def records_to_frame(records: Iterable[ScanRecord]) -> pd.DataFrame:
    """One row per record with the documented :data:`FRAME_COLUMNS` schema (also when empty)."""
    rows = [_frame_row(record) for record in records]
    columns = {}
    for name in FRAME_COLUMNS:
        values = [row[name] for row in rows]
        dtype = "float64" if name in _FLOAT_COLUMNS else object
        columns[name] = pd.Series(
            [float("nan") if v is None else v for v in values] if dtype == "float64" else values,
            dtype=dtype,
        )
    return pd.DataFrame(columns, columns=list(FRAME_COLUMNS))


@dataclass(frozen=True)
class ScanIndex(Sequence[ScanRecord]):
    """The indexed images of one dataset, sorted by subject, session and path."""

    root: Path
    records: tuple[ScanRecord, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ScanRecord]:
        return iter(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        return self.records[index]

    @property
    def usable(self) -> list[ScanRecord]:
        """Records without an error."""
        return [r for r in self.records if r.ok]

    @property
    def errors(self) -> list[str]:
        """The error text of every record that has one."""
        return [r.error for r in self.records if r.error is not None]

    def to_frame(self) -> pd.DataFrame:
        """See :func:`records_to_frame`."""
        return records_to_frame(self.records)
