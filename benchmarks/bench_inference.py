"""Speed of the inference engine against a plain re-expression of the authors' loop.

Everything runs in this one process on the same model, input and device. The "authors' loop"
follows demo.py's ``_get_pred``: one patch per forward call, the whole query grid decoded at
once, ``torch.no_grad``, float64 accumulation, no mask.

Two cases:

* a random volume (default): the engine in its plain default mode against the authors' loop;
* ``--whole-head``: a simulated 1 mm head (``tumsyn-simulate --with-head``) with its exact brain
  mask, and every ``--speed`` preset: the authors' loop (float32; on CUDA without TF32, as the
  engine's float32 runs), ``reference`` (max |Δ| against the
  authors' output), ``default`` (max |Δ| inside the brain; patches computed and skipped; the
  output is taken as masked, so only voxels next to the brain are decoded) and ``fast`` (PSNR
  against ``default`` inside the brain, peak = the range of ``default``'s output there; bf16 on
  CUDA). For each: wall time, speed-up over the authors' loop of the same run, achieved model
  FLOP/s, peak memory (RSS on the CPU, reset between modes; allocated memory on CUDA). The
  device's dense matmul FLOP/s is measured in the same run.

"Model FLOP/s" counts the FLOPs of the plain network (``torch.utils.flop_counter`` on one
patch: encoder and fusion block per patch, decoder per query point) for the work each mode
did (patches encoded, points decoded), divided by its wall time; the fused network's
factorised decoder does fewer, so its figure is an effective rate.

    python benchmarks/bench_inference.py                       # random mid-size model, CPU
    python benchmarks/bench_inference.py --whole-head --json head.json       # mid, CPU
    python benchmarks/bench_inference.py --whole-head --device cuda --size published
    python benchmarks/bench_inference.py --checkpoint checkpoint.pth \
        --text-encoder checkpoint_CLIP.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

# As the tumsyn commands do (tumsyn_bids/cli/__init__.py): before torch (and OpenMP) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from tumsyn_bids.model import (  # noqa: E402
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
from tumsyn_bids.model.inference import (  # noqa: E402
    exact_float32,
    make_coord,
    plan_patches,
    select_patches,
)
from tumsyn_bids.model.speed import preset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = REPO / "tests" / "data" / "official-architecture.json"

SIZES = {
    # for the benchmark's own test: runs in seconds
    "tiny": (SynthesisConfig(1, 8, 16, 1.0, (32, 16), encoder_name="resencoder-64"), 16),
    # a model that runs in minutes on a laptop CPU
    "mid": (SynthesisConfig(4, 32, 64, 1.0, (256, 256, 64, 32), encoder_name="resencoder-64"), 64),
    # the published architecture (random weights as tests/model/test_checkpoints.py draws
    # them): a GPU job
    "published": (SynthesisConfig(), 768),
}
#: Patch side per model when --patch is not given (the demo model's training patch, else 32 on
#: the CPU's mid model and the authors' 60 for the published one).
PATCH = {"tiny": 12, "mid": 32, "published": 60, "demo": 20}
PROMPT = "Age: 30; Gender: F; Scanner: 3.0 Siemens; Modality: T2w"


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


def matmul_gflops(device, n=2048, repeats=10, dtype=torch.float32):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
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


def split_flops(net, crop, text, device) -> tuple[int, float]:
    """FLOPs of the plain network for one patch's features, and per decoded query point."""
    patch = torch.rand(1, 1, *crop, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        feats = net.features(patch, text)
    features = counter.get_total_flops()
    points = 4096
    grid = torch.rand(1, points, 3, device=device) * 2 - 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.decode(feats, grid)
    return features, counter.get_total_flops() / points


def random_published(generator: torch.Generator) -> SynthesisNetwork:
    """The published architecture with random weights drawn as tests/model/test_checkpoints.py
    draws them from tests/data/official-architecture.json (convolution and linear weights
    N(0, 1/fan_in), vectors N(0, 0.02^2), running variances U(0.5, 1.5))."""
    official = json.loads(OFFICIAL.read_text())
    state = {}
    for entry in official["stage2_synthesis"]["state_dict"]:
        key, shape = entry["key"], entry["shape"]
        if entry["dtype"] == "int64":
            state[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            fan_in = max(1, math.prod(shape[1:])) if len(shape) > 1 else 1
            scale = 0.02 if len(shape) < 2 else fan_in**-0.5
            state[key] = torch.randn(shape, generator=generator) * scale
    net = SynthesisNetwork(SynthesisConfig())
    net.load_state_dict(state)
    return net


def build_model(args) -> tuple[SynthesisNetwork, TextEncoder, str]:
    """The network, the text encoder and the model's name for the report."""
    if args.checkpoint:
        net = load_synthesis(args.checkpoint).model
        return net, load_text_encoder(args.text_encoder).model, args.checkpoint
    if args.size == "demo":
        from tumsyn_bids.model.bundled import demo_weights

        syn, te = demo_weights()
        return load_synthesis(syn).model, load_text_encoder(te).model, "demo (bundled weights)"
    config, embed = SIZES[args.size]
    if args.size == "published":
        net = random_published(torch.Generator().manual_seed(0))
    else:
        net = SynthesisNetwork(config)
        for m in net.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    text_encoder = TextEncoder(TextEncoderConfig(width=64, layers=2, heads=8, embed_dim=embed))
    torch.nn.init.normal_(text_encoder.text_projection, std=0.1)
    return net, text_encoder, f"{args.size} (random weights)"


def simulated_head(voxel_size: float, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``tumsyn-simulate --with-head`` T1w head and its exact brain mask, in (z, y, x) order."""
    import nibabel as nib

    from tumsyn_bids.cli.simulate import main as simulate
    from tumsyn_bids.model.volume import to_model_order

    anat = folder / "sub-01" / "anat"
    if not (anat / "sub-01_T1w.nii.gz").is_file():
        options = ["--subjects", "1", "--modalities", "T1w", "--with-head", "--seed", "0"]
        code = simulate([str(folder), *options, "--voxel-size", str(voxel_size), "--overwrite"])
        if code != 0:
            raise RuntimeError(f"tumsyn-simulate failed with exit code {code}")
    image = nib.load(anat / "sub-01_T1w.nii.gz")
    mask = folder / "derivatives" / "simulation" / "sub-01" / "anat"
    mask = nib.load(mask / "sub-01_desc-brain_mask.nii.gz")
    return (
        to_model_order(np.asarray(image.dataobj, dtype=np.float32)),
        to_model_order(np.asarray(mask.dataobj) > 0),
    )


class PeakMemory:
    """Peak memory of a block: process RSS on the CPU (VmHWM, reset through
    /proc/self/clear_refs where Linux allows it), allocated memory on CUDA; MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_reset = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.rss_reset = True
            except OSError:
                self.rss_reset = False
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = _vm_hwm_mib()


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def psnr_against(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB) of ``out`` against ``ref`` inside ``mask``, peak = ``ref``'s range there."""
    from tumsyn_bids.evaluation.metrics import psnr

    peak = float(ref[mask].max() - ref[mask].min())
    return psnr(out / peak, ref / peak, mask)


def head_case(args) -> tuple:
    """The model, patch and simulated head of a whole-head run (shared with
    bench_fast_quality.py): ``(net, text_encoder, model_name, side, crop, volume, brain)``;
    sets ``args.batch_size`` to the default for the patch when it is None."""
    net, text_encoder, model_name = build_model(args)
    net.eval()
    side = args.patch or PATCH["demo" if args.size == "demo" and not args.checkpoint else args.size]
    crop = (side,) * 3
    if args.batch_size is None:
        from tumsyn_bids.cli.parsing import default_batch_size

        args.batch_size = default_batch_size(crop)
    head_dir = Path(args.head_dir) if args.head_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        volume, brain = simulated_head(args.voxel_size, head_dir or Path(tmp) / "head")
    return net, text_encoder, model_name, side, crop, volume, brain


def head_record(args, model_name: str, volume, brain, crop, loads) -> dict:
    """The fields a whole-head result records about its run (shared with
    bench_fast_quality.py): torch, threads, OMP policy, load averages ``loads`` (before, after),
    model, head, patch and batch size."""
    before, after = loads
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_before_after": [round(before[0], 2), round(after[0], 2)],
        "model": model_name,
        "head": {
            "voxel_size_mm": args.voxel_size,
            "shape_zyx": list(volume.shape),
            "brain_fraction": round(float(brain.mean()), 4),
        },
        "patch": list(crop),
        "batch_size": args.batch_size,
    }


def whole_head(args, device: torch.device) -> dict:
    net, text_encoder, model_name, side, crop, volume, brain = head_case(args)
    norm = percentile_normalise(volume)

    # one untouched plain copy for the authors' loop; the presets share one converted copy
    # and one synthesizer per precision
    plain = copy.deepcopy(net).to(device).eval()
    engine_net = copy.deepcopy(net)
    synths, built = {}, {}
    for name in args.modes:
        if name == "authors":
            continue
        options = preset(name).synthesizer_options(device.type)
        key = options["precision"]
        if key not in built:
            built[key] = Synthesizer(engine_net, text_encoder, device, key, fused=True)
        synths[name] = built[key]
    some = next(iter(synths.values())) if synths else Synthesizer(net, text_encoder, device)
    text = some.embed(PROMPT)
    features_flops, point_flops = split_flops(plain, crop, text, device)
    dense = matmul_gflops(device)
    dense_bf16 = matmul_gflops(device, dtype=torch.bfloat16) if device.type == "cuda" else None

    settings = {
        name: PatchSettings(
            crop,
            overlap=args.overlap,
            batch_size=args.batch_size,
            **preset(name).engine_options(masked_output=True),
        )
        for name in synths
    }
    planned = len(plan_patches(norm.shape, PatchSettings(crop, overlap=args.overlap)))
    # warm-up (allocators, oneDNN/cuDNN kernel selection) on every path
    warm = volume[:side, :side, :side]
    for name, synth in synths.items():
        synth.synthesize(warm, PROMPT, settings[name])
    if "authors" in args.modes:
        with exact_float32(device):
            authors_loop(plain, percentile_normalise(warm), text, crop, crop, args.overlap, device)
    _sync(device)

    load_before = os.getloadavg()
    outputs, modes = {}, {}
    for name in args.modes:
        with PeakMemory(device) as memory:
            t = time.perf_counter()
            if name == "authors":
                with exact_float32(device):
                    out = authors_loop(plain, norm, text, crop, crop, args.overlap, device)
                computed, skipped, decoded = planned, 0, planned * side**3
            else:
                synth = synths[name]
                mask = None if preset(name).reference else brain
                out = synth.synthesize(volume, PROMPT, settings[name], mask=mask)
                stats = synth.last_stats
                computed, skipped, decoded = stats.computed, stats.skipped, stats.decoded
            _sync(device)
            seconds = time.perf_counter() - t
        outputs[name] = out
        flops = computed * features_flops + decoded * point_flops
        modes[name] = {
            "seconds": round(seconds, 3),
            "patches_computed": computed,
            "patches_skipped": skipped,
            "points_decoded": int(decoded),
            "model_gflops": round(flops / seconds / 1e9, 1),
            "peak_memory_mib": None if memory.mib is None else round(memory.mib),
        }
        if name != "authors":
            modes[name]["precision"] = synths[name].precision
        print(
            f"{name:9s} {seconds:9.1f} s  {computed:5d} patches computed, {skipped:5d} "
            f"skipped  {modes[name]['model_gflops']:7.1f} GFLOP/s",
            flush=True,
        )
    load_after = os.getloadavg()

    authors = outputs.get("authors")
    t_authors = modes["authors"]["seconds"] if authors is not None else None
    for name, row in modes.items():
        if t_authors is not None and name != "authors":
            row["speedup"] = round(t_authors / row["seconds"], 3)
    if authors is not None and "reference" in outputs:
        modes["reference"]["max_abs_diff"] = float(np.abs(outputs["reference"] - authors).max())
    if authors is not None and "default" in outputs:
        diff = np.abs(outputs["default"] - authors)[brain].max()
        modes["default"]["max_abs_diff_in_brain"] = float(diff)
    if "default" in outputs and "fast" in outputs:
        fast, default = outputs["fast"], outputs["default"]
        modes["fast"]["psnr_vs_default"] = round(psnr_against(fast, default, brain), 2)
        modes["fast"]["max_abs_diff_in_brain_vs_default"] = float(
            np.abs(fast - default)[brain].max()
        )

    counts = {}
    for other in sorted({20, 32, 60, side}):
        if other > min(norm.shape):
            continue
        jobs = plan_patches(norm.shape, PatchSettings((other,) * 3, overlap=args.overlap))
        exact = select_patches(jobs, brain, (other,) * 3)
        fast = select_patches(jobs, brain, (other,) * 3, preset("fast").min_foreground)
        counts[str(other)] = {"planned": len(jobs), "default": len(exact), "fast": len(fast)}

    return {
        "case": "whole-head",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        **head_record(args, model_name, volume, brain, crop, (load_before, load_after)),
        "overlap": args.overlap,
        "gflop_per_patch_features": round(features_flops / 1e9, 3),
        "mflop_per_point_decoder": round(point_flops / 1e6, 4),
        "authors_loop_seconds": t_authors,
        "dense_matmul_gflops": round(dense, 1),
        "dense_matmul_gflops_bf16": None if dense_bf16 is None else round(dense_bf16, 1),
        "modes": modes,
        "patch_counts": counts,
    }


def random_volume(args, device: torch.device) -> dict:
    """The engine's plain default mode against the authors' loop on a random volume."""
    net, text_encoder, model_name = build_model(args)
    net.eval()
    # The baseline keeps its own untouched copy: the engine converts its network in place
    # (channels-last memory format).
    plain = copy.deepcopy(net).to(device)
    layout = {"auto": None, "channels-last": True, "contiguous": False}[args.memory_format]
    synth = Synthesizer(
        net, text_encoder, device, args.precision, channels_last=layout, fused=args.fused
    )
    text = synth.embed(PROMPT)

    rng = np.random.default_rng(0)
    volume = (rng.random(args.volume, dtype=np.float32) * 1000).astype(np.float32)
    norm = percentile_normalise(volume)
    side = args.patch or 32
    crop = (side,) * 3
    coord = (side * args.scale,) * 3
    batch = args.batch_size or 4
    settings = PatchSettings(crop, coord, args.overlap, batch_size=batch)

    flops = patch_flops(net, crop, coord, text, device)
    n_patches = len(plan_patches(tuple(args.volume), settings))
    dense = matmul_gflops(device)

    # warm-up (allocators, oneDNN/cuDNN kernel selection) on both paths
    synth.synthesize(volume[:side, :side, :side], PROMPT, settings)
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
    ours = synth.synthesize(volume, PROMPT, settings)
    _sync(device)
    t_ours = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    return {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": model_name,
        "volume": args.volume,
        "patch": crop,
        "query": coord,
        "patches": n_patches,
        "batch_size": batch,
        "precision": args.precision,
        "fused": args.fused,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": round(os.getloadavg()[0], 2),
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=[*SIZES, "demo"], default="mid")
    p.add_argument("--checkpoint")
    p.add_argument("--text-encoder")
    p.add_argument("--whole-head", action="store_true", help="the simulated head and every preset")
    p.add_argument("--voxel-size", type=float, default=1.0, help="the head's voxel size, mm")
    p.add_argument("--head-dir", help="reuse (or keep) the simulated head in this folder")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["authors", "reference", "default", "fast"],
        default=["authors", "reference", "default", "fast"],
        help="--whole-head: what to run, in this order",
    )
    p.add_argument("--volume", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--patch", type=int, help="patch side (default: per model)")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, help="default: the commands' default")
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
        "--fused", action="store_true", help="random volume: the engine runs the fused network"
    )
    p.add_argument(
        "--skip-baseline", action="store_true", help="time only the engine (e.g. to sweep settings)"
    )
    p.add_argument("--json", type=Path, help="also write the report to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    report = whole_head(args, device) if args.whole_head else random_volume(args, device)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
