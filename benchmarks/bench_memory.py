"""Peak memory of one forward pass of the synthesis network, per model, patch and batch size.

Issue 21 item 5: the engine's memory must be bounded whatever the volume. The volume-sized
arrays are fixed (the input, its normalised copy and two float64 accumulators of the output:
4 + 4 + 8 + 8 bytes per voxel); everything else is one batch of patches through the network.
This script measures that part two ways:

* ``--method meta`` (default): the pass runs on PyTorch's meta device (shapes only, no
  arithmetic, so the published model on 60^3 patches takes seconds), and a dispatch mode adds up
  the bytes of every tensor alive at each step; the peak is reported. It counts tensors, not
  the allocator's caching nor oneDNN/cuDNN scratch space, and the fused network's CPU-only
  paths (direct oneDNN calls, slab sizes per CPU thread) are replaced by their portable
  equivalents. ``--slabs cpu`` sizes the fused network's slabs and decoder steps as on this
  CPU (the default, ``gpu``, as on a GPU: 65,536 rows).
* ``--method rss``: the pass runs on the CPU, each case in a fresh process, and the process's
  peak resident memory above the level before the pass is reported (VmHWM, reset through
  /proc/self/clear_refs), to check the meta figures where a CPU pass is affordable.

    python benchmarks/bench_memory.py --model published --patch 60 --batch 1 2 4
    python benchmarks/bench_memory.py --model mid --patch 32 --batch 1 2 --method rss
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tumsyn_bids.model import SynthesisConfig, SynthesisNetwork
from tumsyn_bids.model.fused import fuse_for_inference
from tumsyn_bids.model.inference import make_coord

CONFIGS = {
    "demo": SynthesisConfig(4, 32, 64, 1.0, (256, 256, 128), encoder_name="resencoder-256"),
    "mid": SynthesisConfig(4, 32, 64, 1.0, (256, 256, 64, 32), encoder_name="resencoder-64"),
    "published": SynthesisConfig(),
}
MIB = 2**20
#: --slabs: whether meta runs use the CPU's slab sizes
SLABS = {"cpu": False}


class LiveTensors(TorchDispatchMode):
    """Bytes of the storages alive, updated at every aten call; :attr:`peak` is the maximum.

    A storage counts from the call that returns its first tensor until the last Python tensor
    on it is gone; tensors that existed before the mode started (weights, inputs) are not
    counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int, ref) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1].discard(ref)
        if not entry[1]:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = tree_flatten((args, kwargs or {}))[0]
        known = {id(t) for t in inputs if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in known:
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self.live:
                self.live[key] = [storage.nbytes(), set()]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            holder = self.live[key][1]
            holder.add(weakref.ref(t, lambda ref, key=key: self._release(key, ref)))
        return out


def network(model: str, fused: bool, device: str) -> torch.nn.Module:
    with torch.device(device):
        net = SynthesisNetwork(CONFIGS[model]).eval()
    if device == "cpu":
        net = net.to(memory_format=torch.channels_last_3d)
    return fuse_for_inference(net) if fused else net


def one_pass(net, side: int, batch: int, chunk: int, device: str) -> None:
    c = make_coord(side).to(device)
    grid = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(1, -1, 3)
    grid = grid.expand(batch, -1, -1)
    patch = torch.rand(batch, 1, side, side, side, device=device)
    if device == "cpu":
        patch = patch.contiguous(memory_format=torch.channels_last_3d)
    text = torch.rand(batch, net.config.out_dim, device=device)
    with torch.inference_mode():
        features = net.features(patch, text)
        net.decode_chunked(features, grid, chunk)


def meta_peak(model: str, fused: bool, side: int, batch: int, chunk: int) -> float:
    net = network(model, fused, "meta")
    if fused and SLABS["cpu"]:
        for block in net.fusion:  # the CPU's slab size (per thread) instead of the GPU's
            block.GPU_SLAB_ROWS = block.SLAB_ROWS * torch.get_num_threads()
        chunk = min(chunk, net.imnet.BLOCK)
    tracker = LiveTensors()
    with tracker:
        one_pass(net, side, batch, chunk, "meta")
    return tracker.peak / MIB


def rss_peak(model: str, fused: bool, side: int, batch: int, chunk: int) -> float:
    """Peak RSS above the level before the first pass, in a fresh process (a second pass in the
    same process reuses memory the allocator kept, and would read low)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_memory as b; "
        "print(b._rss_in_process(sys.argv[2], sys.argv[3] == 'True', *map(int, sys.argv[4:])))"
    )
    here = str(Path(__file__).resolve().parent)
    args = [model, str(fused), str(side), str(batch), str(chunk), str(torch.get_num_threads())]
    res = subprocess.run(
        [sys.executable, "-c", code, here, *args], capture_output=True, text=True, check=True
    )
    return float(res.stdout.strip().splitlines()[-1])


def _rss_in_process(model: str, fused: bool, side: int, batch: int, chunk: int, threads: int):
    torch.set_num_threads(threads)
    net = network(model, fused, "cpu")
    try:  # hand free heap memory (e.g. left by the folding) back, so the pass cannot reuse it
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    one_pass(net, side, batch, chunk, "cpu")
    return (_vm("VmHWM") - before) / 1024


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(CONFIGS), default="published")
    p.add_argument("--patch", type=int, nargs="+", default=[60])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--chunk", type=int, default=1 << 16, help="decoder points per step")
    p.add_argument("--method", choices=["meta", "rss"], default="meta")
    p.add_argument("--networks", nargs="+", choices=["plain", "fused"], default=["plain", "fused"])
    p.add_argument("--slabs", choices=["gpu", "cpu"], default="gpu", help="meta: slab sizes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    SLABS["cpu"] = args.slabs == "cpu"
    measure = meta_peak if args.method == "meta" else rss_peak
    rows = []
    for side in args.patch:
        for batch in args.batch:
            for name in args.networks:
                mib = measure(args.model, name == "fused", side, batch, args.chunk)
                row = {"model": args.model, "network": name, "patch": side, "batch": batch}
                slabs = "cpu" if args.method == "rss" else args.slabs
                row.update(method=args.method, slabs=slabs, peak_mib=round(mib))
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
