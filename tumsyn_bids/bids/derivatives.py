"""How tumsyn-bids writes its BIDS derivatives: names, metadata, provenance and safe writes.

Outputs go directly into the output folder (fMRIPrep's default layout), next to a
``dataset_description.json`` that declares the folder a *derivative* dataset whose ``raw`` link is
the input dataset. Every synthesized image gets a name that keeps all entities of its source, in
BIDS entity order, plus ``desc-tumsynFrom<SourceSuffix>``; the ``desc`` entity exists only in
derivatives, so no tool can mistake a synthesized image for an acquired one, and the label says
which contrast it came from. Next to it, a JSON sidecar records everything needed to reproduce it
(source image as a BIDS URI, both prompts, the target protocol, checkpoint digests, inference
settings, software versions) and nothing that differs between two identical runs (no time
stamps, no host names, no absolute paths of the weights): rerunning the app on the same input must
give byte-identical files, so that "did anything change?" is answered by a checksum.

Every file is written atomically (a dot-prefixed temporary file in the target folder, fsync,
``os.replace``), so an interrupted run never leaves a half-written image that a later run, or
another tool, would take for a finished one. The image is written before its sidecar, and
:func:`is_finished` requires both, so the sidecar marks completion.

This module knows BIDS and nothing about torch: checkpoint digests and inference settings are
passed in as plain values, and :func:`software_versions` reads installed versions from package
metadata without importing anything heavy.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import platform
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tumsyn_bids.bids.layout import parse_filename
from tumsyn_bids.prompts import Protocol

if TYPE_CHECKING:
    import nibabel as nib

__all__ = [
    "BIDS_VERSION",
    "CITATION_RELPATH",
    "CODE_URL",
    "CONTAINER_TAG_ENV",
    "CONTAINER_TYPE_ENV",
    "DATASET_NAME",
    "DESC_PREFIX",
    "ENTITY_ORDER",
    "PIPELINE_NAME",
    "PROTOCOL_KEYS",
    "RAW_LINK",
    "REFERENCES",
    "DerivativesError",
    "atomic_save_nifti",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "bids_uri",
    "citation_text",
    "dataset_description",
    "derivative_relpath",
    "desc_label",
    "detect_container",
    "existing_version",
    "file_uri",
    "inference_record",
    "is_finished",
    "json_text",
    "model_record",
    "nifti_bytes",
    "protocol_record",
    "save_derivative",
    "sidecar_relpath",
    "software_versions",
    "synthesis_sidecar",
    "update_bidsignore",
    "write_citation",
    "write_dataset_description",
]

#: The name written into ``GeneratedBy``; also how an existing output folder is recognised as ours.
PIPELINE_NAME = "tumsyn-bids"
DATASET_NAME = "tumsyn-bids: TUMSyn synthesized images"
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/tumsyn-bids/tumsyn-bids"
#: ``DatasetLinks`` key of the input dataset; BIDS URIs of source images use it (``bids:raw:...``).
RAW_LINK = "raw"
DESC_PREFIX = "tumsynFrom"
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
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")

#: Keys of ``TargetProtocol`` (BIDS sidecar names and units, plus the prompt's voxel size in mm).
PROTOCOL_KEYS = (
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "MagneticFieldStrength",
    "Manufacturer",
    "VoxelSize",
)

#: Distributions whose versions go into every sidecar (``software_versions``), by the name the
#: sidecar uses. ``tumsyn-bids`` itself is read from the package, see :func:`software_versions`.
_VERSIONED_DISTRIBUTIONS = {
    "torch": "torch",
    "nipype": "nipype",
    "pybids": "pybids",
    "nibabel": "nibabel",
    "numpy": "numpy",
}

#: Environment variables our container images set (Dockerfile / Apptainer recipe), read first
#: because only the image itself knows its exact tag.
CONTAINER_TYPE_ENV = "TUMSYN_CONTAINER_TYPE"
CONTAINER_TAG_ENV = "TUMSYN_CONTAINER_TAG"


class DerivativesError(ValueError):
    """A derivative name cannot be formed, or the output folder is not ours to write into."""


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def _posix_relpath(relpath: str | os.PathLike[str], what: str) -> PurePosixPath:
    """A dataset-relative path as POSIX, refusing what could escape the dataset root."""
    text = os.fspath(relpath).replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise DerivativesError(
            f"{what} must be a path relative to the dataset root, without '..': {text!r}"
        )
    return path


def _nifti_extension(name: str) -> str | None:
    return next((ext for ext in _NIFTI_EXTENSIONS if name.endswith(ext)), None)


def desc_label(source_suffix: str) -> str:
    """The ``desc`` label of an image synthesized from a ``source_suffix`` image.

    BIDS labels are alphanumeric, so anything else in the suffix is dropped: ``T2starw`` gives
    ``tumsynFromT2starw``, a (non-BIDS) ``T1w-mp2rage`` would give ``tumsynFromT1wmp2rage``.
    """
    cleaned = "".join(_ALNUM.findall(source_suffix or ""))
    if not cleaned:
        raise DerivativesError(f"source suffix {source_suffix!r} has no alphanumeric character")
    return DESC_PREFIX + cleaned


def _split_source(
    source_relpath: str | os.PathLike[str],
) -> tuple[PurePosixPath, dict[str, str], str, str]:
    """(relative path, entities in file order, suffix, extension) of a source NIfTI name."""
    path = _posix_relpath(source_relpath, "source path")
    entities, suffix, extension = parse_filename(path.name)
    stem = path.name[: len(path.name) - len(extension)] if extension else path.name
    if _nifti_extension(path.name) is None:
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
) -> str:
    """Dataset-relative path of the image synthesized as ``target_suffix`` from a source image.

    ``sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii.gz`` with target ``T2w`` gives
    ``sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_desc-tumsynFromT1w_T2w.nii.gz``: same
    folder, every source entity kept (so outputs of different source runs never collide), all in
    BIDS entity order, a ``desc`` (replacing one the source may have) naming the source contrast,
    the target suffix, and always ``.nii.gz``. ``res`` optionally adds a ``res-<label>`` entity
    for an output resampled to another grid (then describe it with ``Resolution`` in the
    sidecar, as BIDS requires).

    ``source_suffix`` must be the suffix of ``source_relpath``: it is asked for explicitly so that
    a caller passing the wrong image (or a modality word such as ``T1``) fails here instead of
    writing a misleading name.
    """
    path, entities, suffix, _ = _split_source(source_relpath)
    if suffix != source_suffix:
        raise DerivativesError(
            f"{path}: its suffix is {suffix!r}, but the source suffix given is {source_suffix!r}"
        )
    if not target_suffix or not _ALNUM.fullmatch(target_suffix):
        raise DerivativesError(f"target suffix {target_suffix!r} must be alphanumeric (e.g. T2w)")
    entities = dict(entities)
    entities["desc"] = desc_label(source_suffix)
    if res is not None:
        if not _ALNUM.fullmatch(res):
            raise DerivativesError(f"res label {res!r} must be alphanumeric")
        entities["res"] = res
    name = "_".join([*(f"{k}-{v}" for k, v in _ordered(entities)), target_suffix]) + ".nii.gz"
    return (path.parent / name).as_posix()


def sidecar_relpath(nifti_relpath: str | os.PathLike[str]) -> str:
    """The JSON sidecar path of a NIfTI path (``.nii.gz`` or ``.nii`` becomes ``.json``)."""
    text = os.fspath(nifti_relpath)
    extension = _nifti_extension(text)
    if extension is None:
        raise DerivativesError(f"{text}: not a NIfTI file name (.nii or .nii.gz)")
    return text[: -len(extension)] + ".json"


def bids_uri(source_relpath: str | os.PathLike[str], dataset: str = RAW_LINK) -> str:
    """BIDS URI of a file of a linked dataset: ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``.

    Sidecars refer to inputs by BIDS URI rather than by path, so that they stay valid when the
    raw and derivative datasets are moved together, and ``dataset_description.json`` resolves
    the ``raw`` name through ``DatasetLinks``.
    """
    path = _posix_relpath(source_relpath, "source path")
    return f"bids:{dataset}:{path.as_posix()}"


def file_uri(path: str | os.PathLike[str]) -> str:
    """``file://`` URI of a local folder, absolute but with symbolic links *not* resolved.

    The path as the user gave it is kept (inside a container ``/data`` may be a bind mount whose
    resolved host path means nothing to a reader), normalised so ``/data/./ds/`` and
    ``/data/ds`` give the same, deterministic, URI.
    """
    return Path(os.path.abspath(os.fspath(path))).as_uri()


# --------------------------------------------------------------------------------------------
# dataset_description.json
# --------------------------------------------------------------------------------------------


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


def _read_json_object(path: Path) -> dict[str, Any] | None:
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
    rather than detected here so that tests and callers decide.
    """
    raw_uri = file_uri(bids_dir)
    source: dict[str, Any] = {"URL": raw_uri}
    raw = _read_json_object(Path(bids_dir) / "dataset_description.json") or {}
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
    one folder. Raises :class:`DerivativesError` if the folder holds a description that is not
    ours: writing there could overwrite another dataset's files.
    """
    path = Path(output_dir) / "dataset_description.json"
    if not path.exists():
        return None
    data = _read_json_object(path)
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
    :class:`DerivativesError` (see :func:`existing_version`) instead of being overwritten.
    """
    existing_version(output_dir)
    path = Path(output_dir) / "dataset_description.json"
    atomic_write_json(path, dataset_description(bids_dir, version, container))
    return path


