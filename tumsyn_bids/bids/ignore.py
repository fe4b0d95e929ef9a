"""The dataset's ``.bidsignore``, applied when indexing as the BIDS validator applies it.

A ``.bidsignore`` at the dataset root lists, in ``.gitignore`` syntax, files and folders that are
not part of the BIDS dataset (localizers, scanner exports, work in progress). The validator skips
them (it reads the file with the npm ``ignore`` package, which implements ``.gitignore``
semantics); PyBIDS does not read the file but accepts ignore patterns, so
:func:`pybids_ignore` hands it the same rules. An ignored image is then neither an acquired
scan of its session nor a synthesis source, and an ignored JSON file is no sidecar to inherit
from. The ``.gitignore`` matching is done by ``pathspec`` (its ``GitIgnoreSpec``), not by
hand-written globbing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pathspec

__all__ = ["BIDSIgnore", "pybids_ignore"]

BIDSIGNORE = ".bidsignore"


class BIDSIgnore:
    """The ``.bidsignore`` rules of one dataset (none when the file is absent).

    Paths are POSIX paths relative to the dataset root (``sub-01/anat/sub-01_T1w.nii.gz``); a
    folder is given with a trailing ``/`` or ``is_dir=True``. Also usable as a PyBIDS ignore
    pattern: PyBIDS calls :meth:`search` with ``"/" + relative path`` for every file and folder
    it walks.
    """

    def __init__(self, root: str | os.PathLike[str], lines: list[str] | None = None) -> None:
        self.root = Path(root)
        self.lines = [line for line in (lines or []) if line.strip()]
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.lines)

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> BIDSIgnore:
        """Read ``root/.bidsignore`` (UTF-8, a byte-order mark and CR line ends tolerated)."""
        path = Path(root) / BIDSIGNORE
        try:
            text = path.read_text(encoding="utf-8-sig", errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return cls(root)
        return cls(root, text.splitlines())

    def __bool__(self) -> bool:
        return bool(self.lines)

    def ignores(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether the validator would skip ``relpath`` (relative to the dataset root)."""
        if not self.lines:
            return False
        path = relpath.lstrip("/")
        if is_dir and not path.endswith("/"):
            path += "/"
        return self._spec.match_file(path)

    def search(self, path: Any) -> bool:
        """PyBIDS' pattern protocol: ``path`` is ``"/" + relative path`` of a file or folder."""
        relpath = str(path).lstrip("/")
        return self.ignores(relpath, is_dir=(self.root / relpath).is_dir())

    def __repr__(self) -> str:
        return f"BIDSIgnore({str(self.root)!r}, {self.lines!r})"


def pybids_ignore(root: str | os.PathLike[str]) -> list[Any]:
    """Ignore patterns for ``BIDSLayoutIndexer(ignore=...)``: PyBIDS' defaults plus the
    dataset's ``.bidsignore`` (an explicit list replaces PyBIDS' defaults, so they are kept)."""
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    patterns: list[Any] = list(DEFAULT_LOCATIONS_TO_IGNORE)
    rules = BIDSIgnore.read(root)
    if rules:
        patterns.append(rules)
    return patterns
