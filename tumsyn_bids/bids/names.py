"""BIDS file names: parsing them, naming derivatives, BIDS URIs and where our logs go.

Every synthesized image gets a name that keeps all entities of its source, in BIDS entity order,
plus ``desc-tumsynFrom<SourceSuffix>``: the ``desc`` entity exists only in derivatives, so no
tool can mistake a synthesized image for an acquired one, and the label says which contrast it
came from. Sidecars refer to their sources by BIDS URI (``bids:raw:<relative path>``), resolved
through the ``raw`` entry of ``DatasetLinks`` in ``dataset_description.json``.

Dataset-relative paths are POSIX paths; anything absolute or containing ``..`` is refused with
:class:`DerivativesError`. Nothing here reads or writes files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

__all__ = [
    "CITATION_RELPATH",
    "DESC_PREFIX",
    "ENTITY_ORDER",
    "NIFTI_EXTENSIONS",
    "RAW_LINK",
    "DerivativesError",
    "bids_uri",
    "brain_mask_relpath",
    "derivative_relpath",
    "desc_label",
    "file_uri",
    "nifti_extension",
    "parse_filename",
    "posix_relpath",
    "preproc_relpath",
    "sidecar_relpath",
    "split_source",
    "subject_log_dir",
    "transform_relpath",
]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: ``DatasetLinks`` key of the input dataset; BIDS URIs of source images use it (``bids:raw:...``).
RAW_LINK = "raw"
DESC_PREFIX = "tumsynFrom"
#: The methods text and references of a run, relative to the output folder.
CITATION_RELPATH = "logs/CITATION.md"

#: BIDS entity short names in the order the specification's entity table prescribes for file
#: names (schema ``rules.entities``, BIDS 1.10/1.11). Derivative-only entities are included so
#: that a source from a derivative dataset (``space``, ``res``...) is also ordered correctly;
#: ``desc`` is the last entity of every file name.
ENTITY_ORDER: tuple[str, ...] = (
    "sub",
    "tpl",
    "ses",
    "cohort",
    "sample",
    "task",
    "tracksys",
    "acq",
    "nuc",
    "voi",
    "ce",
    "trc",
    "stain",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "proc",
    "hemi",
    "space",
    "split",
    "recording",
    "chunk",
    "atlas",
    "seg",
    "scale",
    "res",
    "den",
    "label",
    "desc",
)
_ENTITY_RANK = {name: rank for rank, name in enumerate(ENTITY_ORDER)}
_ALNUM = re.compile(r"[A-Za-z0-9]+")


class DerivativesError(ValueError):
    """A derivative name or record cannot be formed, or the output folder is not ours."""


def parse_filename(filename: str) -> tuple[dict[str, str], str, str]:
    """Split a BIDS file name into (entities by short name, suffix, extension).

    Entities keep their file-name order, which is the order BIDS prescribes, so derivative
    names can be rebuilt from them. ``sub`` and ``ses`` are included. The extension is
    ``.nii.gz``/``.nii`` for NIfTI files, else everything from the first dot (``.json``), else
    empty. Parts without ``-`` are skipped and a repeated key keeps its last value; nothing is
    raised (see :func:`split_source` for a strict reading).
    """
    name = os.path.basename(filename)
    extension = nifti_extension(name) or ""
    if not extension and "." in name:
        extension = name[name.index(".") :]
    stem = name[: len(name) - len(extension)] if extension else name
    *pairs, suffix = stem.split("_")
    entities: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if sep:
            entities[key] = value
    return entities, suffix, extension


def nifti_extension(name: str) -> str | None:
    """``.nii.gz`` or ``.nii`` when ``name`` ends in one, else None."""
    return next((ext for ext in NIFTI_EXTENSIONS if name.endswith(ext)), None)


def posix_relpath(relpath: str | os.PathLike[str], what: str) -> PurePosixPath:
    """A dataset-relative path as POSIX (backslashes become ``/``).

    Raises :class:`DerivativesError` (naming ``what``) for an empty or absolute path or one
    containing ``..``, which could escape the dataset root.
    """
    text = os.fspath(relpath).replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise DerivativesError(
            f"{what} must be a path relative to the dataset root, without '..': {text!r}"
        )
    return path


def desc_label(source_suffix: str) -> str:
    """The ``desc`` label of an image synthesized from a ``source_suffix`` image.

    BIDS labels are alphanumeric, so anything else in the suffix is dropped: ``T2starw`` gives
    ``tumsynFromT2starw``, a (non-BIDS) ``T1w-mp2rage`` would give ``tumsynFromT1wmp2rage``.
    """
    cleaned = "".join(_ALNUM.findall(source_suffix or ""))
    if not cleaned:
        raise DerivativesError(f"source suffix {source_suffix!r} has no alphanumeric character")
    return DESC_PREFIX + cleaned


def split_source(
    source_relpath: str | os.PathLike[str],
) -> tuple[PurePosixPath, dict[str, str], str, str]:
    """(relative path, entities in file order, suffix, extension) of a source NIfTI name.

    Strict: raises :class:`DerivativesError` for a path that is not relative, not a NIfTI
    name, not entity-label pairs followed by a suffix, or not starting with ``sub-<label>``.
    """
    path = posix_relpath(source_relpath, "source path")
    entities, suffix, extension = parse_filename(path.name)
    stem = path.name[: len(path.name) - len(extension)] if extension else path.name
    if nifti_extension(path.name) is None:
        raise DerivativesError(f"{path}: not a NIfTI file name (.nii or .nii.gz)")
    # parse_filename keeps the last of repeated keys and skips parts without '-'; a name where
    # either happened is not a BIDS name and would be rebuilt wrongly, so refuse it.
    if len(stem.split("_")) != len(entities) + 1 or not suffix or "-" in suffix:
        raise DerivativesError(f"{path}: not a BIDS file name (entity-label pairs then a suffix)")
    if "sub" not in entities:
        raise DerivativesError(f"{path}: a BIDS file name must start with sub-<label>")
    return path, entities, suffix, extension


def _ordered(entities: Mapping[str, str]) -> list[tuple[str, str]]:
    """Entities in BIDS order. Keys unknown to the entity table keep their relative order and go
    just before ``desc``: BIDS has no place for them, and this keeps ``desc`` last."""
    unknown_rank = _ENTITY_RANK["desc"] - 0.5
    # sorted() is stable, so unknown keys keep their order in the source name.
    return sorted(entities.items(), key=lambda item: _ENTITY_RANK.get(item[0], unknown_rank))


def derivative_relpath(
    source_relpath: str | os.PathLike[str],
    target_suffix: str,
    source_suffix: str,
    *,
    res: str | None = None,
    space: str | None = None,
) -> str:
    """Dataset-relative path of the image synthesized as ``target_suffix`` from a source image.

    ``sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii.gz`` with target ``T2w`` gives
    ``sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_desc-tumsynFromT1w_T2w.nii.gz``: same
    folder, every source entity kept (so outputs of different source runs never collide), all in
    BIDS entity order, a ``desc`` (replacing one the source may have) naming the source contrast,
    the target suffix, and always ``.nii.gz``. ``res`` optionally adds a ``res-<label>`` entity
    for an output resampled to another grid (then describe it with ``Resolution`` in the
    sidecar, as BIDS requires); ``space`` a ``space-<label>`` entity for an output resampled
    into a template (``--output-spaces``, e.g. ``space-MNI152NLin2009aSym_res-2``).

    ``source_suffix`` must be the suffix of ``source_relpath``: it is asked for explicitly so that
    a caller passing the wrong image (or a modality word such as ``T1``) fails here instead of
    writing a misleading name. Raises :class:`DerivativesError` on bad input.
    """
    path, entities, suffix, _ = split_source(source_relpath)
    if suffix != source_suffix:
        raise DerivativesError(
            f"{path}: its suffix is {suffix!r}, but the source suffix given is {source_suffix!r}"
        )
    if not target_suffix or not _ALNUM.fullmatch(target_suffix):
        raise DerivativesError(f"target suffix {target_suffix!r} must be alphanumeric (e.g. T2w)")
    extra = {"desc": desc_label(source_suffix), **_space_entities(space, res)}
    return _derived(path, entities, extra, target_suffix)


def _space_entities(space: str | None, res: str | None) -> dict[str, str]:
    """``{"space": ..., "res": ...}`` for the given labels (alphanumeric, else
    :class:`DerivativesError`)."""
    extra = {}
    for key, label in (("space", space), ("res", res)):
        if label is None:
            continue
        if not _ALNUM.fullmatch(str(label)):
            raise DerivativesError(f"{key} label {label!r} must be alphanumeric")
        extra[key] = str(label)
    return extra


def _derived(
    path: PurePosixPath, entities: Mapping[str, str], extra: Mapping[str, str], suffix: str
) -> str:
    """``path``'s folder and entities, ``extra`` set (BIDS order), ``suffix``, ``.nii.gz``."""
    merged = {**entities, **extra}
    name = "_".join([*(f"{k}-{v}" for k, v in _ordered(merged)), suffix]) + ".nii.gz"
    return (path.parent / name).as_posix()


