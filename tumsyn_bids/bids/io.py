"""Writing files safely and reproducibly: atomic writes, one JSON style, derivative pairs.

Every file is written atomically (a dot-prefixed temporary file in the target folder, fsync,
``os.replace``), so an interrupted run never leaves a half-written image that a later run, or
another tool, would take for a finished one. A synthesized image is written before its sidecar,
and :func:`is_finished` requires both, so the sidecar marks completion.

Rerunning the app on the same input must give byte-identical files, so that "did anything
change?" is answered by a checksum: JSON is rendered one way (:func:`json_text`) and gzip
streams carry no time stamp (:func:`nifti_bytes`).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import platform
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import DerivativesError, nifti_extension, posix_relpath, sidecar_relpath

if TYPE_CHECKING:
    import nibabel as nib

__all__ = [
    "FOREIGN_MAX_AGE_S",
    "atomic_save_nifti",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_finished",
    "is_stale_temporary",
    "json_text",
    "nifti_bytes",
    "remove_stale_temporaries",
    "save_derivative",
    "temporary_name",
]

LOGGER = logging.getLogger(__name__)


def json_text(obj: Any) -> str:
    """The one JSON rendering of every file we write: sorted keys, indent 2, final newline.

    ``allow_nan=False`` because NaN is not JSON and BIDS tools reject it; numpy scalars and
    arrays are converted to plain numbers and lists since they reach sidecars easily (voxel
    sizes from nibabel). Anything else unserialisable raises ``TypeError``.
    """

    def _default(value: Any) -> Any:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")

    return (
        json.dumps(
            obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=_default
        )
        + "\n"
    )


def _host() -> str:
    """This host's name as temporary file names carry it (letters and digits, 32 at most)."""
    return re.sub(r"[^A-Za-z0-9]", "", platform.node())[:32]


def temporary_name(target: Path) -> str:
    """A hidden sibling name that keeps the target's extension (``.x.nii.gz`` tools still know
    the format; BIDS tools and PyBIDS skip dot files) and names its writer (host and process id,
    so that :func:`remove_stale_temporaries` can tell a killed writer's
    leftover from a live writer's file: ``.{stem}.tmp-{host}-{pid}-{8 hex}{extension}``)."""
    name = target.name
    extension = nifti_extension(name) or target.suffix
    stem = name[: len(name) - len(extension)] if extension else name
    return f".{stem}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}{extension}"


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform can open a folder, which is then fine."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file is created with mode 0666 minus the umask (``tempfile.mkstemp`` would
    make it 0600, and ``os.replace`` would carry that over, leaving outputs unreadable to the
    rest of a lab). It is removed on any error, including KeyboardInterrupt. Parent folders are
    created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(temporary_name(target))
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text (the encoding BIDS requires)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as :func:`json_text`.

    The text is rendered before any file is touched, so an unserialisable value raises without
    creating anything and an existing file stays as it was.
    """
    return atomic_write_text(path, json_text(obj))


def nifti_bytes(img: nib.Nifti1Image | nib.Nifti2Image, compressed: bool = True) -> bytes:
    """The file content of a single-file NIfTI, gzip-compressed reproducibly when asked.

    ``nib.save`` stamps the current time into the gzip header, so two saves of the same image
    differ. Here the gzip header has ``mtime=0`` and no file name, making the bytes a function
    of the image alone (for a given zlib). Level 6 is gzip's default balance of size and speed.
    """
    data = img.to_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if compressed else data


def atomic_save_nifti(img: nib.Nifti1Image | nib.Nifti2Image, path: str | os.PathLike[str]) -> Path:
    """Atomically write ``img`` to a ``.nii.gz`` (reproducible gzip) or ``.nii`` path.

    Raises :class:`~tumsyn_bids.bids.names.DerivativesError` for any other extension.
    """
    extension = nifti_extension(os.fspath(path))
    if extension is None:
        raise DerivativesError(f"{os.fspath(path)}: a NIfTI path must end in .nii.gz or .nii")
    return atomic_write_bytes(path, nifti_bytes(img, compressed=extension == ".nii.gz"))


def save_derivative(
    output_dir: str | os.PathLike[str],
    relpath: str,
    img: nib.Nifti1Image | nib.Nifti2Image,
    sidecar: Mapping[str, Any],
) -> Path:
    """Write one synthesized image and its sidecar in the order :func:`is_finished` relies on.

    A stale sidecar is removed first and the new one is written last, so at every instant a
    sidecar on disk belongs to the image next to it, and an interruption leaves the output
    unfinished (to be redone) rather than finished with the wrong provenance.
    """
    root = Path(output_dir)
    rel = posix_relpath(relpath, "derivative path")
    image_path = root / rel
    json_path = root / sidecar_relpath(rel.as_posix())
    text = json_text(dict(sidecar))  # fail before touching anything
    with suppress(FileNotFoundError):
        json_path.unlink()
    atomic_save_nifti(img, image_path)
    atomic_write_text(json_path, text)
    return image_path


def is_finished(output_dir: str | os.PathLike[str], relpath: str) -> bool:
    """True when the image ``relpath`` and its sidecar both exist as non-empty files.

    Writes are atomic and the sidecar comes last (:func:`save_derivative`), so this is enough
    to skip outputs of an earlier, possibly interrupted, run unless ``--overwrite`` is given.
    """
    root = Path(output_dir)
    rel = posix_relpath(relpath, "derivative path")
    for candidate in (root / rel, root / sidecar_relpath(rel.as_posix())):
        try:
            if not candidate.is_file() or candidate.stat().st_size == 0:
                return False
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Leftovers of interrupted runs. A process killed in the middle of a write (SIGKILL, a job's
# time limit, a node that lost power) cannot remove its temporary file; the next run does, with
# remove_stale_temporaries. A temporary file is stale when it names this host and a process id
# that no longer runs, or, written on another host (or by an older version that did not name its
# writer), when it is older than FOREIGN_MAX_AGE_S; a file a live process is writing is never
# touched, so runs sharing the output folder can clean up at any time.
# --------------------------------------------------------------------------------------------

#: ``.{stem}.tmp-{host}-{pid}-{8 hex}{extension}``, as :func:`temporary_name` writes.
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[0-9a-f]{8}(\.\w+)*$")
#: The names older versions wrote (``.{stem}.tmp{8 hex}{extension}``, ``.{name}.tmp.png``).
_LEGACY = re.compile(r"^\..+\.tmp([0-9a-f]{8})?(\.\w+)*$")
#: Age (s) after which a temporary file this host cannot check is taken as a leftover: no write
#: of one output takes a day.
FOREIGN_MAX_AGE_S = 24 * 3600


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
    if match and match["host"] == _host():
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
