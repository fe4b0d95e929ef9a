"""``tumsyn-eval DATASET OUT_DIR``: score a model on simulated subjects against ground truth.

DATASET must be written by ``tumsyn-simulate`` (it needs the stored tissue maps). Writes
``scores.tsv`` (per subject, task and method), ``summary.tsv``, ``te_check.tsv`` and
``evaluation.json`` (the summary, each task's PSNR margin over the better baseline, the TE
check, and which weights were scored), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")

from .. import __version__  # noqa: E402
from . import errors  # noqa: E402
from .parsing import (  # noqa: E402
    Parser,  # noqa: E402
    UsageError,
    add_batch_size_argument,
    add_patch_size_argument,
    add_speed_arguments,
    add_weight_arguments,
    batch_size,
    patch_size,
    speed,
    weights_or_demo,
)

LOGGER = logging.getLogger("tumsyn_bids")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tumsyn-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, help="a dataset written by tumsyn-simulate")
    p.add_argument("out_dir", type=Path, help="where the score tables go")
    p.add_argument("--version", action="version", version=f"tumsyn-eval {__version__}")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["T1w:T2w", "T1w:FLAIR", "T2w:T1w"],
        metavar="SRC:TGT",
        help="source:target pairs to score",
    )
    p.add_argument("--participant-label", nargs="+", metavar="LABEL")
    add_weight_arguments(p)
    p.add_argument("--text-heads", type=int)
    add_patch_size_argument(p)
    add_batch_size_argument(p)
    add_speed_arguments(p)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-te-check", action="store_true", help="skip the echo-time check")
    p.add_argument("--save-images", action="store_true", help="also write predictions and truth")
    p.add_argument("--quiet", action="store_true")
    return p


def markdown(summary, margin: dict[str, float]) -> str:
    lines = [
        "| task | method | PSNR (dB) | SSIM | n |",
        "|---|---|---|---|---|",
    ]
    for row in summary.itertuples(index=False):
        lines.append(
            f"| {row.task} | {row.method} | {row.psnr_mean:.2f} ± {row.psnr_std:.2f} | "
            f"{row.ssim_mean:.3f} ± {row.ssim_std:.3f} | {row.psnr_count} |"
        )
    lines.append("")
    lines += [f"- {task}: model − better baseline = {m:+.2f} dB" for task, m in margin.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.benchmark import (
        Patching,
        Task,
        evaluate,
        margins,
        summarise,
        te_check,
        te_followed,
    )
    from ..model import (
        InputImageError,
        Synthesizer,
        load_synthesis,
        load_text_encoder,
    )
    from ..model.checkpoints import CheckpointError
    from ..model.inference import resolve_device
    from ..model.metadata import checkpoint_metadata, file_sha256
    from ..model.speed import preset

    try:
        tasks = [Task.parse(t) for t in args.tasks]
        speed_name = speed(args.speed, args.reference)
        checkpoint, text_encoder = weights_or_demo(args.checkpoint, args.text_encoder)
        device = resolve_device(args.device)
        synth = Synthesizer(
            load_synthesis(checkpoint).model,
            load_text_encoder(text_encoder, heads=args.text_heads).model,
            device=device,
            **preset(speed_name).synthesizer_options(device.type),
        )
        patch_ijk = patch_size(args.patch_size, checkpoint)
        batches = batch_size(args.batch_size, patch_ijk)
    except (UsageError, ValueError, RuntimeError) as exc:  # RuntimeError: no CUDA device
        LOGGER.error("%s", exc)
        return errors.EX_USAGE
    except CheckpointError as exc:
        LOGGER.error("%s", exc)
        return errors.EX_NOINPUT
    if not (args.dataset / "derivatives" / "simulation").is_dir():
        LOGGER.error(
            "%s has no derivatives/simulation: evaluation needs a dataset written by "
            "tumsyn-simulate (with its tissue maps)",
            args.dataset,
        )
        return errors.EX_NOINPUT
    settings = Patching(patch_size=tuple(patch_ijk), batch_size=batches, speed=speed_name)
    labels = args.participant_label
    save = args.out_dir / "images" if args.save_images else None
    try:
        scores = evaluate(args.dataset, synth, tasks, settings, labels, save_dir=save)
    except InputImageError as exc:
        LOGGER.error("%s", exc)
        return errors.EX_DATAERR
    if scores.empty:
        LOGGER.error("no subject in %s has both images of any task %s", args.dataset, args.tasks)
        return errors.EX_NOINPUT
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(scores)
    margin = margins(scores)
    scores.to_csv(args.out_dir / "scores.tsv", sep="\t", index=False)
    summary.to_csv(args.out_dir / "summary.tsv", sep="\t", index=False)
    report = {
        "dataset": str(args.dataset),
        "model": {
            "synthesis": {"file": checkpoint.name, "sha256": file_sha256(checkpoint)},
            "text_encoder": {"file": text_encoder.name, "sha256": file_sha256(text_encoder)},
            "name": checkpoint_metadata(checkpoint).get("model_name", "TUMSyn"),
        },
        "patch_size": list(patch_ijk),
        "batch_size": batches,
        "speed": speed_name,
        "precision": synth.precision,
        "summary": summary.to_dict(orient="records"),
        "psnr_margin_over_better_baseline_db": margin,
    }
    if not args.no_te_check:
        check = te_check(args.dataset, synth, settings, labels)
        check.to_csv(args.out_dir / "te_check.tsv", sep="\t", index=False)
        report["te_check"] = te_followed(check)
    (args.out_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(summary, margin))
    if "te_check" in report:
        t = report["te_check"]
        print(
            f"- TE 80 -> 140 ms raises CSF/WM: ground truth in {t['truth_rises']}/{t['subjects']}"
            f" subjects, model in {t['model_rises']}/{t['subjects']}"
        )
    return errors.EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s"
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