def brain_mask_relpath(
    source_relpath: str | os.PathLike[str], *, space: str | None = None, res: str | None = None
) -> str:
    """Dataset-relative path of a source image's brain mask, sMRIPrep's ``desc-brain_mask``.

    ``sub-01/anat/sub-01_run-1_T1w.nii.gz`` gives ``sub-01/anat/sub-01_run-1_desc-brain_mask
    .nii.gz``: every source entity kept, ``desc-brain``, suffix ``mask``. The mask lies on the
    source's grid. A session has one source contrast, so its masks never collide; a T1w
    brought in only for its mask (a FLAIR source's reference) gets none. ``space``/``res``
    name the mask resampled into a template (``..._space-MNI152NLin2009aSym_res-2_desc-brain
    _mask.nii.gz``). Raises :class:`DerivativesError` for a name that is not a BIDS source name.
    """
    path, entities, _, _ = split_source(source_relpath)
    return _derived(path, entities, {"desc": "brain", **_space_entities(space, res)}, "mask")


def transform_relpath(source_relpath: str | os.PathLike[str], source: str, target: str) -> str:
    """Dataset-relative path of a transform between a source image's space and a template, with
    sMRIPrep's entities: ``sub-01/anat/sub-01_T1w.nii.gz``, ``T1w``,
    ``MNI152NLin2009aSym`` give ``sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image
    _xfm.h5`` (the source's entities, then ``from``, ``to``, ``mode-image``, suffix ``xfm``,
    ITK composite HDF5). Swap ``source`` and ``target`` for the inverse. ``from``/``to``/``mode``
    are not in BIDS' entity table yet (BEP014), so they follow the source's entities; the output
    dataset's ``.bidsignore`` lists ``*_xfm.h5`` for the validator. Raises
    :class:`DerivativesError` for a bad source name or non-alphanumeric space labels.
    """
    path, entities, _, _ = split_source(source_relpath)
    for label in (source, target):
        if not _ALNUM.fullmatch(label or ""):
            raise DerivativesError(f"space label {label!r} must be alphanumeric")
    entities = {k: v for k, v in entities.items() if k != "desc"}
    name = "_".join(
        [*(f"{k}-{v}" for k, v in _ordered(entities)), f"from-{source}", f"to-{target}",
         "mode-image", "xfm"]
    )  # fmt: skip
    return (path.parent / (name + ".h5")).as_posix()


