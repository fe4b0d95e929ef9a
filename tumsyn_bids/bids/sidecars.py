"""The JSON sidecar of a synthesized image and the records it is made of.

A sidecar records everything needed to reproduce its image (source image as a BIDS URI, both
prompts, the target protocol, checkpoint digests, inference settings, software versions) and
nothing that differs between two identical runs (no time stamps, no host names, no absolute
paths of the weights): the same inputs give the same bytes (rendered by
:func:`tumsyn_bids.bids.io.json_text`).

This module knows BIDS and nothing about torch: checkpoint digests and inference settings are
passed in as plain values, and :func:`software_versions` reads installed versions from package
metadata without importing anything heavy.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import PurePosixPath
from typing import Any

from ..prompts.protocol import Protocol
from .names import DerivativesError, bids_uri, split_source

__all__ = [
    "MASK_METHODS",
    "PROTOCOL_KEYS",
    "brain_mask_sidecar",
    "complete_sidecar",
    "inference_record",
    "model_record",
    "preproc_sidecar",
    "preprocessing_record",
    "protocol_record",
    "software_versions",
    "synthesis_sidecar",
]

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
    speed: str | None = None,
) -> dict[str, Any]:
    """``Inference`` of a sidecar: the settings that can change the synthesized values.

    ``device`` is reduced to its type (``cuda:1`` -> ``cuda``): which of a node's GPUs ran the job
    does not change the result, and recording it would make identical runs differ.
    ``output_voxel_size`` is None when the output is on the source image's grid. ``speed`` is
    the ``--speed`` preset (None: ``reference`` or ``default`` after ``reference``), recorded as
    ``Speed``; what each preset does is in ``docs/speed.md``.
    """
    patch = [int(patch_size)] * 3 if isinstance(patch_size, int) else [int(p) for p in patch_size]
    record: dict[str, Any] = {
        "PatchSize": patch,
        "Overlap": float(overlap),
        "BatchSize": int(batch_size),
        "Device": str(device).split(":", 1)[0],
        "Precision": str(precision),
        "ReferenceMode": bool(reference),
        "Speed": str(speed or ("reference" if reference else "default")),
        "OutputResolution": _voxel_size(output_voxel_size, "output voxel size") or "source grid",
    }
    return record


def protocol_record(protocol: Protocol | Mapping[str, Any] | None) -> dict[str, Any]:
    """``TargetProtocol`` of a sidecar: the acquisition the target prompt describes.

    Takes a :class:`tumsyn_bids.prompts.protocol.Protocol` (converted to BIDS names; times stay in
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

    The result has no time stamp, host or absolute path, and
    :func:`~tumsyn_bids.bids.io.json_text` sorts its keys: the same inputs always give the same
    bytes.
    """
    path, _, source_suffix, _ = split_source(source_relpath)
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


#: How a brain mask was obtained (``BrainMask.Method`` of the preprocessing summary), in words.
MASK_METHODS = {
    "deepbet": "brain extraction with deepbet",
    "already-extracted": "the non-zero voxels of the source, found to be brain-extracted already",
    "skip": "the non-zero voxels of the source (--skull-strip-source skip)",
    "t1w-same-grid": "the brain mask of a T1w image of the session, on the same grid",
    "t1w-rigid": "the brain mask of a T1w image of the session, after rigid registration",
}


def preprocessing_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``Preprocessing`` of a sidecar: the steps run on the source, with their software.

    ``summary`` is the preprocessing summary (``preproc.json`` of
    :class:`tumsyn_bids.interfaces.preproc.PreprocSummary`): ``Steps`` (in order), ``Software``
    (name: version), ``Conform``, ``BrainMask`` and ``Warnings``; ``SkullStripped`` goes to the
    sidecar's top level instead (a BIDS key).
    """
    keys = ("Steps", "Software", "Conform", "BrainMask", "Warnings")
    return {key: summary[key] for key in keys if key in summary}


def brain_mask_sidecar(
    source_relpath: str,
    method: str | None = None,
    reference_relpath: str | None = None,
) -> dict[str, Any]:
    """Sidecar of a source's ``desc-brain_mask``: ``Type: Brain`` and its ``Sources``.

    ``Sources`` are BIDS URIs of the source and, when the mask was carried over from it, of
    the T1w ``reference_relpath``; ``method`` (a :data:`MASK_METHODS` key) words the
    ``Description``. The mask lies on the source's grid (``SpatialReference``).
    """
    path, _, suffix, _ = split_source(source_relpath)
    sources = [bids_uri(path)]
    how = MASK_METHODS.get(method or "", "")
    if method in ("t1w-same-grid", "t1w-rigid") and reference_relpath:
        sources.append(bids_uri(reference_relpath))
        how = how.replace("a T1w image of the session", f"the T1w image {reference_relpath}")
    text = f"Brain mask of the {suffix} image {path.as_posix()}, on its voxel grid"
    return {
        "Description": text + (f": {how}." if how else "."),
        "Type": "Brain",
        "Sources": sources,
        "SpatialReference": bids_uri(path),
    }


def preproc_sidecar(source_relpath: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Sidecar of a preprocessed source (``desc-preproc_<suffix>``, ``--save-preproc``).

    The image is the source on its own grid after the steps of ``summary`` up to N4 (not
    masked: sMRIPrep's ``desc-preproc``), so ``SkullStripped`` is false.
    """
    path, _, suffix, _ = split_source(source_relpath)
    corrected = "inu" in (summary.get("Steps") or [])
    what = "corrected for intensity non-uniformity with N4" if corrected else "as float32"
    return {
        "Description": (
            f"The {suffix} image {path.as_posix()} {what}, on its voxel grid, not "
            "brain-extracted: the image the synthesis input was masked from."
        ),
        "Sources": [bids_uri(path)],
        "SpatialReference": bids_uri(path),
        "SkullStripped": False,
        "Preprocessing": preprocessing_record(summary),
    }


def complete_sidecar(
    kind: str,
    base: Mapping[str, Any],
    summary: Mapping[str, Any],
    *,
    masked_output: bool = True,
    patches: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A sidecar finished with what is known only once preprocessing ran.

    ``kind`` ``synthesized``: ``base`` (:func:`synthesis_sidecar`) gains ``SkullStripped``
    from ``summary``, ``Preprocessing`` (:func:`preprocessing_record`), and under
    ``Inference`` ``OutputMasked`` and ``Patches`` (computed and skipped counts). ``mask``:
    ``base`` holds ``source`` and optionally ``reference`` (dataset-relative paths) and the
    result is :func:`brain_mask_sidecar` with the summary's mask method. ``preproc``:
    :func:`preproc_sidecar` of ``base["source"]``. Raises ``ValueError`` for another kind.
    """
    if kind == "mask":
        method = (summary.get("BrainMask") or {}).get("Method")
        return brain_mask_sidecar(base["source"], method, base.get("reference"))
    if kind == "preproc":
        return preproc_sidecar(base["source"], summary)
    if kind != "synthesized":
        raise ValueError(f"unknown sidecar kind {kind!r}")
    sidecar = dict(base)
    sidecar["SkullStripped"] = bool(summary.get("SkullStripped", False))
    sidecar["Preprocessing"] = preprocessing_record(summary)
    inference = dict(sidecar.get("Inference") or {})
    inference["OutputMasked"] = bool(masked_output)
    if patches is not None:
        inference["Patches"] = {str(k): int(v) for k, v in patches.items()}
    sidecar["Inference"] = inference
    return sidecar
