"""Leftovers of interrupted runs: temporary files whose writer is gone.

Every file tumsyn-bids writes into the output folder is written under a hidden temporary name
and renamed into place (:func:`tumsyn_bids.bids.derivatives.atomic_write_bytes`), so a reader
never sees half a file. A process killed in the middle of a write (SIGKILL, a job's time limit,
a node that lost power) cannot remove its temporary file; the next run does, with
:func:`remove_stale_temporaries`. A temporary file is stale when it names this host and a
process id that no longer runs, or, written on another host (or by an older version that did
not name its writer), when it is older than :data:`FOREIGN_MAX_AGE_S`; a file a live process
is writing is never touched, so runs sharing the output folder can clean up at any time.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FOREIGN_MAX_AGE_S", "is_stale_temporary", "remove_stale_temporaries"]

LOGGER = logging.getLogger(__name__)

#: ``.{stem}.tmp-{host}-{pid}-{8 hex}{extension}``, as ``derivatives._temporary_name`` writes.
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[0-9a-f]{8}(\.\w+)*$")
#: The names older versions wrote (``.{stem}.tmp{8 hex}{extension}``, ``.{name}.tmp.png``).
_LEGACY = re.compile(r"^\..+\.tmp([0-9a-f]{8})?(\.\w+)*$")
#: Age (s) after which a temporary file this host cannot check is taken as a leftover: no write
#: of one output takes a day.
FOREIGN_MAX_AGE_S = 24 * 3600


def _this_host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", platform.node())[:32]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file of a writer that is gone (module docstring)."""
    match = _TEMPORARY.match(path.name)
    if match and match["host"] == _this_host():
        return not _alive(int(match["pid"]))
    if match or _LEGACY.match(path.name):
        try:
            age = (time.time() if now is None else now) - path.stat().st_mtime
        except OSError:
            return False
        return age > FOREIGN_MAX_AGE_S
    return False


def remove_stale_temporaries(
    output_dir: str | os.PathLike[str], subjects: Iterable[str] = ()
) -> list[Path]:
    """Remove stale temporary files from ``output_dir``: its top level, ``logs/`` and the
    folders of ``subjects`` (labels without ``sub-``). Returns what was removed (also logged)."""
    root = Path(output_dir)
    candidates: list[Path] = []
    if root.is_dir():
        candidates += [p for p in root.iterdir() if p.name.startswith(".")]
    for folder in [root / "logs", *(root / f"sub-{s}" for s in sorted(set(subjects)))]:
        if folder.is_dir():
            candidates += [p for p in folder.rglob(".*") if ".locks" not in p.parts]
    removed = []
    now = time.time()
    for path in candidates:
        if path.is_file() and is_stale_temporary(path, now):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
            LOGGER.info("removed a leftover of an interrupted run: %s", path)
    return removed
