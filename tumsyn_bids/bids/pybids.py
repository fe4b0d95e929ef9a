"""The one place a PyBIDS layout is built (no validation, ``.bidsignore`` applied, sidecars that
are not JSON left out and recorded), in a module of its own so that both the BIDS index
(:mod:`tumsyn_bids.bids.layout`) and the participants table (:mod:`tumsyn_bids.bids.metadata`)
can use it without importing each other."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tumsyn_bids.bids.ignore import pybids_ignore

if TYPE_CHECKING:
    from bids import BIDSLayout

__all__ = ["INVALID_JSON_ATTR", "invalid_json_files", "pybids_layout"]


def pybids_layout(
    root: str | os.PathLike[str],
    *,
    database_dir: str | os.PathLike[str] | None = None,
    reset_database: bool = False,
) -> BIDSLayout:
    """The one place a PyBIDS layout is built: no validation, the dataset's ``.bidsignore``
    applied (see :func:`load_layout`, which checks ``root`` first). Raises what PyBIDS raises
    (``ValueError``, ``OSError`` for an unreadable JSON file)."""
    from bids import BIDSLayout  # imported here: PyBIDS takes ~0.5 s to import
    from bids.layout import BIDSLayoutIndexer

    def build(ignore: list[Any]) -> BIDSLayout:
        return BIDSLayout(
            Path(root),
            validate=False,
            database_path=None if database_dir is None else Path(database_dir),
            reset_database=reset_database,
            indexer=BIDSLayoutIndexer(validate=False, ignore=ignore),
        )

    try:
        return build(pybids_ignore(root))
    except OSError as exc:
        if "decode JSON" not in str(exc):
            raise
    # One sidecar that is not JSON makes PyBIDS refuse the whole dataset: index without the
    # broken files instead, and let the images that inherit from them carry the error.
    root = Path(root)
    invalid = invalid_json_files(root)
    layout = build([*pybids_ignore(root), *(p.relative_to(root).as_posix() for p in invalid)])
    setattr(layout, INVALID_JSON_ATTR, invalid)
    return layout


#: Attribute of a layout built by :func:`pybids_layout` that lists the JSON files left out
#: because they do not parse (path -> reason).
INVALID_JSON_ATTR = "tumsyn_invalid_json"


def invalid_json_files(root: str | os.PathLike[str]) -> dict[Path, str]:
    """Every ``.json`` file of the dataset (outside ``derivatives``, ``sourcedata``, ``code``
    and hidden folders) that is not valid UTF-8 JSON, with the parser's reason."""
    root = Path(root)
    skip = {"derivatives", "sourcedata", "code"}
    found: dict[Path, str] = {}
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and not (rel == Path(".") and d in skip)
        ]
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                found[path] = " ".join(str(exc).split())
            except OSError as exc:
                found[path] = exc.strerror or type(exc).__name__
    return found