# --------------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------------


def software_versions(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Versions of tumsyn-bids, Python and the libraries that shape the output, by name.

    Read from installed package metadata (``importlib.metadata``), never by importing the
    package, so that this module stays free of torch. tumsyn-bids's own version comes from
    ``tumsyn_bids.__version__`` because an editable install's metadata can be stale. Packages
    that are not installed are left out (rather than written as null). ``extra`` adds or
    overrides entries, e.g. a CUDA version the torch side knows.
    """
    from tumsyn_bids import __version__

    versions = {"tumsyn-bids": __version__, "python": platform.python_version()}
    for key, dist in _VERSIONED_DISTRIBUTIONS.items():
        with suppress(importlib.metadata.PackageNotFoundError):
            versions[key] = importlib.metadata.version(dist)
    versions.update({str(k): str(v) for k, v in (extra or {}).items()})
    return dict(sorted(versions.items()))


def model_record(
    checkpoint: str | os.PathLike[str],
    checkpoint_sha256: str,
    text_encoder: str | os.PathLike[str],
    text_encoder_sha256: str,
    *,
    text_heads: int | None = None,
    name: str | None = None,
    intended_use: str | None = None,
) -> dict[str, Any]:
    """``Model`` of a sidecar: which weights made the image, identified by content.

    Only file *names* are recorded: absolute paths differ between machines (and reveal them)
    while the sha256 digests (computed by ``tumsyn_bids.model.file_sha256``) identify the
    weights exactly. ``name``/``intended_use`` come from checkpoints trained with tumsyn-bids
    (the bundled demo model says there that it is not for research use); without them the
    weights are taken to be the published ones.
    """
    checkpoints = {}
    for role, path, digest in (
        ("Synthesis", checkpoint, checkpoint_sha256),
        ("TextEncoder", text_encoder, text_encoder_sha256),
    ):
        digest = str(digest).strip().lower()
        if not _SHA256.fullmatch(digest):
            raise DerivativesError(f"{role} sha256 must be 64 hexadecimal digits, got {digest!r}")
        checkpoints[role] = {"File": PurePosixPath(os.fspath(path).replace("\\", "/")).name}
        checkpoints[role]["SHA256"] = digest
    record: dict[str, Any] = {
        "Name": name or "TUMSyn",
        "Architecture": "TUMSyn",
        "Paper": "https://arxiv.org/abs/2409.16818",
        "Code": "https://github.com/Wangyulin-user/TUMSyn",
    }
    if name is None:
        record["Weights"] = "https://zenodo.org/records/13119176"
    if intended_use:
        record["IntendedUse"] = str(intended_use)
    record["Checkpoints"] = checkpoints
    if text_heads is not None:
        record["TextHeads"] = int(text_heads)
    return record


def _voxel_size(values: Sequence[float] | None, what: str) -> list[float] | None:
    if values is None:
        return None
    sizes = [float(v) for v in values]
    if len(sizes) != 3 or not all(v > 0 for v in sizes):
        raise DerivativesError(f"{what} must be three positive millimetre values, got {values!r}")
    return sizes


def inference_record(
    *,
    patch_size: Sequence[int] | int,
    overlap: float,
    batch_size: int,
    device: str,
    precision: str,
    reference: bool,
    output_voxel_size: Sequence[float] | None = None,
) -> dict[str, Any]:
    """``Inference`` of a sidecar: the settings that can change the synthesized values.

    ``device`` is reduced to its type (``cuda:1`` -> ``cuda``): which of a node's GPUs ran the job
    does not change the result, and recording it would make identical runs differ.
    ``output_voxel_size`` is None when the output is on the source image's grid.
    """
    patch = [int(patch_size)] * 3 if isinstance(patch_size, int) else [int(p) for p in patch_size]
    record: dict[str, Any] = {
        "PatchSize": patch,
        "Overlap": float(overlap),
        "BatchSize": int(batch_size),
        "Device": str(device).split(":", 1)[0],
        "Precision": str(precision),
        "ReferenceMode": bool(reference),
        "OutputResolution": _voxel_size(output_voxel_size, "output voxel size") or "source grid",
    }
    return record


def protocol_record(protocol: Protocol | Mapping[str, Any] | None) -> dict[str, Any]:
    """``TargetProtocol`` of a sidecar: the acquisition the target prompt describes.

    Takes a :class:`tumsyn_bids.prompts.Protocol` (converted to BIDS names; times stay in
    seconds as in BIDS sidecars) or a mapping already keyed by BIDS names, which is passed
    through. Unknown values (None) are omitted, and a key outside :data:`PROTOCOL_KEYS` is
    refused, since it is almost certainly a misspelling that would silently vanish.
    """
    if protocol is None:
        return {}
    if isinstance(protocol, Protocol):
        protocol = {
            "RepetitionTime": protocol.repetition_time,
            "EchoTime": protocol.echo_time,
            "InversionTime": protocol.inversion_time,
            "FlipAngle": protocol.flip_angle,
            "MagneticFieldStrength": protocol.magnetic_field_strength,
            "Manufacturer": protocol.manufacturer,
            "VoxelSize": protocol.voxel_size,
        }
    unknown = sorted(set(protocol) - set(PROTOCOL_KEYS))
    if unknown:
        raise DerivativesError(
            f"unknown TargetProtocol key(s) {', '.join(unknown)}; use {', '.join(PROTOCOL_KEYS)}"
        )
    record = {key: value for key, value in protocol.items() if value is not None}
    if "VoxelSize" in record:
        record["VoxelSize"] = [float(v) for v in record["VoxelSize"]]
    return record


def synthesis_sidecar(
    *,
    source_relpath: str,
    target_suffix: str,
    source_prompt: str,
    target_prompt: str,
    model: Mapping[str, Any],
    inference: Mapping[str, Any],
    software: Mapping[str, str],
    target_protocol: Protocol | Mapping[str, Any] | None = None,
    skull_stripped: bool = False,
    output_voxel_size: Sequence[float] | None = None,
    extra_sources: Iterable[str] = (),
) -> dict[str, Any]:
    """Sidecar of a synthesized image: what it is, where it came from, how to reproduce it.

    ``model``, ``inference`` and ``software`` are normally :func:`model_record`,
    :func:`inference_record` and :func:`software_versions`. ``source_relpath`` is relative to
    the raw dataset and becomes a BIDS URI in ``Sources`` and ``SpatialReference`` (the image
    is in the source's world coordinates, so the source *is* its spatial reference, also when
    resampled). ``output_voxel_size`` (mm) is given when the output is on a grid other than the
    source's; ``Resolution`` then says so in words, as BIDS asks of resampled derivatives.
    ``extra_sources`` are further BIDS URIs (for example a brain mask).

    Software versions go under ``SynthesisSoftwareVersions``, not ``SoftwareVersions``: BIDS
    reserves the latter for the *scanner's* software, as a string, and the validator rejects an
    object there (and readers would take it for scanner metadata).

    The result has no time stamp, host or absolute path, and :func:`json_text` sorts its keys:
    the same inputs always give the same bytes.
    """
    path, _, source_suffix, _ = _split_source(source_relpath)
    source_uri = bids_uri(path)
    sidecar: dict[str, Any] = {
        "Description": (
            f"Synthesized by TUMSyn as a {target_suffix} image from the {source_suffix} image "
            f"{path.as_posix()}, following the target prompt in TargetPrompt; not an acquired "
            "image."
        ),
        "Sources": [source_uri, *extra_sources],
        "SpatialReference": source_uri,
        "SkullStripped": bool(skull_stripped),
        "SourcePrompt": source_prompt,
        "TargetPrompt": target_prompt,
        "TargetProtocol": protocol_record(target_protocol),
        "Model": dict(model),
        "Inference": dict(inference),
        "SynthesisSoftwareVersions": dict(software),
    }
    voxels = _voxel_size(output_voxel_size, "output voxel size")
    if voxels is not None:
        sidecar["Resolution"] = (
            "Resampled to {} mm voxels over the field of view of the source image "
            "(SpatialReference), in its world coordinates.".format(
                " x ".join(f"{v:g}" for v in voxels)
            )
        )
    return sidecar


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


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


def _temporary_name(target: Path) -> str:
    """A hidden sibling name that keeps the target's extension (``.x.nii.gz`` tools still know
    the format; BIDS tools and PyBIDS skip dot files) and names its writer (host and process id,
    so that :func:`tumsyn_bids.cleanup.remove_stale_temporaries` can tell a killed writer's
    leftover from a live writer's file: ``.{stem}.tmp-{host}-{pid}-{8 hex}{extension}``)."""
    name = target.name
    extension = _nifti_extension(name) or target.suffix
    stem = name[: len(name) - len(extension)] if extension else name
    host = re.sub(r"[^A-Za-z0-9]", "", platform.node())[:32]
    return f".{stem}.tmp-{host}-{os.getpid()}-{secrets.token_hex(4)}{extension}"


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
        tmp = target.with_name(_temporary_name(target))
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
    """Atomically write ``img`` to a ``.nii.gz`` (reproducible gzip) or ``.nii`` path."""
    extension = _nifti_extension(os.fspath(path))
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
    rel = _posix_relpath(relpath, "derivative path")
    image_path = root / rel
    json_path = root / sidecar_relpath(rel.as_posix())
    text = json_text(dict(sidecar))  # fail before touching anything
    with suppress(FileNotFoundError):
        json_path.unlink()
    atomic_save_nifti(img, image_path)
    atomic_write_text(json_path, text)
    return image_path


def subject_log_dir(output_dir: str | os.PathLike[str], subject: str) -> Path:
    """Where a participant's crash files go (``sub-XX/log``, as in fMRIPrep's layout)."""
    return Path(output_dir) / f"sub-{subject}" / "log"


def is_finished(output_dir: str | os.PathLike[str], relpath: str) -> bool:
    """True when the image ``relpath`` and its sidecar both exist as non-empty files.

    Writes are atomic and the sidecar comes last (:func:`save_derivative`), so this is enough
    to skip outputs of an earlier, possibly interrupted, run unless ``--overwrite`` is given.
    """
    root = Path(output_dir)
    rel = _posix_relpath(relpath, "derivative path")
    for candidate in (root / rel, root / sidecar_relpath(rel.as_posix())):
        try:
            if not candidate.is_file() or candidate.stat().st_size == 0:
                return False
        except OSError:
            return False
    return True


def update_bidsignore(output_dir: str | os.PathLike[str], patterns: Iterable[str]) -> Path:
    """Add ``patterns`` to ``output_dir/.bidsignore`` unless present; other lines are kept.

    Files outside the BIDS layout (``logs/``) would otherwise be reported by the validator.
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
# Citation boilerplate
# --------------------------------------------------------------------------------------------

REFERENCES: dict[str, str] = {
    "tumsyn": (
        "Wang Y., Xiong H., Sun K., et al. Towards General Text-guided Image Synthesis for "
        "Customized Multimodal Brain MRI Generation. arXiv:2409.16818 (2024). "
        "doi:10.48550/arXiv.2409.16818"
    ),
    "nipype": (
        "Gorgolewski K., Burns C.D., Madison C., Clark D., Halchenko Y.O., Waskom M.L., "
        "Ghosh S.S. Nipype: a flexible, lightweight and extensible neuroimaging data processing "
        "framework in Python. Frontiers in Neuroinformatics 5:13 (2011). "
        "doi:10.3389/fninf.2011.00013"
    ),
    "pybids": (
        "Yarkoni T., Markiewicz C.J., de la Vega A., et al. PyBIDS: Python tools for BIDS "
        "datasets. Journal of Open Source Software 4(40):1294 (2019). doi:10.21105/joss.01294"
    ),
    "pytorch": (
        "Paszke A., Gross S., Massa F., et al. PyTorch: An Imperative Style, High-Performance "
        "Deep Learning Library. Advances in Neural Information Processing Systems 32 "
        "(NeurIPS 2019), 8024-8035."
    ),
    "nibabel": (
        "Brett M., Markiewicz C.J., Hanke M., et al. NiBabel: access a cacophony of "
        "neuro-imaging file formats. Zenodo. doi:10.5281/zenodo.591597"
    ),
    "bids": (
        "Gorgolewski K.J., Auer T., Calhoun V.D., et al. The brain imaging data structure, a "
        "format for organizing and describing outputs of neuroimaging experiments. Scientific "
        "Data 3:160044 (2016). doi:10.1038/sdata.2016.44"
    ),
    "bids-derivatives": (
        "The BIDS Specification, section 'Derivatives' (BIDS version "
        f"{BIDS_VERSION}). doi:10.5281/zenodo.3686061"
    ),
    "bids-apps": (
        "Gorgolewski K.J., Alfaro-Almagro F., Auer T., et al. BIDS Apps: Improving ease of use, "
        "accessibility, and reproducibility of neuroimaging data analysis methods. PLoS "
        "Computational Biology 13(3):e1005209 (2017). doi:10.1371/journal.pcbi.1005209"
    ),
}


def _words(value: Any) -> str:
    """``"T2w"`` stays, ``["T2w", "FLAIR", "PDw"]`` becomes ``"T2w, FLAIR and PDw"``."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return str(value)
    items = [str(v) for v in value]
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def citation_text(version: str, settings: Mapping[str, Any] | None = None) -> str:
    """Markdown boilerplate for a methods section, filled in with this run's ``settings``.

    Recognised settings (all optional): ``sources`` and ``targets`` (BIDS suffixes),
    ``patch_size``, ``overlap``, ``precision``, ``reference`` (bool), ``output_voxel_size``
    (mm, None for the source grid), ``device``. Every setting, recognised or not, is also listed
    verbatim at the end, sorted, so the text is complete and deterministic.
    """
    s = dict(settings or {})
    if "patch_size" in s:
        patch = s["patch_size"]
        patch_words = "x".join(str(p) for p in patch) if isinstance(patch, Sequence) else patch
    else:
        patch_words = None
    what = "Anatomical images"
    if s.get("targets"):
        what = f"{_words(s['targets'])} images"
    source = " from the acquired images of each participant"
    if s.get("sources"):
        source = f" from the acquired {_words(s['sources'])} images of each participant"
    sentences = [
        f"{what} were synthesized{source} with tumsyn-bids {version}, a BIDS App [8] "
        "implementing TUMSyn, a text-guided model for customized multimodal brain MRI "
        "synthesis [1], with PyTorch [4]. The input dataset was queried with PyBIDS [3], the "
        "processing was organized with Nipype [2], and images were read and written with "
        "NiBabel [5].",
        "For every source image, a text prompt describing it (subject age and sex, field "
        "strength and manufacturer, modality, voxel size, and repetition, echo and inversion "
        "times and flip angle) was assembled from its BIDS sidecar metadata and the "
        "participants table; a second prompt described the protocol of the image to be "
        "synthesized. The TUMSyn network, conditioned on the target prompt, was applied to the "
        "source image patch by patch",
    ]
    patch_bits = []
    if patch_words is not None:
        patch_bits.append(f"patches of {patch_words} voxels")
    if "overlap" in s:
        patch_bits.append(f"an overlap ratio of {s['overlap']}")
    if patch_bits:
        sentences[-1] += " (" + ", ".join(patch_bits) + ")"
    if s.get("reference"):
        sentences[-1] += ", following the authors' reference inference procedure exactly"
    elif s.get("precision"):
        sentences[-1] += f", in {s['precision']} precision"
    sentences[-1] += "."
    if "output_voxel_size" in s:
        grid = s["output_voxel_size"]
        if grid is None:
            sentences.append("Outputs are on the grid of their source image.")
        else:
            sentences.append(
                f"Outputs were generated at {'x'.join(f'{float(v):g}' for v in grid)} mm "
                "voxels over the field of view of their source image."
            )
    sentences.append(
        "Results were stored as BIDS derivatives [6, 7], each image labeled "
        "desc-tumsynFrom<source contrast> and accompanied by a JSON sidecar recording the "
        "source image, both prompts, checkpoint digests, inference settings and software "
        "versions. Synthesized images are model predictions, not acquired data."
    )
    listed = "\n".join(
        f"- {key}: {json.dumps(value, sort_keys=True, default=str)}"
        for key, value in sorted(s.items())
    )
    order = ("tumsyn", "nipype", "pybids", "pytorch", "nibabel", "bids", "bids-derivatives")
    order += ("bids-apps",)
    references = "\n".join(f"{i}. {REFERENCES[key]}" for i, key in enumerate(order, start=1))
    parts = [
        "# Citing tumsyn-bids",
        "",
        "The paragraph below was generated by tumsyn-bids for this run and may be copied into "
        "the methods section of a manuscript (edit as needed). Please cite the references it "
        "numbers.",
        "",
        "## Methods",
        "",
        " ".join(sentences),
        "",
    ]
    if listed:
        parts += ["## Settings", "", listed, ""]
    parts += ["## References", "", references, ""]
    return "\n".join(parts)


def write_citation(
    output_dir: str | os.PathLike[str],
    version: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`citation_text` to ``output_dir/logs/CITATION.md``; return its path.

    ``version`` defaults to the installed tumsyn-bids. ``logs/`` is added to the output's
    ``.bidsignore`` because it is not part of the BIDS layout.
    """
    if version is None:
        from tumsyn_bids import __version__ as version
    path = atomic_write_text(Path(output_dir) / CITATION_RELPATH, citation_text(version, settings))
    update_bidsignore(output_dir, ["logs/"])
    return path
