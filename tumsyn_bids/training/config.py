"""Settings of the two training stages, with the paper's values as defaults.

Plain dataclasses: the CLI fills them, the stage runners read them, and each run stores them in
its checkpoints and ``config.json`` so that a run can be resumed and its model rebuilt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CommonConfig:
    """Options shared by both stages."""

    bids_dir: Path
    out_dir: Path
    participant_labels: list[str] | None = None
    session_labels: list[str] | None = None
    bids_filters: dict[str, dict[str, Any]] | None = None
    #: Subjects held out for validation (never trained on).
    val_participants: list[str] | None = None
    epochs: int = 300
    #: Stop after this many optimiser steps in total (None: run every epoch).
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 1e-4
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    log_every: int = 1
    progress: bool = True
    database_dir: Path | None = None
    #: ``--preproc``: train on the app's preprocessed images (conformed, INU-corrected,
    #: brain-extracted), made by the app's nodes in ``work_dir`` (default ``out_dir/work``).
    preproc: bool = False
    skull_strip_source: str = "auto"
    inu: bool = True
    work_dir: Path | None = None
    omp_nthreads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TextEncoderTrainingConfig(CommonConfig):
    """Stage 1: CLIP-style contrastive training of the 3-D image tower and the text tower."""

    lr: float = 5e-4
    weight_decay: float = 0.1
    adam_eps: float = 1e-8
    #: Fraction of all steps spent warming the learning rate up (the authors use 20 %).
    warmup_fraction: float = 0.2
    #: Images are centre padded/cropped to this cube (voxels) after percentile normalisation.
    #: The defaults are the sizes of the published checkpoint_CLIP.pt (a 120-voxel cube, image
    #: tower width 256); the paper's text and the authors' training yaml say 128 and 128.
    image_size: int = 120
    vision_layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    vision_width: int = 256
    embed_dim: int = 768
    text_width: int = 512
    text_layers: int = 8
    text_heads: int = 8


@dataclass
class SynthesisTrainingConfig(CommonConfig):
    """Stage 2: the synthesis network on co-registered modality pairs, text encoder frozen."""

    text_encoder: Path | None = None
    text_heads: int | None = None
    #: Start from these weights (e.g. the official checkpoint.pth) instead of random ones.
    init_from: Path | None = None
    n_resblocks: int = 24
    n_feats: int = 256
    res_scale: float = 0.1
    decoder_hidden: tuple[int, ...] = (3072, 3072, 768, 256)
    #: The authors' sampling: a random cube of ``lr_size * s`` voxels, s in [scale_min, scale_max]
    #: rounded to 0.1, downsampled to ``lr_size``; ``sample_q`` query points per patch.
    scale_min: float = 1.0
    scale_max: float = 3.0
    #: Draw every validation patch at this one scale instead of in [scale_min, scale_max]; 1
    #: scores synthesis at the acquired resolution, which a mixed-scale score can hide.
    val_scale: float | None = None
    lr_size: int = 20
    sample_q: int = 8000
    #: Upper bounds of the random input degradation (see :mod:`.augmentation`): Gaussian blur
    #: sigma in LR voxels and Rician noise sigma on the [0, 1] intensity scale. 0 = off.
    augment_blur: float = 0.0
    augment_noise: float = 0.0
    #: Random patches drawn from every pair per epoch.
    patches_per_pair: int = 1
    milestones: tuple[int, ...] = (100, 150, 200, 250)
    gamma: float = 0.5
    epoch_val: int = 10
    epoch_save: int = 10
    resample_pairs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
