"""One PyBIDS index and one validation, shared by every task of a cluster array.

``--bids-database-dir DB`` names a folder that holds, once built:

* ``layout_index.sqlite``: PyBIDS's index of the dataset (built by
  :func:`tumsyn_bids.bids.pybids.pybids_layout`: no PyBIDS validation, ``.bidsignore`` applied);
* ``tumsyn-index.json``: the manifest: the dataset it indexes, a fingerprint of the dataset at
  indexing time, and the BIDS validator's verdict on that state (None when validation was
  skipped).

The **fingerprint** is one SHA-256 per participant folder (``sub-<label>/``, recursively) and one
of the top-level files (``dataset_description.json``, ``participants.tsv``, ``.bidsignore``,
inherited sidecars...), each over the sorted (path, size, mtime in ns, symlink target) of the
files, hidden ones excepted. Only ``stat`` is called, no file is read, so checking one
participant costs the same whatever the size of the dataset.

A task (:func:`open_shared_index`) checks the parts it reads (the top level and its selected
participants) against the manifest. When they match it reuses the index (no walk of the
dataset) and the recorded verdict (no second validator run); when the manifest is missing,
names another dataset's path, or the parts differ, the index is rebuilt (and the dataset
validated) under an exclusive lock while other tasks wait, then reused by them.

Concurrency: the manifest and the index are replaced with ``os.replace`` (readers see the old
or the new file, never a part) under an exclusive ``flock`` on ``DB/.lock``; readers hold a
shared lock while they read the manifest and copy the index. Each task opens a private copy of
``layout_index.sqlite`` in its temporary folder (``$TMPDIR``, node-local on most clusters), so
no task ever opens the shared file through SQLite: no SQLite locking over a network file system,
and the shared index is written only by the builder. Where the file system refuses ``flock``
(some Lustre mounts), a warning says so and the index must be built beforehand with
``--index-only``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bids import BIDSLayout

__all__ = [
    "MANIFEST",
    "SQLITE",
    "DatabaseError",
    "Fingerprint",
    "SharedIndex",
    "Verdict",
    "build_shared_index",
    "fingerprint",
    "open_shared_index",
]

LOGGER = logging.getLogger(__name__)

MANIFEST = "tumsyn-index.json"
SQLITE = "layout_index.sqlite"
LOCK = ".lock"
#: Version of the manifest's layout; a manifest of another version is rebuilt.
FORMAT = 1


class DatabaseError(RuntimeError):
    """The database folder cannot be used (not writable, another dataset's index)."""


# --------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """SHA-256 hex digests: ``top`` of the top-level files, ``subjects`` per participant label."""

    top: str
    subjects: Mapping[str, str] = field(default_factory=dict)

    def differences(self, other: Fingerprint, subjects: Iterable[str] | None = None) -> list[str]:
        """What differs from ``other``: ``"top-level files"`` and ``sub-<label>`` names,
        limited to ``subjects`` when given (a folder present on one side only differs; one
        absent on both does not)."""
        changed = [] if self.top == other.top else ["top-level files"]
        labels = set(self.subjects) | set(other.subjects) if subjects is None else set(subjects)
        changed += [
            f"sub-{label}"
            for label in sorted(labels)
            if self.subjects.get(label) != other.subjects.get(label)
        ]
        return changed

    def record(self) -> dict[str, Any]:
        return {"top": self.top, "subjects": dict(sorted(self.subjects.items()))}


def _entry(path: str, relpath: str) -> str:
    info = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
    return f"{relpath}\t{info.st_size}\t{info.st_mtime_ns}\t{target}\n"


def _digest(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _subject_digest(root: Path, label: str) -> str | None:
    folder = root / f"sub-{label}"
    if not folder.is_dir():
        return None
    lines = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        lines += [
            _entry(os.path.join(dirpath, name), f"{rel}/{name}")
            for name in filenames
            if not name.startswith(".")
        ]
    return _digest(lines)


def _top_digest(root: Path) -> str:
    lines = []
    with os.scandir(root) as entries:
        for entry in entries:
            hidden = entry.name.startswith(".") and entry.name != ".bidsignore"
            if not hidden and not entry.is_dir(follow_symlinks=True):
                lines.append(_entry(entry.path, entry.name))
    return _digest(lines)


def subject_labels(root: str | os.PathLike[str]) -> list[str]:
    """Labels of the ``sub-<label>`` folders at the top of ``root``, sorted."""
    with os.scandir(root) as entries:
        return sorted(
            e.name[4:] for e in entries if e.name.startswith("sub-") and e.is_dir() and e.name[4:]
        )


def fingerprint(root: str | os.PathLike[str], subjects: Iterable[str] | None = None) -> Fingerprint:
    """The fingerprint of ``root`` (module docstring): of every participant folder, or only of
    ``subjects`` (labels without ``sub-``; an absent folder is left out)."""
    root = Path(root)
    labels = subject_labels(root) if subjects is None else sorted(set(subjects))
    digests = {label: _subject_digest(root, label) for label in labels}
    return Fingerprint(
        top=_top_digest(root), subjects={k: v for k, v in digests.items() if v is not None}
    )


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The BIDS validator's verdict recorded in the manifest (errors: one line per issue)."""

    ok: bool
    errors: tuple[str, ...] = ()
    validator: str | None = None
    validated_at: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": list(self.errors),
            "validator": self.validator,
            "validated_at": self.validated_at,
        }


@dataclass(frozen=True)
class SharedIndex:
    """A usable shared index: its folder, manifest values, and whether this process built it."""

    database_dir: Path
    bids_dir: Path
    fingerprint: Fingerprint
    verdict: Verdict | None
    built_at: str
    built: bool = False

    @property
    def sqlite(self) -> Path:
        return self.database_dir / SQLITE


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _read_manifest(database_dir: Path) -> SharedIndex | None:
    try:
        data = json.loads((database_dir / MANIFEST).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or not (database_dir / SQLITE).is_file():
            return None
        verdict = data.get("validation")
        return SharedIndex(
            database_dir=database_dir,
            bids_dir=Path(data["bids_dir"]),
            fingerprint=Fingerprint(
                top=data["fingerprint"]["top"], subjects=data["fingerprint"]["subjects"]
            ),
            verdict=None
            if verdict is None
            else Verdict(
                ok=bool(verdict["ok"]),
                errors=tuple(verdict.get("errors") or ()),
                validator=verdict.get("validator"),
                validated_at=verdict.get("validated_at", ""),
            ),
            built_at=data.get("built_at", ""),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_manifest(index: SharedIndex) -> None:
    from importlib.metadata import version

    from .. import __version__
    from .io import atomic_write_json

    atomic_write_json(
        index.database_dir / MANIFEST,
        {
            "format": FORMAT,
            "bids_dir": str(index.bids_dir),
            "built_at": index.built_at,
            "built_by": f"tumsyn-bids {__version__} (pybids {version('pybids')})",
            "fingerprint": index.fingerprint.record(),
            "validation": None if index.verdict is None else index.verdict.record(),
        },
    )


# --------------------------------------------------------------------------------------------
# Locking
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(database_dir: Path, exclusive: bool) -> Iterator[bool]:
    """Hold ``flock`` on ``DB/.lock``; yields False (and warns once) where flock is refused."""
    try:
        database_dir.mkdir(parents=True, exist_ok=True)
        handle = open(database_dir / LOCK, "a+b")  # noqa: SIM115 - closed below
    except OSError as exc:
        if exclusive or not (database_dir / LOCK).is_file():
            raise DatabaseError(
                f"cannot use --bids-database-dir {database_dir}: {exc.strerror or exc}"
            ) from exc
        handle = open(database_dir / LOCK, "rb")  # noqa: SIM115 - a read-only database folder
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            LOGGER.warning(
                "%s: the file system refuses locks (%s); build the index before the tasks "
                "start (tumsyn ... participant --index-only --bids-database-dir %s)",
                database_dir,
                exc.strerror,
                database_dir,
            )
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Building and opening
# --------------------------------------------------------------------------------------------

#: Runs the BIDS validator on the dataset and returns its verdict (or raises).
Validate = Callable[[], Verdict]


def _stale(
    index: SharedIndex | None, bids_dir: Path, subjects: Iterable[str] | None
) -> tuple[list[str], Fingerprint | None]:
    """Why ``index`` cannot serve ``subjects`` of ``bids_dir`` (empty: it can), and the
    fingerprint of the checked parts."""
    if index is None:
        return ["no index yet"], None
    subjects = None if subjects is None else list(subjects)
    if index.bids_dir != bids_dir:
        raise DatabaseError(
            f"--bids-database-dir {index.database_dir} indexes {index.bids_dir}, not {bids_dir}; "
            "give each dataset (and each path it is mounted at) its own database folder"
        )
    now = fingerprint(bids_dir, subjects)
    changed = now.differences(index.fingerprint, subjects)
    return changed, now


def build_shared_index(
    bids_dir: str | os.PathLike[str],
    database_dir: str | os.PathLike[str],
    *,
    validate: Validate | None = None,
    subjects: Iterable[str] | None = None,
) -> SharedIndex:
    """Make ``database_dir`` hold an up-to-date index of ``bids_dir`` and return it.

    Under the exclusive lock: if the manifest already covers the current state of ``subjects``
    (every participant when None) nothing is rebuilt (a verdict is added when ``validate`` is
    given and none is recorded); otherwise ``validate`` runs (when given), the whole dataset is
    indexed into a temporary file and moved into place, and the manifest is written.
    Raises :class:`DatabaseError`, and what ``validate`` or PyBIDS raise.
    """
    from .pybids import pybids_layout

    bids_dir = Path(bids_dir).resolve()
    database_dir = Path(database_dir).resolve()
    with _locked(database_dir, exclusive=True):
        current = _read_manifest(database_dir)
        changed, _ = _stale(current, bids_dir, subjects)
        if not changed and current is not None:
            if validate is not None and current.verdict is None:
                current = dataclasses.replace(current, verdict=validate())
                _write_manifest(current)
            return current
        LOGGER.info("indexing %s into %s (%s)", bids_dir, database_dir, ", ".join(changed[:5]))
        started = time.monotonic()
        state = fingerprint(bids_dir)  # before indexing: a change during it shows as stale
        verdict = validate() if validate is not None else None
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=database_dir))
        try:
            layout = pybids_layout(bids_dir, database_dir=scratch, reset_database=True)
            layout.connection_manager.engine.dispose()
            del layout
            os.replace(scratch / SQLITE, database_dir / SQLITE)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        index = SharedIndex(
            database_dir=database_dir,
            bids_dir=bids_dir,
            fingerprint=state,
            verdict=verdict,
            built_at=_now(),
            built=True,
        )
        _write_manifest(index)
        LOGGER.info(
            "indexed %d participant(s) of %s in %.1f s",
            len(state.subjects),
            bids_dir,
            time.monotonic() - started,
        )
        return index


_PRIVATE_COPIES: list[Path] = []


def _remove_private_copies() -> None:
    for path in _PRIVATE_COPIES:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_private_copies)


