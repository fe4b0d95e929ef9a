"""Reading checkpoint files: their object tree (torch's weights-only loader), or only what
they record about themselves, without torch.

Planning a run (``tumsyn --dry-run``) needs a few facts about the weights — whether they are the
bundled demo model, the patch size they were trained on — but must not import torch. Files
written by ``torch.save`` are zip archives whose ``data.pkl`` holds the object tree; the
tensors live in separate archive members. This module unpickles ``data.pkl`` with a restricted
unpickler that turns every tensor into ``None`` and refuses every class other than those the
checkpoint formats use, so reading metadata never runs code from the file, and never reads the
tensor data (the published 4 GB CLIP checkpoint costs one small read).
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import zipfile
from contextlib import suppress
from pathlib import Path
from typing import Any

from .errors import CheckpointError

#: Our own metadata key in checkpoints we write; the authors' loaders never look at it.
EXTRA_KEY = "tumsyn_bids"

#: Attention heads of the published text tower: the weights cannot tell it, so files that do
#: not record it (the official ones) are read with this value.
DEFAULT_TEXT_HEADS = 8

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Tensorless(pickle.Unpickler):
    """Unpickles a torch checkpoint's object tree with every tensor replaced by None."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" or module.startswith("torch."):
            return _none
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> None:
        return None


def _none(*args: Any, **kwargs: Any) -> None:
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` safely: CPU, weights only, memory-mapped when the format allows it.

    Raises :class:`CheckpointError` for a missing, unreadable or non-dict file; a pickle that
    tries to run code is refused by torch's weights-only unpickler.
    """
    import torch  # here: the rest of this module must stay importable without torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files written by torch's legacy (pre-zip) serialiser cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, non-torch files
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(path, exc)}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _load_failure(path: Path, exc: Exception) -> str:
    """One line for why ``torch.load`` failed (its weights-only refusal is paragraphs long)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        culprit = next((ln for ln in lines if "GLOBAL" in ln), lines[-1])
        return f"it holds objects that would run code when loaded; refused ({culprit})"
    with suppress(OSError), open(path, "rb") as handle:
        if handle.read(2) == b"PK" and not zipfile.is_zipfile(path):
            return "an incomplete zip archive (a truncated copy or download?)"
    return lines[0] if lines else type(exc).__name__


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The ``tumsyn_bids`` record of a checkpoint (name, intended use, heads, sampling, ...).

    ``{}`` when the file records nothing (the official weights). Zip-format torch files are
    read without torch (tensors are never loaded); an object tree holding classes outside the
    checkpoint formats' few (an optimizer's state, say), and legacy-format files, go through
    :func:`read_checkpoint`. Raises :class:`CheckpointError` when the file is missing or
    cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if not zipfile.is_zipfile(path):
            raise pickle.UnpicklingError("not a zip-format torch file")
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise CheckpointError(f"{path}: a zip file without a torch object tree")
            obj = _Tensorless(io.BytesIO(archive.read(names[0]))).load()
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        obj = read_checkpoint(path)
    except Exception as exc:  # truncated archives, foreign pickles
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, dict):
        return {}
    return dict(obj.get(EXTRA_KEY) or {})


def training_patch_size(path: str | Path) -> int | None:
    """The low-resolution patch side a tumsyn-bids stage-2 run trained these weights on.

    The fusion block's attention pools over every voxel of a patch, so a model sees its
    training patch extent as part of the input; inferring with much larger patches changes
    its output (the bundled demo model, trained on 20-voxel patches, loses 3 dB on 60-voxel
    ones). ``None`` for checkpoints that do not record it, such as the official weights.
    """
    size = (checkpoint_metadata(path).get("sampling") or {}).get("lr_size")
    return int(size) if size else None
