"""Whether an existing output folder may receive this run's outputs.

An output folder written by another program is refused by
:func:`tumsyn_bids.bids.derivatives.existing_version`. One written by tumsyn-bids from *another*
input dataset is refused here: its ``dataset_description.json`` (``DatasetLinks.raw``,
``SourceDatasets``) would then describe only one of the two datasets, and outputs of different
participants with the same labels would be mixed. The rule, from what the description records:

* the recorded input folder is this one (same ``file://`` URI, or the same folder once links
  are resolved): accepted;
* both datasets state a DOI and the DOIs differ: refused;
* the recorded input folder still exists, holds a BIDS dataset, and is another folder: refused;
* the recorded folder no longer exists (the dataset was moved, or the run was in a container
  whose bind mount is gone): accepted with a warning, since nothing shows another dataset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from .bids.derivatives import DerivativesError, _read_json_object, file_uri

__all__ = ["check_output_source"]

LOGGER = logging.getLogger(__name__)


def _uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def check_output_source(
    output_dir: str | os.PathLike[str], bids_dir: str | os.PathLike[str]
) -> None:
    """Refuse (:class:`DerivativesError`) an output folder made from another input dataset.

    A folder without a readable description is accepted (nothing to compare with); see the
    module docstring for the rule.
    """
    out, bids = Path(output_dir), Path(bids_dir)
    description = _read_json_object(out / "dataset_description.json")
    if not description:
        return
    links = description.get("DatasetLinks") or {}
    recorded = links.get("raw") if isinstance(links, dict) else None
    sources = description.get("SourceDatasets") or [{}]
    first = sources[0] if isinstance(sources, list) and sources else {}
    recorded = recorded or (first.get("URL") if isinstance(first, dict) else None)
    if not isinstance(recorded, str) or recorded == file_uri(bids):
        return
    raw = _read_json_object(bids / "dataset_description.json") or {}
    old_doi = first.get("DOI") if isinstance(first, dict) else None
    new_doi = raw.get("DatasetDOI")
    what = f"{out} holds outputs of the input dataset {recorded}, not of {file_uri(bids)}"
    if isinstance(old_doi, str) and isinstance(new_doi, str) and old_doi.strip() != new_doi.strip():
        raise DerivativesError(f"{what} (DOI {old_doi} vs {new_doi})")
    old = _uri_path(recorded)
    if old is None:
        return
    if (old / "dataset_description.json").is_file():
        try:
            same = old.resolve() == bids.resolve() or os.path.samefile(old, bids)
        except OSError:
            same = False
        if not same:
            raise DerivativesError(what)
        return
    LOGGER.warning(
        "%s was written from %s, which no longer exists; taking %s to be the same dataset, moved",
        out,
        old,
        bids,
    )
