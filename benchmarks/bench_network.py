"""Micro-benchmarks of the network-level speed-ups in ``tumsyn_bids.model.fused`` (issue 21).

Each case times a plain path and its alternative on the same inputs in one process, alternating
the two in every repeat so that load from other processes hits both alike; it prints min and
median seconds per patch, the speed ratio plain/alternative of the minima and of the medians,
and the max |difference| of the outputs. Nothing here is a test: the equality checks live in
``tests/model/test_fused.py``.

Models: ``demo`` (the bundled model, 20-voxel patches, 2 per pass as the engine's default),
``mid`` (bench_inference.py's random mid-size model, 32-voxel patches) and ``published`` (the
published architecture with random weights; a 60³ patch costs ~44 TFLOP, so pick a small
``--patch`` on a CPU).

    python benchmarks/bench_network.py --model demo --cases fold
    python benchmarks/bench_network.py --model mid --repeats 7 --threads 2 --json mid.json
    python benchmarks/bench_network.py --model published --patch 12 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F

from tumsyn_bids.model import SynthesisConfig, SynthesisNetwork, load_synthesis
from tumsyn_bids.model import fused as fused_module
from tumsyn_bids.model.bundled import demo_weights
from tumsyn_bids.model.fused import fuse_for_inference
from tumsyn_bids.model.inference import make_coord

#: model -> (config or None for the bundled weights, default patch side, default batch size)
MODELS = {
    "demo": (None, 20, 2),
    "mid": (
        SynthesisConfig(4, 32, 64, 1.0, (256, 256, 64, 32), encoder_name="resencoder-64"),
        32,
        1,
    ),
    "published": (SynthesisConfig(), 60, 1),
}


#: The model name of this run, for cases that need more than the network (the text encoder).
MODELS_ARGS: dict[str, str] = {}


def build(model: str) -> SynthesisNetwork:
    config, _, _ = MODELS[model]
    if config is None:
        return load_synthesis(demo_weights()[0]).model.eval()
    torch.manual_seed(0)
    net = SynthesisNetwork(config)
    for m in net.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
            m.weight.data.uniform_(0.6, 1.4)
            m.bias.data.normal_(0, 0.1)
    return net.eval()


def grid(side: int, batch: int) -> torch.Tensor:
    """(B, side³, 3) cell-centre coordinates, as the engine queries a cubic patch."""
    c = make_coord(side)
    g = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(1, -1, 3)
    return g.expand(batch, -1, -1).contiguous()


def compare(
    name: str, plain: Callable[[], torch.Tensor], alt: Callable[[], torch.Tensor], repeats: int
) -> dict:
    """Time ``plain`` and ``alt`` alternately ``repeats`` times after one warm-up each.

    Wall time is what a user waits; process CPU time (all threads) is far less disturbed by
    other jobs on a shared machine, and with one thread it is the cleanest ratio.
    """
    with torch.inference_mode():
        a, b = plain(), alt()
        diff = (a.float() - b.float()).abs().max().item()
        wall: dict[str, list[float]] = {"plain": [], "alt": []}
        cpu: dict[str, list[float]] = {"plain": [], "alt": []}
        for _ in range(repeats):
            for key, fn in (("plain", plain), ("alt", alt)):
                _sync()
                t, c = time.perf_counter(), time.process_time()
                fn()
                _sync()
                wall[key].append(time.perf_counter() - t)
                cpu[key].append(time.process_time() - c)

    def stats(times):
        return {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()}

    w, c = stats(wall), stats(cpu)
    row = {
        "case": name,
        "wall_s": w,
        "cpu_s": c,
        "wall_ratio_min": w["plain"]["min"] / w["alt"]["min"],
        "wall_ratio_median": w["plain"]["median"] / w["alt"]["median"],
        "cpu_ratio_min": c["plain"]["min"] / c["alt"]["min"],
        "max_abs_diff": diff,
        "output_max_abs": a.float().abs().max().item(),
    }
    print(
        f"{name:44s} wall {w['plain']['min']:.4f} -> {w['alt']['min']:.4f} s  "
        f"ratio {row['wall_ratio_min']:.2f} (median {row['wall_ratio_median']:.2f}) | cpu "
        f"{c['plain']['min']:.4f} -> {c['alt']['min']:.4f} s ratio {row['cpu_ratio_min']:.2f} | "
        f"max|d| {diff:.1e}",
        flush=True,
    )
    return row


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def module_convolutions():
    """Make model.fused call each module's own forward (PyTorch's kernel choice)."""
    saved = fused_module.conv3d
    fused_module.conv3d = lambda x, conv, padding=None: F.conv3d(
        x, conv.weight, conv.bias, padding=padding or conv.padding, groups=conv.groups
    )
    try:
        yield
    finally:
        fused_module.conv3d = saved


def case_fold(net, fused, patch, text, repeats) -> list[dict]:
    """BatchNorm and res_scale folded; then also oneDNN called directly."""
    with module_convolutions():
        rows = [
            compare(
                "encoder: BN/res_scale folded",
                lambda: net.encoder(patch),
                lambda: fused.encoder(patch),
                repeats,
            )
        ]
    rows.append(
        compare(
            "encoder: folded + direct oneDNN",
            lambda: net.encoder(patch),
            lambda: fused.encoder(patch),
            repeats,
        )
    )
    return rows


def case_fusion(net, fused, patch, text, repeats) -> list[dict]:
    """The fusion block as the authors wrote it vs FastFusionBlock, on the encoder's output."""
    with torch.inference_mode():
        x = net.encoder(patch)
    return [
        compare(
            "fusion block: voxel-major fast path",
            lambda: net.fusion(x, text),
            lambda: fused.fusion[0](x, text),
            repeats,
        )
    ]


