"""The output folder as a BIDS derivative dataset: its description, owner and ``.bidsignore``.

Outputs go directly into the output folder (fMRIPrep's default layout), next to a
``dataset_description.json`` that declares the folder a *derivative* dataset whose ``raw`` link is
the input dataset. The description is a pure function of the run (version, input dataset,
container), with no time stamp, so rerunning gives the same bytes. A folder whose description
was written by another program is refused rather than overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .io import atomic_write_json, atomic_write_text
from .names import CITATION_RELPATH, RAW_LINK, DerivativesError, file_uri

LOGGER = logging.getLogger(__name__)

__all__ = [
    "check_output_source",
    "read_json_object",
    "BIDS_VERSION",
    "CODE_URL",
    "CONTAINER_TAG_ENV",
    "CONTAINER_TYPE_ENV",
    "DATASET_NAME",
    "PIPELINE_NAME",
    "dataset_description",
    "detect_container",
    "existing_version",
    "update_bidsignore",
    "write_dataset_description",
]

#: The name written into ``GeneratedBy``; also how an existing output folder is recognised as ours.
PIPELINE_NAME = "tumsyn-bids"
DATASET_NAME = "tumsyn-bids: TUMSyn synthesized images"
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/tumsyn-bids/tumsyn-bids"

#: Environment variables our container images set (Dockerfile / Apptainer recipe), read first
#: because only the image itself knows its exact tag.
CONTAINER_TYPE_ENV = "TUMSYN_CONTAINER_TYPE"
CONTAINER_TAG_ENV = "TUMSYN_CONTAINER_TAG"


def detect_container(
    environ: Mapping[str, str] | None = None, dockerenv: str | os.PathLike[str] = "/.dockerenv"
) -> dict[str, str] | None:
    """``GeneratedBy.Container`` for the container we run in, or None outside one.

    Our images set ``TUMSYN_CONTAINER_TYPE``/``TUMSYN_CONTAINER_TAG``; they win because only the
    image knows its own tag. Otherwise Singularity/Apptainer announce themselves with
    ``SINGULARITY_NAME``/``APPTAINER_NAME`` (the image file name, used as the tag; both are
    reported as type ``singularity``, the word BIDS examples use), and Docker with a
    ``/.dockerenv`` file (tag unknown, so omitted).
    """
    env = os.environ if environ is None else environ
    kind = (env.get(CONTAINER_TYPE_ENV) or "").strip().lower()
    tag = (env.get(CONTAINER_TAG_ENV) or "").strip()
    image_name = (env.get("SINGULARITY_NAME") or env.get("APPTAINER_NAME") or "").strip()
    if not kind:
        if image_name:
            kind = "singularity"
        elif os.path.exists(dockerenv):
            kind = "docker"
    if kind == "apptainer":
        kind = "singularity"
    if not kind:
        return None
    if not tag and kind == "singularity" and image_name:
        tag = image_name
    return {"Type": kind, "Tag": tag} if tag else {"Type": kind}


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is missing, unreadable or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def dataset_description(
    bids_dir: str | os.PathLike[str],
    version: str,
    container: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``dataset_description.json`` content of a tumsyn-bids output folder.

    A pure function of its arguments and of the raw dataset's description (whose ``DatasetDOI``
    and, when present, ``Version`` are copied into ``SourceDatasets``), so that rerunning gives
    the same bytes. ``container`` is usually :func:`detect_container`'s answer; it is a parameter
    rather than detected here so that tests and callers decide. Raises
    :class:`~tumsyn_bids.bids.names.DerivativesError` for a container without ``Type``.
    """
    raw_uri = file_uri(bids_dir)
    source: dict[str, Any] = {"URL": raw_uri}
    raw = read_json_object(Path(bids_dir) / "dataset_description.json") or {}
    doi = raw.get("DatasetDOI")
    if isinstance(doi, str) and doi.strip():
        source["DOI"] = doi.strip()
    raw_version = raw.get("Version")
    if isinstance(raw_version, str | int | float) and str(raw_version).strip():
        source["Version"] = str(raw_version).strip()
    generated_by: dict[str, Any] = {"Name": PIPELINE_NAME, "Version": version, "CodeURL": CODE_URL}
    if container:
        if not container.get("Type"):
            raise DerivativesError(f"container description needs a Type: {dict(container)!r}")
        generated_by["Container"] = {k: str(v) for k, v in container.items() if v}
    return {
        "Name": DATASET_NAME,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "DatasetLinks": {RAW_LINK: raw_uri},
        "HowToAcknowledge": (
            f"Please cite the references listed in {CITATION_RELPATH}, which also holds a "
            "methods paragraph describing how these images were synthesized."
        ),
    }


