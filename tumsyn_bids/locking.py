"""Advisory locks for runs that share one output folder.

A SLURM array starts one ``tumsyn … participant --participant-label X`` per task, all writing into
one output folder, so the files every task writes must not be written by two at once:

* :func:`output_lock` serialises the writes of the files runs share (``dataset_description.json``,
  ``logs/CITATION.md``, ``.bidsignore``, ``sub-XX/log/jobs.tsv``): short, blocking, and reentrant
  within a process (a locked section may call a function that takes it again).
* :func:`claim` marks the participants/sessions a run is writing, for as long as it runs; a
  second run that would write one of them is refused at once (:class:`ClaimedError`) rather than
  racing the first (two runs of the same jobs would also collide in nipype's work dir).

Both are BSD ``flock`` locks on small files under ``<output_dir>/logs/.locks/`` (hidden, in the
folder ``.bidsignore`` already excludes). The kernel releases them when the process ends, however
it ends (SIGKILL included), so a killed run never leaves a stale lock. NFS clients map ``flock``
to NFS locks (Linux >= 2.6.12). A file system that supports no locks at all (e.g. Lustre mounted
without ``-o flock``) gets one warning and the run continues unlocked. Lock files are kept: an
empty file is harmless, and removing one while another process waits on it would break the lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_DIR", "Claim", "ClaimedError", "claim", "output_lock"]

LOGGER = logging.getLogger(__name__)

#: Where lock files live, relative to the output folder.
LOCK_DIR = Path("logs") / ".locks"

#: Errors meaning "this file system does not do locks" (as opposed to "someone holds it").
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

_HELD: dict[str, int] = {}  # lock path -> depth, for reentrancy within this process
_HELD_GUARD = threading.RLock()
_WARNED: set[str] = set()


class ClaimedError(RuntimeError):
    """Another live run holds a claim this run needs; the message names it."""


def _lock_file(output_dir: str | os.PathLike[str], name: str) -> Path:
    folder = Path(output_dir) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _unsupported(path: Path, exc: OSError) -> bool:
    if exc.errno not in _NO_LOCKS:
        return False
    if str(path.parent) not in _WARNED:
        _WARNED.add(str(path.parent))
        LOGGER.warning(
            "the file system of %s does not support file locks (%s): runs sharing this output "
            "folder are not protected from each other",
            path.parent,
            exc.strerror,
        )
    return True


@contextmanager
def output_lock(output_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the output folder's write lock (blocking) for the body of a ``with`` block."""
    path = _lock_file(output_dir, "output.lock")
    key = str(path.resolve())
    with _HELD_GUARD:
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            locked = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if not _unsupported(path, exc):
                    raise
                locked = False
            _HELD[key] = 1
            try:
                yield
            finally:
                _HELD.pop(key, None)
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class Claim:
    """Claims held by this process (see :func:`claim`); :meth:`release` ends them."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        """Give up every claim (closing the lock files releases their locks)."""
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def claim(output_dir: str | os.PathLike[str], keys: Iterable[str]) -> Claim:
    """Claim ``keys`` (e.g. ``sub-01_ses-1``) in ``output_dir`` for this process, without waiting.

    Each lock file then names the holder (host, process id, start time). Raises
    :class:`ClaimedError`, naming the holder, when a live process holds one of them; the claims
    taken so far are released first.
    """
    fds: list[int] = []
    try:
        for key in sorted(set(keys)):
            path = _lock_file(output_dir, f"claim-{_safe(key)}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise ClaimedError(
                    f"another tumsyn run is writing {key} into {output_dir} ({holder}); wait "
                    "for it to finish, or choose another output_dir"
                ) from None
            except OSError as exc:
                os.close(fd)
                if _unsupported(path, exc):
                    continue
                raise
            fds.append(fd)
            stamp = f"pid {os.getpid()} on {socket.gethostname()}, since "
            stamp += time.strftime("%Y-%m-%d %H:%M:%S") + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp.encode(), 0)
    except BaseException:
        Claim(fds).release()
        raise
    return Claim(fds)