def shifted_depthwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3x3 convolution as 27 shifted multiply-adds on a channels-last volume."""
    b, c, d, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1, 1, 1)).permute(0, 2, 3, 4, 1)
    out = torch.zeros(b, d, h, w, c, dtype=x.dtype)
    taps = weight.reshape(c, 27).t().contiguous()
    for k, (dz, dy, dx) in enumerate(product(range(3), repeat=3)):
        out.addcmul_(xp[:, dz : dz + d, dy : dy + h, dx : dx + w], taps[k])
    return out.permute(0, 4, 1, 2, 3)


def case_depthwise(net, fused, patch, text, repeats) -> list[dict]:
    """The fusion block's depthwise 3x3x3 convolution at its shape: layouts, kernels, batches."""
    if patch.device.type != "cpu":
        print("depthwise: CPU only (oneDNN kernels), skipped on", patch.device)
        return []
    conv = net.fusion.block[0].mlp.dwconv
    hidden = conv.weight.shape[0]
    batch, side = patch.shape[0], patch.shape[-1]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, hidden, side, side, side, generator=gen)
    cl = torch.channels_last_3d
    x_cl = x.contiguous(memory_format=cl)
    w_cl = conv.weight.detach().contiguous(memory_format=cl)
    w = conv.weight.detach().contiguous()
    one = [1, 1, 1]
    onednn = torch.ops.aten.mkldnn_convolution
    rows = [
        compare(
            "depthwise: contiguous -> channels-last",
            lambda: F.conv3d(x, w, padding=1, groups=hidden),
            lambda: F.conv3d(x_cl, w_cl, padding=1, groups=hidden),
            repeats,
        ),
        compare(
            "depthwise: channels-last -> direct oneDNN",
            lambda: F.conv3d(x_cl, w_cl, padding=1, groups=hidden),
            lambda: onednn(x_cl, w_cl, None, one, one, one, hidden),
            repeats,
        ),
        compare(
            "depthwise: channels-last -> 27 shifted FMAs",
            lambda: F.conv3d(x_cl, w_cl, padding=1, groups=hidden),
            lambda: shifted_depthwise(x_cl, w),
            repeats,
        ),
    ]
    if batch > 1:
        # one pass over the batch vs one patch at a time (ratio > 1: batching pays)
        rows.append(
            compare(
                f"depthwise: {batch} x batch 1 -> batch {batch} (oneDNN)",
                lambda: torch.cat(
                    [
                        onednn(x_cl[i : i + 1], w_cl, None, one, one, one, hidden)
                        for i in range(batch)
                    ]
                ),
                lambda: onednn(x_cl, w_cl, None, one, one, one, hidden),
                repeats,
            )
        )
    return rows


