"""``tumsyn-train ... --preproc``: train on the images the app's preprocessing gives the network.

A model sees at inference what ``tumsyn`` feeds it: with ``--preproc full`` (the app's default)
that is the conformed, INU-corrected, brain-extracted source. Training on raw heads would teach
the network another input distribution. This module runs the app's own nodes
(:func:`tumsyn_bids.workflows.anat.init_anat_wf`, named and nested as the app names them) on
every training image, in a nipype work folder, so reruns and resumed runs find them cached, and
a work folder shared with ``tumsyn`` runs serves both. Non-T1w images take the brain mask of the
session's T1w, as in the app (:func:`tumsyn_bids.plan.t1w_reference`).

Co-registered images of a session share a grid, so their conformed copies share one too: the
pairs stage 2 trains on stay voxel-aligned.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from ..config import PreprocConfig
from .data import TrainingImage
from .errors import TrainingDataError

LOGGER = logging.getLogger(__name__)

#: The map from each image's input path to its preprocessed file, written by the main process.
MAP_NAME = "tumsyn_train_preproc.json"


def _references(images: Sequence[TrainingImage]) -> dict[str, str]:
    """relpath -> the T1w relpath whose mask it takes (non-T1w images of sessions with a T1w)."""
    from ..bids.records import t1w_reference

    refs: dict[str, str] = {}
    sessions: dict[tuple[str, str | None], list[TrainingImage]] = {}
    for image in images:
        sessions.setdefault((image.subject, image.session), []).append(image)
    for members in sessions.values():
        reference = t1w_reference(members)
        for image in members:
            if image.suffix != "T1w" and reference is not None:
                refs[image.relpath] = reference
    return refs


def preprocess_images(
    images: Sequence[TrainingImage],
    bids_dir: Path,
    work_dir: Path,
    preproc: PreprocConfig,
    omp_nthreads: int = 1,
) -> dict[str, Path]:
    """Preprocess ``images`` with the app's nodes under ``work_dir``; relpath -> brain file.

    Returns the conformed, brain-extracted image (``brain_file``) of every image, in the work
    folder. Raises :class:`~tumsyn_bids.training.errors.TrainingDataError` when a node fails
    (an unusable image: its crash file in ``work_dir/crash`` says why).
    """
    from nipype.pipeline import engine as pe

    from ..workflows.anat import init_anat_wf
    from ..workflows.base import anat_workflow_name, node_config, session_workflow_name

    refs = _references(images)
    top = pe.Workflow(name="tumsyn_wf", base_dir=str(work_dir))
    sessions: dict[str, pe.Workflow] = {}
    anat: dict[str, pe.Workflow] = {}
    for image in sorted(images, key=lambda i: i.relpath):
        name = session_workflow_name(image.subject, image.session)
        if name not in sessions:
            sessions[name] = pe.Workflow(name=name)
        node = init_anat_wf(
            source_suffix=image.suffix,
            preproc=preproc,
            omp_nthreads=omp_nthreads,
            name=anat_workflow_name(image.relpath),
        )
        node.inputs.inputnode.source_file = str(Path(bids_dir) / image.relpath)
        node.inputs.inputnode.source_name = image.relpath
        sessions[name].add_nodes([node])
        anat[image.relpath] = node
    for image in images:
        ref = refs.get(image.relpath)
        if ref is not None:
            session = sessions[session_workflow_name(image.subject, image.session)]
            session.connect([
                (anat[ref], anat[image.relpath], [
                    ("outputnode.checked_file", "inputnode.t1w_file"),
                    ("outputnode.mask_source", "inputnode.t1w_mask"),
                ]),
            ])  # fmt: skip
    crash_dir = str(Path(work_dir) / "crash")
    for name in sorted(sessions):
        for node in sessions[name]._get_all_nodes():
            node.config = node_config(crash_dir)
        top.add_nodes([sessions[name]])
    try:
        graph = top.run(plugin="Linear")
    except RuntimeError as exc:  # nipype lists the failed nodes; their crash files say why
        raise TrainingDataError(
            f"preprocessing failed ({str(exc).strip().splitlines()[0]}); the crash files in "
            f"{crash_dir} hold the tracebacks"
        ) from None
    ends = {}
    for node in graph.nodes():
        if node.name == "apply_mask":
            ends[node.fullname] = Path(node.result.outputs.out_file)
    out = {}
    for image in images:
        name = session_workflow_name(image.subject, image.session)
        key = f"tumsyn_wf.{name}.{anat_workflow_name(image.relpath)}.preproc_wf.apply_mask"
        out[image.relpath] = ends[key]
    return out


def preprocessed(
    images: Sequence[TrainingImage],
    bids_dir: Path,
    work_dir: Path,
    preproc: PreprocConfig,
    *,
    is_main: bool = True,
    barrier=None,
    omp_nthreads: int = 1,
) -> list[TrainingImage]:
    """``images`` with their paths replaced by their preprocessed files.

    The main process runs :func:`preprocess_images` and writes the map to ``work_dir``
    (:data:`MAP_NAME`); with several processes (``torchrun``) the others wait at ``barrier``
    and read it, so the nodes run once.
    """
    work_dir = Path(work_dir)
    path = work_dir / MAP_NAME
    if is_main:
        LOGGER.info("preprocessing %d images in %s", len(images), work_dir)
        mapping = preprocess_images(images, bids_dir, work_dir, preproc, omp_nthreads)
        from ..bids.io import atomic_write_json

        atomic_write_json(path, {k: str(v) for k, v in sorted(mapping.items())})
    if barrier is not None:
        barrier()
    mapping = {k: Path(v) for k, v in json.loads(path.read_text()).items()}
    return [dataclasses.replace(i, path=mapping[i.relpath]) for i in images]
