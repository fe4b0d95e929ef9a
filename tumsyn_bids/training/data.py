"""What to train on, read from the app's BIDS index.

Both stages start from :func:`tumsyn_bids.bids.index_anatomical`, the same index the BIDS App
uses, so an image's training prompt is exactly the prompt the app would write for it (its
sidecar, ``participants.tsv`` and header). Images the app would refuse (unreadable header, a
prompt that cannot be written) are listed and left out, never silently dropped.

Stage 2 needs *pairs*: two modalities of one subject and session on the same voxel grid (TUMSyn
is trained on co-registered images and learns voxel-to-voxel correspondence). Pairs on different
grids are listed and skipped, or resampled onto the source grid when asked to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.records import ScanIndex, ScanRecord
from ..model.inference import percentile_normalise
from ..model.volume import load_volume, to_model_order

LOGGER = logging.getLogger(__name__)

#: Affines closer than this (mm, and unitless for rotations/zooms) are the same grid.
GRID_ATOL = 1e-3


@dataclass(frozen=True)
class TrainingImage:
    """One indexed image and the prompt that describes it."""

    path: Path
    relpath: str
    subject: str
    session: str | None
    suffix: str
    prompt: str

    @classmethod
    def from_record(cls, record: ScanRecord) -> TrainingImage:
        return cls(
            path=record.path,
            relpath=record.relpath,
            subject=record.subject,
            session=record.session,
            suffix=record.suffix,
            prompt=str(record.prompt),
        )


@dataclass(frozen=True)
class ImagePair:
    """Two modalities of one acquisition session; the loss runs in both directions."""

    source: TrainingImage
    target: TrainingImage
    resample: bool = False


def training_images(index: ScanIndex) -> tuple[list[TrainingImage], list[str]]:
    """Usable images with prompts, and one line per image left out (naming the file)."""
    images, skipped = [], []
    for record in index:
        if record.error is not None:
            skipped.append(record.error)
        elif not record.prompt:
            skipped.append(f"{record.relpath}: no prompt could be written for this image")
        else:
            images.append(TrainingImage.from_record(record))
    return images, skipped


def same_grid(a: Path, b: Path) -> tuple[bool, str]:
    """Whether two images share shape and affine; the reason when they do not."""
    ha, hb = nib.load(str(a)), nib.load(str(b))
    sa, sb = ha.shape[:3], hb.shape[:3]
    if sa != sb:
        return False, f"shapes differ ({sa} vs {sb})"
    if not np.allclose(ha.affine, hb.affine, atol=GRID_ATOL):
        return False, "affines differ (not co-registered on one grid)"
    return True, ""


def modality_pairs(
    images: list[TrainingImage], resample: bool = False
) -> tuple[list[ImagePair], list[str]]:
    """Every pair of different modalities within a subject/session.

    Off-grid pairs are returned with ``resample=True`` when ``resample`` is set (the target is
    then resampled onto the source grid when loaded), otherwise listed as skipped.
    """
    groups: dict[tuple[str, str | None], list[TrainingImage]] = {}
    for image in images:
        groups.setdefault((image.subject, image.session), []).append(image)
    pairs, skipped = [], []
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        for a, b in combinations(sorted(groups[key], key=lambda i: i.relpath), 2):
            if a.suffix == b.suffix:
                continue
            ok, why = same_grid(a.path, b.path)
            if ok:
                pairs.append(ImagePair(a, b))
            elif resample:
                pairs.append(ImagePair(a, b, resample=True))
            else:
                skipped.append(
                    f"{a.relpath} + {b.relpath}: {why}; skipped (co-register them, or pass "
                    "--resample-pairs to resample the second onto the first's grid)"
                )
    return pairs, skipped


def load_normalised(path: Path, reference: Path | None = None) -> np.ndarray:
    """An image in the model's (z, y, x) order, percentile-normalised like TUMSyn's inputs.

    With ``reference``, the image is first resampled (trilinear) onto the reference's grid.
    """
    if reference is None:
        return percentile_normalise(load_volume(path).data)
    from nibabel.processing import resample_from_to

    ref = nib.load(str(reference))
    img = resample_from_to(nib.load(str(path)), (ref.shape[:3], ref.affine), order=1)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return percentile_normalise(to_model_order(data))
