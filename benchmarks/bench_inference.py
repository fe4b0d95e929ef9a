"""Speed of the inference engine against a plain re-expression of the authors' loop.

Both run in this one process on the same model and input. The "authors' loop" follows demo.py's
``_get_pred``: one patch per forward call, the whole query grid decoded at once, ``torch.no_grad``,
float64 accumulation. The engine runs with batching, chunked decoding and ``inference_mode``.

Prints wall times, the speed ratio, max |difference| between the two outputs, the model's achieved
GFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on one patch) and the dense fp32 matmul
GFLOP/s of the same device measured in the same run, as the ceiling to compare against.

    python benchmarks/bench_inference.py                       # random mid-size model, CPU
    python benchmarks/bench_inference.py --device cuda --size published --volume 120 120 120
    python benchmarks/bench_inference.py --checkpoint checkpoint.pth \
        --text-encoder checkpoint_CLIP.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from itertools import product

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tumsyn_bids.model import (
    PatchSettings,
    SynthesisConfig,
    SynthesisNetwork,
    Synthesizer,
    TextEncoder,
    TextEncoderConfig,
    load_synthesis,
    load_text_encoder,
    percentile_normalise,
)
from tumsyn_bids.model.inference import make_coord, plan_patches

SIZES = {
    # a model that runs in seconds on a laptop CPU
    "mid": (SynthesisConfig(4, 32, 64, 1.0, (256, 256, 64, 32), encoder_name="resencoder-64"), 64),
    # the published architecture (random weights): a GPU job
    "published": (SynthesisConfig(), 768),
}


def authors_loop(net, volume, text, crop, coord, overlap, device):
    """demo.py's _get_pred, re-expressed on our modules (same numerics, no engine features)."""
    shape = volume.shape
    scale = [q / c for q, c in zip(coord, crop, strict=True)]
    gap = int(crop[0] * (1 - overlap))
    starts = []
    for n, c in zip(shape, crop, strict=True):
        axis = [s for s in range(0, n, gap) if s < n - c]
        starts.append(axis + [n - c])
    grid = torch.stack(torch.meshgrid(*[make_coord(q) for q in coord], indexing="ij"), -1)
    grid = grid.reshape(1, -1, 3).to(device)
    out_shape = [int(n * s) for n, s in zip(shape, scale, strict=True)]
    pred = np.zeros(out_shape)
    count = np.zeros(out_shape)
    with torch.no_grad():
        for z, y, x in product(*starts):
            patch = torch.tensor(volume[z : z + crop[0], y : y + crop[1], x : x + crop[2]])
            patch = patch.to(device).float()[None, None]
            p = net(patch, grid, text).cpu().numpy().reshape(coord)
            oz, oy, ox = (int(a * s) for a, s in zip((z, y, x), scale, strict=True))
            pred[oz : oz + coord[0], oy : oy + coord[1], ox : ox + coord[2]] += p
            count[oz : oz + coord[0], oy : oy + coord[1], ox : ox + coord[2]] += 1
    return pred / count


def matmul_gflops(device, n=2048, repeats=10):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def patch_flops(net, crop, coord, text, device):
    grid = torch.stack(torch.meshgrid(*[make_coord(q) for q in coord], indexing="ij"), -1)
    patch = torch.rand(1, 1, *crop, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(patch, grid.reshape(1, -1, 3).to(device), text)
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--checkpoint")
    p.add_argument("--text-encoder")
    p.add_argument("--volume", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--memory-format",
        choices=["auto", "channels-last", "contiguous"],
        default="auto",
        help="engine tensor layout (auto: channels-last on CPU only)",
    )
    p.add_argument(
        "--skip-baseline", action="store_true", help="time only the engine (e.g. to sweep settings)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    if args.checkpoint:
        net = load_synthesis(args.checkpoint).model
        text_encoder = load_text_encoder(args.text_encoder).model
    else:
        config, embed = SIZES[args.size]
        net = SynthesisNetwork(config)
        for m in net.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
        text_encoder = TextEncoder(TextEncoderConfig(width=64, layers=2, heads=8, embed_dim=embed))
        torch.nn.init.normal_(text_encoder.text_projection, std=0.1)
    net.eval()
    # The baseline keeps its own untouched copy: the engine converts its network in place
    # (channels-last memory format).
    plain = copy.deepcopy(net).to(device)
    layout = {"auto": None, "channels-last": True, "contiguous": False}[args.memory_format]
    synth = Synthesizer(net, text_encoder, device, args.precision, channels_last=layout)
    prompt = "Age: 30; Gender: F; Scanner: 3.0 Siemens; Modality: T2w"
    text = synth.embed(prompt)

    rng = np.random.default_rng(0)
    volume = (rng.random(args.volume, dtype=np.float32) * 1000).astype(np.float32)
    norm = percentile_normalise(volume)
    crop = (args.patch,) * 3
    coord = (args.patch * args.scale,) * 3
    settings = PatchSettings(crop, coord, args.overlap, batch_size=args.batch_size)

    flops = patch_flops(net, crop, coord, text, device)
    n_patches = len(plan_patches(tuple(args.volume), settings))
    dense = matmul_gflops(device)

    # warm-up (allocators, oneDNN/cuDNN kernel selection) on both paths
    synth.synthesize(volume[: args.patch, : args.patch, : args.patch], prompt, settings)
    _sync(device)
    t_ref, ref = None, None
    if not args.skip_baseline:
        t = time.perf_counter()
        ref = authors_loop(plain, norm, text, crop, coord, args.overlap, device)
        _sync(device)
        t_ref = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    ours = synth.synthesize(volume, prompt, settings)
    _sync(device)
    t_ours = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    report = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.checkpoint or args.size,
        "volume": args.volume,
        "patch": crop,
        "query": coord,
        "patches": n_patches,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "memory_format": str(synth.memory_format),
        "gflop_per_patch": round(flops / 1e9, 2),
        "authors_loop_s": None if t_ref is None else round(t_ref, 3),
        "engine_s": round(t_ours, 3),
        "speedup": None if t_ref is None else round(t_ref / t_ours, 3),
        "max_abs_diff": None if ref is None else float(np.nanmax(np.abs(ref - ours))),
        "authors_loop_gflops": None if t_ref is None else round(flops * n_patches / t_ref / 1e9, 1),
        "engine_gflops": round(flops * n_patches / t_ours / 1e9, 1),
        "engine_peak_gpu_mib": None if peak is None else round(peak),
        "dense_matmul_gflops": round(dense, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