def open_shared_index(
    bids_dir: str | os.PathLike[str],
    database_dir: str | os.PathLike[str],
    *,
    subjects: Iterable[str] | None = None,
    validate: Validate | None = None,
) -> tuple[BIDSLayout, SharedIndex]:
    """A PyBIDS layout of ``bids_dir`` from the shared index in ``database_dir``.

    ``subjects`` (labels without ``sub-``; None: all) are the participants the caller will
    read: only they and the top-level files are checked against the manifest. A usable index is
    copied to a private temporary file and opened from there; otherwise it is (re)built first
    by :func:`build_shared_index` (with ``validate``), which other callers wait for.
    Returns the layout and the manifest's record (``built`` tells whether this call built it).
    """
    from .pybids import pybids_layout

    bids_dir = Path(bids_dir).resolve()
    database_dir = Path(database_dir).resolve()
    labels = None if subjects is None else sorted({str(s).removeprefix("sub-") for s in subjects})
    index: SharedIndex | None = None
    private = Path(tempfile.mkdtemp(prefix="tumsyn-index-"))
    _PRIVATE_COPIES.append(private)
    for _ in range(3):  # a rebuild by another task between our check and our copy: look again
        with _locked(database_dir, exclusive=False):
            current = _read_manifest(database_dir)
            changed, _ = _stale(current, bids_dir, labels)
            if not changed and current is not None:
                shutil.copyfile(current.sqlite, private / SQLITE)
                index = current
                break
        if current is not None:
            LOGGER.info(
                "the index in %s is out of date for this run (%s changed): rebuilding it",
                database_dir,
                ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""),
            )
        built = build_shared_index(bids_dir, database_dir, validate=validate, subjects=labels)
        if built.built:
            with _locked(database_dir, exclusive=False):
                shutil.copyfile(built.sqlite, private / SQLITE)
            index = built
            break
    if index is None:
        raise DatabaseError(f"the index in {database_dir} keeps changing; try again")
    if not index.built:
        LOGGER.info(
            "reusing the BIDS index in %s (built %s; %s unchanged)",
            database_dir,
            index.built_at,
            "the selected participants" if labels is not None else "the dataset",
        )
    return pybids_layout(bids_dir, database_dir=private), index
