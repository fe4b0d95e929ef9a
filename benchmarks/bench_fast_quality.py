"""What each candidate setting of ``--speed fast`` costs and buys, against ``default``.

Issue 21 item 2: ``fast`` may change the output; its cost is measured as PSNR against
``default``'s output inside the brain on a simulated head (``tumsyn-simulate --with-head``, with
its exact brain mask), for the demo model and a published-size random model. This script runs
``default`` once (float32, the fused network, foreground-only patches, output decoded next to
the mask only, as ``bench_inference.py --whole-head`` runs it) and then every setting given as
``MIN_FOREGROUND:OVERLAP`` (``min_foreground`` as in
:class:`~tumsyn_bids.model.inference.PatchSettings`: patches with fewer mask voxels than this
fraction of the patch are skipped while every mask voxel stays covered; ``overlap`` the patch
overlap, 0.5 in the authors' loop). For each: wall time, speed-up over ``default`` in the same
run, patches computed, points decoded, PSNR against ``default`` inside the brain (peak =
``default``'s range there) and max |Δ| there. All in one process on the CPU in float32 (bf16 is
CUDA only; its cost is measured by ``bench_inference.py --whole-head --device cuda``).

    python benchmarks/bench_fast_quality.py --size demo --voxel-size 2 \
        --settings 0.01:0.5 0.02:0.5 0.05:0.5 0.1:0.5 0:0.25
    python benchmarks/bench_fast_quality.py --size published --patch 12 --voxel-size 5 \
        --settings 0.01:0.5 0.02:0.5 0.1:0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# As the tumsyn commands do (tumsyn_bids/cli/__init__.py): before torch (and OpenMP) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import (  # noqa: E402
    PROMPT,
    SIZES,
    head_case,
    head_record,
    psnr_against,
)

from tumsyn_bids.model import PatchSettings, Synthesizer  # noqa: E402
from tumsyn_bids.model.speed import FAST_MIN_FOREGROUND, preset  # noqa: E402


def parse_setting(text: str) -> tuple[float, float]:
    """``"0.1:0.5"`` -> (min_foreground 0.1, overlap 0.5); ValueError on anything else."""
    try:
        fg, overlap = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"setting {text!r}: expected MIN_FOREGROUND:OVERLAP, e.g. 0.1:0.5"
        ) from None
    PatchSettings((8, 8, 8), overlap=overlap, min_foreground=fg)  # range checks
    return fg, overlap


def sweep(args) -> dict:
    net, text_encoder, model_name, side, crop, volume, brain = head_case(args)
    device = torch.device("cpu")
    synth = Synthesizer(net, text_encoder, device, "fp32", fused=True)
    base = preset("default").engine_options(masked_output=True)

    def settings(fg: float, overlap: float) -> PatchSettings:
        options = {**base, "min_foreground": fg}
        return PatchSettings(crop, overlap=overlap, batch_size=args.batch_size, **options)

    synth.synthesize(volume[:side, :side, :side], PROMPT, settings(0.0, 0.5))  # warm-up
    load_before = os.getloadavg()

    def run(fg: float, overlap: float, against: np.ndarray | None = None) -> tuple:
        t = time.perf_counter()
        out = synth.synthesize(volume, PROMPT, settings(fg, overlap), mask=brain)
        seconds = time.perf_counter() - t
        stats = synth.last_stats
        row = {
            "min_foreground": fg,
            "overlap": overlap,
            "seconds": round(seconds, 3),
            "patches_planned": stats.planned,
            "patches_computed": stats.computed,
            "points_decoded": int(stats.decoded),
        }
        if against is not None:
            row["speedup_vs_default"] = round(default_row["seconds"] / seconds, 3)
            row["psnr_vs_default"] = round(psnr_against(out, against, brain), 2)
            row["max_abs_diff_in_brain"] = float(np.abs(out - against)[brain].max())
        print(json.dumps(row), flush=True)  # as it comes: a long sweep can be cut short
        return out, row

    default, default_row = run(0.0, args.overlap)
    rows = [run(fg, overlap, default)[1] for fg, overlap in args.settings]
    load_after = os.getloadavg()
    return {
        "case": "fast-quality",
        "device": "cpu",
        **head_record(args, model_name, volume, brain, crop, (load_before, load_after)),
        "default": default_row,
        "settings": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=[*SIZES, "demo"], default="demo")
    p.add_argument("--checkpoint")
    p.add_argument("--text-encoder")
    p.add_argument("--voxel-size", type=float, default=1.0, help="the head's voxel size, mm")
    p.add_argument("--head-dir", help="reuse (or keep) the simulated head in this folder")
    p.add_argument("--patch", type=int, help="patch side (default: per model)")
    p.add_argument("--overlap", type=float, default=0.5, help="default's overlap")
    p.add_argument("--batch-size", type=int, help="default: the commands' default")
    p.add_argument(
        "--settings",
        type=parse_setting,
        nargs="+",
        default=[(FAST_MIN_FOREGROUND, 0.5)],
        metavar="MIN_FOREGROUND:OVERLAP",
        help=f"the settings to measure against default (default: {FAST_MIN_FOREGROUND:g}:0.5, "
        "the fast preset)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = sweep(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