def existing_version(output_dir: str | os.PathLike[str]) -> str | None:
    """The tumsyn-bids version that wrote ``output_dir``'s description, None if there is none.

    Lets the command line warn (as fMRIPrep does) before mixing outputs of different versions in
    one folder. Raises :class:`~tumsyn_bids.bids.names.DerivativesError` if the folder holds a
    description that is not ours: writing there could overwrite another dataset's files.
    """
    path = Path(output_dir) / "dataset_description.json"
    if not path.exists():
        return None
    data = read_json_object(path)
    generated = (data or {}).get("GeneratedBy")
    first = generated[0] if isinstance(generated, list) and generated else None
    if not isinstance(first, dict) or first.get("Name") != PIPELINE_NAME:
        raise DerivativesError(
            f"{path} exists and was not written by {PIPELINE_NAME}; choose an empty or a "
            f"{PIPELINE_NAME} output folder"
        )
    found = first.get("Version")
    return str(found) if found is not None else None


def write_dataset_description(
    output_dir: str | os.PathLike[str],
    bids_dir: str | os.PathLike[str],
    version: str,
    container: Mapping[str, str] | None = None,
) -> Path:
    """Write (or rewrite) ``output_dir/dataset_description.json``; return its path.

    An existing description written by tumsyn-bids is rewritten from scratch with the current
    values, so the file is always exactly what :func:`dataset_description` gives (never a merge
    whose result depends on history). One written by anything else raises
    :class:`~tumsyn_bids.bids.names.DerivativesError` (see :func:`existing_version`) instead of
    being overwritten.
    """
    existing_version(output_dir)
    path = Path(output_dir) / "dataset_description.json"
    atomic_write_json(path, dataset_description(bids_dir, version, container))
    return path


def update_bidsignore(output_dir: str | os.PathLike[str], patterns: Iterable[str]) -> Path:
    """Add ``patterns`` to ``output_dir/.bidsignore`` unless present; other lines are kept.

    Files outside the BIDS layout (``logs/``, reports) would otherwise be reported by the
    validator. (Reading an *input* dataset's ``.bidsignore`` is :mod:`tumsyn_bids.bids.ignore`.)
    """
    from tumsyn_bids.locking import output_lock

    path = Path(output_dir) / ".bidsignore"
    with output_lock(output_dir):  # read-modify-write: one run at a time
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        missing = [p for p in patterns if p not in lines]
        if missing or not path.exists():
            atomic_write_text(path, "".join(f"{line}\n" for line in [*lines, *missing]))
    return path


# --------------------------------------------------------------------------------------------
# Whether an existing tumsyn-bids output folder may receive this run's outputs.
#
# An output folder written by another program is refused by existing_version. One written by
# tumsyn-bids from *another* input dataset is refused by check_output_source: its
# dataset_description.json (DatasetLinks.raw, SourceDatasets) would then describe only one of
# the two datasets, and outputs of different participants with the same labels would be mixed.
# --------------------------------------------------------------------------------------------


def _uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def check_output_source(
    output_dir: str | os.PathLike[str], bids_dir: str | os.PathLike[str]
) -> None:
    """Refuse (:class:`DerivativesError`) an output folder made from another input dataset.

    A folder without a readable description is accepted (nothing to compare with). The rule,
    from what the description records:

    * the recorded input folder is this one (same ``file://`` URI, or the same folder once
      links are resolved): accepted;
    * both datasets state a DOI and the DOIs differ: refused;
    * the recorded input folder still exists, holds a BIDS dataset, and is another folder:
      refused;
    * the recorded folder no longer exists (the dataset was moved, or the run was in a
      container whose bind mount is gone): accepted with a warning, since nothing shows
      another dataset.
    """
    out, bids = Path(output_dir), Path(bids_dir)
    description = read_json_object(out / "dataset_description.json")
    if not description:
        return
    links = description.get("DatasetLinks") or {}
    recorded = links.get("raw") if isinstance(links, dict) else None
    sources = description.get("SourceDatasets") or [{}]
    first = sources[0] if isinstance(sources, list) and sources else {}
    recorded = recorded or (first.get("URL") if isinstance(first, dict) else None)
    if not isinstance(recorded, str) or recorded == file_uri(bids):
        return
    raw = read_json_object(bids / "dataset_description.json") or {}
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