def preproc_relpath(source_relpath: str | os.PathLike[str]) -> str:
    """Dataset-relative path of a preprocessed source image, sMRIPrep's ``desc-preproc``.

    ``sub-01/anat/sub-01_T1w.nii.gz`` gives ``sub-01/anat/sub-01_desc-preproc_T1w.nii.gz``
    (the source's entities and suffix, ``desc-preproc``). Raises :class:`DerivativesError`
    for a name that is not a BIDS source name.
    """
    path, entities, suffix, _ = split_source(source_relpath)
    return _derived(path, entities, {"desc": "preproc"}, suffix)


def sidecar_relpath(nifti_relpath: str | os.PathLike[str]) -> str:
    """The JSON sidecar path of a NIfTI path (``.nii.gz`` or ``.nii`` becomes ``.json``)."""
    text = os.fspath(nifti_relpath)
    extension = nifti_extension(text)
    if extension is None:
        raise DerivativesError(f"{text}: not a NIfTI file name (.nii or .nii.gz)")
    return text[: -len(extension)] + ".json"


def bids_uri(source_relpath: str | os.PathLike[str], dataset: str = RAW_LINK) -> str:
    """BIDS URI of a file of a linked dataset: ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``.

    Sidecars refer to inputs by BIDS URI rather than by path, so that they stay valid when the
    raw and derivative datasets are moved together, and ``dataset_description.json`` resolves
    the ``raw`` name through ``DatasetLinks``.
    """
    path = posix_relpath(source_relpath, "source path")
    return f"bids:{dataset}:{path.as_posix()}"


def file_uri(path: str | os.PathLike[str]) -> str:
    """``file://`` URI of a local folder, absolute but with symbolic links *not* resolved.

    The path as the user gave it is kept (inside a container ``/data`` may be a bind mount whose
    resolved host path means nothing to a reader), normalised so ``/data/./ds/`` and
    ``/data/ds`` give the same, deterministic, URI.
    """
    return Path(os.path.abspath(os.fspath(path))).as_uri()


def subject_log_dir(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """Where a participant's crash files and job records go (``sub-XX/log``, as in fMRIPrep's
    layout)."""
    return Path(output_dir) / f"sub-{subject}" / "log"
