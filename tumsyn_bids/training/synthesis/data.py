"""Stage-2 data: modality pairs from the BIDS index, their prompts embedded once by the frozen text
encoder, and their volumes read, normalised and cropped into memory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...model.checkpoints import load_text_encoder
from ...model.inference import InputImageError
from ...model.metadata import file_sha256
from ...model.patches import crop_to_source
from ...model.text_encoder import TextEncoder
from ...model.tokenizer import PromptTooLongError, tokenize
from ..common import progress, select_images
from ..config import SynthesisTrainingConfig
from ..data import ImagePair, load_normalised, modality_pairs
from ..distributed import DistributedContext
from ..errors import NoTrainingData, TrainingDataError
from .sampling import PairVolumes, Sampling, validation_examples

LOGGER = logging.getLogger(__name__)


def embed_prompts(
    encoder: TextEncoder, prompts: Sequence[str], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Every distinct prompt's (C,) float32 embedding, computed once on the CPU.

    Embedding exactly like :meth:`tumsyn_bids.model.Synthesizer.embed` (same tokenizer, same
    pooling) matters: the network learns the embeddings the app will later feed it.
    """
    unique = list(dict.fromkeys(prompts))
    encoder = encoder.cpu().eval()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():  # not inference_mode: the table feeds layers that save it for backward
        for i in range(0, len(unique), batch_size):
            chunk = unique[i : i + batch_size]
            tokens = tokenize(chunk, encoder.config.context_length)
            for prompt, emb in zip(chunk, encoder(tokens).float(), strict=True):
                out[prompt] = emb.clone()
    return out


def _check_prompts(pairs: Sequence[ImagePair], context_length: int) -> None:
    """Fail before any training if a prompt does not fit the text encoder, naming its image."""
    for pair in pairs:
        for image in (pair.source, pair.target):
            try:
                tokenize(image.prompt, context_length)
            except PromptTooLongError as exc:
                raise TrainingDataError(f"{image.relpath}: {exc}") from exc


def load_pairs(
    pairs: Sequence[ImagePair], prompt_ids: dict[str, int], show_progress: bool = False
) -> list[PairVolumes]:
    """Read, normalise and crop every pair once; sampling then never touches the disk.

    Cropping here is what the authors do per sample; it is idempotent, so sampling from the
    cropped arrays gives the same patches while skipping a pass over the full volume. An image
    that is in several pairs (every image is, and with several runs per modality in many) is
    read once: the pairs hold views of one array, so memory grows with images, not pairs.
    """
    volumes: dict[tuple[Path, Path | None], np.ndarray] = {}

    def volume(path: Path, reference: Path | None = None) -> np.ndarray:
        if (path, reference) not in volumes:
            volumes[path, reference] = load_normalised(path, reference=reference)
        return volumes[path, reference]

    out = []
    for pair in progress(pairs, show_progress, desc="loading pairs", unit="pair"):
        name = f"{pair.source.relpath} + {pair.target.relpath}"
        try:
            reference = pair.source.path if pair.resample else None
            src, tgt, _ = crop_to_source(
                volume(pair.source.path), volume(pair.target.path, reference)
            )
        except (InputImageError, ValueError) as exc:
            raise TrainingDataError(f"{name}: {exc}") from exc
        out.append(
            PairVolumes(
                source=src,
                target=tgt,
                source_prompt=prompt_ids[pair.source.prompt],
                target_prompt=prompt_ids[pair.target.prompt],
                name=name,
            )
        )
    return out


def _select_pairs(
    config: SynthesisTrainingConfig, ctx: DistributedContext | None = None
) -> tuple[list[ImagePair], list[ImagePair]]:
    train_images, val_images = select_images(config, ctx)
    pairs, skipped = modality_pairs(train_images, config.resample_pairs)
    val_pairs, val_skipped = modality_pairs(val_images, config.resample_pairs)
    for line in skipped + val_skipped:
        LOGGER.warning("pair skipped: %s", line)
    if not pairs:
        raise NoTrainingData(
            f"{config.bids_dir}: no co-registered pairs of two modalities within one subject and "
            f"session among {len(train_images)} training images"
            + (f" ({len(skipped)} off-grid pair(s) skipped, see above)" if skipped else "")
        )
    if val_images and not val_pairs:
        LOGGER.warning(
            "the validation subjects have no usable modality pairs; validating on nothing"
        )
    return pairs, val_pairs


@dataclass(frozen=True)
class PreparedData:
    """Everything sampling needs, in memory: volumes, fixed validation patches, prompt table."""

    train: list[PairVolumes]
    n_val_pairs: int
    val_examples: list[dict[str, torch.Tensor]]
    prompts: list[str]
    #: The modality (BIDS suffix) of each prompt: a prompt names its modality, so it has one.
    prompt_suffixes: list[str]
    #: (n_prompts, embed_dim) float32 on the CPU; ``src_prompt``/``tgt_prompt`` index its rows.
    table: torch.Tensor
    text_encoder: dict[str, Any]


def prepare_data(
    config: SynthesisTrainingConfig,
    sampling: Sampling,
    show_progress: bool = False,
    ctx: DistributedContext | None = None,
) -> PreparedData:
    """Pairs from the BIDS index, their prompts embedded, their volumes loaded and cropped
    (with ``config.preproc``, the preprocessed volumes: :func:`~..common.select_images`)."""
    pairs, val_pairs = _select_pairs(config, ctx)
    text = load_text_encoder(config.text_encoder, heads=config.text_heads)
    encoder: TextEncoder = text.model
    _check_prompts([*pairs, *val_pairs], encoder.config.context_length)
    embeddings = embed_prompts(
        encoder, [i.prompt for p in [*pairs, *val_pairs] for i in (p.source, p.target)]
    )
    record = {
        "path": str(Path(config.text_encoder).resolve()),
        "sha256": file_sha256(config.text_encoder),
        "heads": int(text.extra["transformer_heads"]),
        "embed_dim": int(encoder.config.embed_dim),
    }
    del text, encoder  # frozen and no longer needed: only the embeddings are
    prompts = list(embeddings)
    suffixes = {i.prompt: i.suffix for p in [*pairs, *val_pairs] for i in (p.source, p.target)}
    prompt_ids = {p: i for i, p in enumerate(prompts)}
    val_data = load_pairs(val_pairs, prompt_ids, show_progress)
    return PreparedData(
        train=load_pairs(pairs, prompt_ids, show_progress),
        n_val_pairs=len(val_data),
        val_examples=validation_examples(val_data, sampling, config.seed, config.val_scale),
        prompts=prompts,
        prompt_suffixes=[suffixes[p] for p in prompts],
        table=torch.stack([embeddings[p] for p in prompts]),
        text_encoder=record,
    )
