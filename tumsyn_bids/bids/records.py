"""What the index of a dataset holds: one :class:`ScanRecord` per usable-looking image.

:func:`tumsyn_bids.bids.layout.index_anatomical` builds them; the plan, training and the
reports read them. Nothing here reads files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumsyn_bids.prompts.protocol import Demographics, Protocol

__all__ = ["ScanIndex", "ScanRecord", "t1w_reference"]


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
    def errors(self) -> list[str]:
        """The error text of every record that has one."""
        return [r.error for r in self.records if r.error is not None]


def t1w_reference(images: Iterable[Any]) -> str | None:
    """The T1w of a session whose brain mask its other contrasts take (docs/preprocessing.md).

    ``images`` are one session's usable images, anything with ``relpath`` and ``suffix``
    (:class:`ScanRecord`, the training images); the reference is the first T1w by path
    without a ``ce`` entity (contrast-enhanced scans show vessels brighter than brain), or
    None when there is none.
    """
    from .names import parse_filename

    t1w = sorted(
        i.relpath
        for i in images
        if i.suffix == "T1w" and "ce" not in parse_filename(str(i.relpath))[0]
    )
    return t1w[0] if t1w else None
