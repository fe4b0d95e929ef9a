"""``tumsyn-train {text-encoder,synthesis} BIDS_DIR OUT_DIR``: train TUMSyn's two stages.

Stage 1 (``text-encoder``) trains the text tower contrastively against a 3-D image tower; stage 2
(``synthesis``) trains the synthesis network with that text encoder frozen. Both read the dataset
through the app's BIDS index and prompt builder. Run under ``torchrun`` for several GPUs or nodes;
the same command line works in a single process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")

from .. import __version__  # noqa: E402
from . import errors  # noqa: E402
from .parsing import Parser  # noqa: E402

LOGGER = logging.getLogger("tumsyn_bids")


def _common(p: argparse.ArgumentParser, lr: float, batch_size: int) -> None:
    p.add_argument("bids_dir", type=Path, help="BIDS dataset to train on (never written to)")
    p.add_argument("out_dir", type=Path, help="checkpoints, config and logs go here")
    g = p.add_argument_group("selecting data")
    g.add_argument("--participant-label", nargs="+", metavar="LABEL")
    g.add_argument("--session-label", nargs="+", metavar="LABEL")
    g.add_argument("--bids-filter-file", type=Path, metavar="FILE", help="PyBIDS query JSON")
    g.add_argument("--bids-database-dir", type=Path, metavar="DIR")
    g.add_argument(
        "--val-participant-label",
        nargs="+",
        metavar="LABEL",
        help="subjects held out for validation (never trained on)",
    )
    g = p.add_argument_group("preprocessing (docs/preprocessing.md)")
    g.add_argument(
        "--preproc",
        action="store_true",
        help="train on the images the app's --preproc full gives the network (conformed, "
        "INU-corrected, brain-extracted), made by the app's nodes and cached in --work-dir",
    )
    g.add_argument("--skull-strip-source", default="auto", choices=["auto", "force", "skip"])
    g.add_argument("--no-inu", action="store_true", help="no N4 bias-field correction")
    g.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="nipype work folder of --preproc (default OUT_DIR/work; a tumsyn run's work "
        "folder serves both)",
    )
    g.add_argument("--omp-nthreads", type=int, default=1, help="threads of brain extraction")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    g.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    g.add_argument("--lr", type=float, default=lr, help="learning rate")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    g.add_argument("--resume", action="store_true", help="continue from OUT_DIR's last checkpoint")
    g.add_argument("--log-every", type=int, default=1, metavar="STEPS")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tumsyn-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"tumsyn-train {__version__}")
    sub = p.add_subparsers(dest="stage", required=True, parser_class=Parser)

    s1 = sub.add_parser("text-encoder", help="stage 1: contrastive text encoder")
    _common(s1, lr=5e-4, batch_size=16)
    g = s1.add_argument_group("model and schedule (defaults: the published checkpoint's)")
    g.add_argument(
        "--image-size",
        type=int,
        default=120,
        help="cube side after pad/crop (the published tower: 120)",
    )
    g.add_argument("--vision-layers", type=int, nargs=4, default=[3, 4, 6, 3], metavar="N")
    g.add_argument("--vision-width", type=int, default=256)
    g.add_argument("--embed-dim", type=int, default=768)
    g.add_argument("--text-width", type=int, default=512)
    g.add_argument("--text-layers", type=int, default=8)
    g.add_argument("--text-heads", type=int, default=8)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-fraction", type=float, default=0.2)

    s2 = sub.add_parser("synthesis", help="stage 2: synthesis network")
    _common(s2, lr=1e-4, batch_size=16)
    s2.add_argument(
        "--text-encoder", type=Path, required=True, metavar="CKPT", help="stage-1 checkpoint"
    )
    s2.add_argument("--text-heads", type=int, help="override the text encoder's head count")
    s2.add_argument("--init-from", type=Path, metavar="CKPT", help="fine-tune these weights")
    g = s2.add_argument_group("model (defaults: the published resencoder-256 model)")
    g.add_argument("--n-resblocks", type=int, default=24)
    g.add_argument("--n-feats", type=int, default=256)
    g.add_argument("--res-scale", type=float, default=0.1)
    g.add_argument("--decoder-hidden", type=int, nargs="+", default=[3072, 3072, 768, 256])
    g = s2.add_argument_group("patch sampling and schedule (defaults: the paper's)")
    g.add_argument("--scale-min", type=float, default=1.0)
    g.add_argument("--scale-max", type=float, default=3.0)
    g.add_argument(
        "--val-scale",
        type=float,
        metavar="S",
        help="draw the validation patches at this one scale (1: synthesis at the acquired "
        "resolution, what epoch-best is then chosen on); default: in [scale-min, scale-max] "
        "like the training patches",
    )
    g.add_argument("--lr-size", type=int, default=20, help="low-resolution patch side")
    g.add_argument("--sample-q", type=int, default=8000, help="query points per patch")
    g.add_argument("--patches-per-pair", type=int, default=1, help="patches per pair per epoch")
    g.add_argument(
        "--augment-blur",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="blur each LR input by a Gaussian of random sigma in [0, SIGMA] voxels "
        "(default 0: off)",
    )
    g.add_argument(
        "--augment-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="add Rician noise of random sigma in [0, SIGMA] (intensities normalised to [0, 1]) "
        "to each LR input (default 0: off)",
    )
    g.add_argument("--milestones", type=int, nargs="*", default=[100, 150, 200, 250])
    g.add_argument("--gamma", type=float, default=0.5)
    g.add_argument("--epoch-val", type=int, default=10, help="validate every N epochs")
    g.add_argument("--epoch-save", type=int, default=10, help="keep epoch-N.pth every N epochs")
    g.add_argument(
        "--resample-pairs",
        action="store_true",
        help="resample off-grid pairs onto the source grid instead of skipping them",
    )

    ex = sub.add_parser(
        "export", help="weights-only (float16) copies of trained checkpoints, ready to ship"
    )
    ex.add_argument("out_dir", type=Path, help="writes text_encoder.pt and synthesis.pth here")
    ex.add_argument("--text-encoder", type=Path, required=True, metavar="CKPT")
    ex.add_argument("--synthesis", type=Path, required=True, metavar="CKPT")
    ex.add_argument("--name", required=True, help="model name recorded in every sidecar")
    ex.add_argument("--intended-use", required=True, help="recorded in every sidecar")
    ex.add_argument("--float32", action="store_true", help="keep float32 (default: float16)")
    ex.add_argument("--quiet", action="store_true")
    return p


def _common_kwargs(args: argparse.Namespace) -> dict:
    from ..bids.layout import read_bids_filter_file

    return {
        "bids_dir": args.bids_dir,
        "out_dir": args.out_dir,
        "participant_labels": args.participant_label,
        "session_labels": args.session_label,
        "bids_filters": read_bids_filter_file(args.bids_filter_file)
        if args.bids_filter_file
        else None,
        "database_dir": args.bids_database_dir,
        "val_participants": args.val_participant_label,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "workers": args.workers,
        "device": args.device,
        "seed": args.seed,
        "resume": args.resume,
        "log_every": args.log_every,
        "progress": not args.quiet,
        "preproc": args.preproc,
        "skull_strip_source": args.skull_strip_source,
        "inu": not args.no_inu,
        "work_dir": args.work_dir,
        "omp_nthreads": args.omp_nthreads,
    }


def make_config(args: argparse.Namespace):
    from ..training.config import SynthesisTrainingConfig, TextEncoderTrainingConfig

    common = _common_kwargs(args)
    if args.stage == "text-encoder":
        return TextEncoderTrainingConfig(
            **common,
            image_size=args.image_size,
            vision_layers=tuple(args.vision_layers),
            vision_width=args.vision_width,
            embed_dim=args.embed_dim,
            text_width=args.text_width,
            text_layers=args.text_layers,
            text_heads=args.text_heads,
            weight_decay=args.weight_decay,
            warmup_fraction=args.warmup_fraction,
        )
    return SynthesisTrainingConfig(
        **common,
        text_encoder=args.text_encoder,
        text_heads=args.text_heads,
        init_from=args.init_from,
        n_resblocks=args.n_resblocks,
        n_feats=args.n_feats,
        res_scale=args.res_scale,
        decoder_hidden=tuple(args.decoder_hidden),
        scale_min=args.scale_min,
        scale_max=args.scale_max,
        val_scale=args.val_scale,
        lr_size=args.lr_size,
        sample_q=args.sample_q,
        augment_blur=args.augment_blur,
        augment_noise=args.augment_noise,
        patches_per_pair=args.patches_per_pair,
        milestones=tuple(args.milestones),
        gamma=args.gamma,
        epoch_val=args.epoch_val,
        epoch_save=args.epoch_save,
        resample_pairs=args.resample_pairs,
    )


def run(args: argparse.Namespace) -> int:
    from ..bids.layout import BIDSIndexError
    from ..model.checkpoints import CheckpointError
    from ..training.errors import NoTrainingData, TrainingDataError

    if args.stage == "export":
        from ..training.export import export_model

        try:
            export_model(
                args.text_encoder,
                args.synthesis,
                args.out_dir,
                name=args.name,
                intended_use=args.intended_use,
                half=not args.float32,
            )
        except CheckpointError as exc:
            LOGGER.error("%s", exc)
            return errors.EX_DATAERR
        return errors.EX_OK
    try:
        config = make_config(args)
        if args.stage == "text-encoder":
            from ..training.text_encoder import train_text_encoder

            train_text_encoder(config)
        else:
            from ..training.synthesis import train_synthesis

            train_synthesis(config)
    except NoTrainingData as exc:
        LOGGER.error("%s", exc)
        return errors.EX_NOINPUT
    except (BIDSIndexError, TrainingDataError, CheckpointError) as exc:
        LOGGER.error("%s", exc)
        return errors.EX_DATAERR
    except OSError as exc:
        LOGGER.error("cannot write to %s: %s", args.out_dir, exc)
        return errors.EX_CANTCREAT
    return errors.EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 and not args.quiet else logging.WARNING,
        format=f"%(levelname)s [rank {rank}]: %(message)s",
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