def case_decode(net, fused, patch, text, repeats) -> list[dict]:
    """The decoder at scales 1, 2 and 3 (1, 8 and 27 queries per feature voxel).

    plain: SynthesisNetwork.decode_chunked (grid_sample, query-wise first layer); then the
    FastDecoder in both orders (gathered sampling; first layer per query or per feature voxel).
    """
    with torch.inference_mode():
        feats = fused.features(patch, text)
    batch, side = patch.shape[0], patch.shape[-1]
    chunk = 1 << 16
    scales = (1, 2, 3) if patch.device.type == "cpu" or side <= 32 else (1, 2)
    rows = []
    for scale in scales:
        coords = grid(side * scale, batch).to(patch.device)
        auto = fused.imnet.factorised_pays(coords.shape[1], side**3)
        for order in ("plain", "factorised"):
            rows.append(
                compare(
                    f"decode x{scale}: -> fast {order}"
                    + (" (auto)" if auto == (order == "factorised") else ""),
                    lambda c=coords: net.decode_chunked(feats, c, chunk),
                    lambda c=coords, o=order: fused.imnet(feats, c, chunk, order=o),
                    repeats,
                )
            )
    return rows


def case_engine(net, fused, patch, text, repeats) -> list[dict]:
    """Whole-volume synthesis in the engine's default mode: Synthesizer vs Synthesizer(fused).

    A random volume of 2 patches per axis minus the overlap (3 x 3 x 3 patches at overlap
    0.5), scales 1 and 2, the batch size of this run.
    """
    from tumsyn_bids.model import (
        PatchSettings,
        Synthesizer,
        TextEncoder,
        TextEncoderConfig,
        load_text_encoder,
    )

    if MODELS_ARGS["model"] == "demo":
        encoder = load_text_encoder(demo_weights()[1]).model
    else:
        torch.manual_seed(0)
        cfg = TextEncoderConfig(width=64, layers=2, heads=8, embed_dim=net.config.out_dim)
        encoder = TextEncoder(cfg)
    batch, side = patch.shape[0], patch.shape[-1]
    dev = str(patch.device)
    plain = Synthesizer(copy.deepcopy(net), copy.deepcopy(encoder), dev)
    fast = Synthesizer(copy.deepcopy(net), copy.deepcopy(encoder), dev, fused=True)
    gen = np.random.default_rng(0)
    volume = gen.random((2 * side,) * 3, dtype=np.float32) * 1000
    prompt = "Age: 30; Gender: F; Scanner: 3.0 Siemens; Modality: T2w"
    rows = []
    for scale in (1, 2):
        settings = PatchSettings((side,) * 3, (side * scale,) * 3, batch_size=batch)

        def run(synth, s=settings):
            return torch.from_numpy(synth.synthesize(volume, prompt, s))

        rows.append(
            compare(
                f"engine x{scale}: Synthesizer -> fused=True",
                lambda r=run: r(plain),
                lambda r=run: r(fast),
                repeats,
            )
        )
    return rows


CASES = {
    "fold": case_fold,
    "fusion": case_fusion,
    "depthwise": case_depthwise,
    "decode": case_decode,
    "engine": case_engine,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="demo")
    p.add_argument("--patch", type=int, help="patch side in voxels (default: the model's)")
    p.add_argument("--batch-size", type=int, help="patches per pass (default: the model's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    MODELS_ARGS["model"] = args.model
    torch.set_num_threads(args.threads)
    _, side, batch = MODELS[args.model]
    side = args.patch or side
    batch = args.batch_size or batch
    device = torch.device(args.device)
    # the engine's layouts: channels-last on the CPU, contiguous on CUDA (TF32 off: exact)
    cl = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    net = build(args.model).to(device, memory_format=cl)
    fused = fuse_for_inference(net).to(device, memory_format=cl)
    gen = torch.Generator().manual_seed(0)
    patch = torch.rand(batch, 1, side, side, side, generator=gen).to(device)
    patch = patch.contiguous(memory_format=cl)
    text = torch.randn(batch, net.config.out_dim, generator=gen).to(device)
    print(
        f"model {args.model}, patch {side}³, batch {batch}, {device}, "
        f"threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}; times are per pass of {batch} patch(es)",
        flush=True,
    )
    rows = []
    for name in args.cases:
        rows += CASES[name](net, fused, patch, text, args.repeats)
    if args.json:
        report = {
            "model": args.model,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "patch": side,
            "batch": batch,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "rows": rows,
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
