"""benchmarks/bench_inference.py --whole-head and bench_memory.py run end to end at tiny size."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.mark.slow
def test_whole_head_benchmark_reports_every_preset(tmp_path):
    out = tmp_path / "head.json"
    argv = ["--whole-head", "--size", "tiny", "--voxel-size", "4", "--threads", "1",
            "--head-dir", str(tmp_path / "head"), "--json", str(out)]  # fmt: skip
    assert _module("bench_inference").main(argv) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["model"] == "tiny (random weights)"
    assert report["authors_loop_seconds"] > 0 and report["dense_matmul_gflops"] > 0
    modes = report["modes"]
    assert list(modes) == ["authors", "reference", "default", "fast"]
    assert modes["reference"]["max_abs_diff"] <= 1e-4
    assert modes["reference"]["patches_skipped"] == 0
    default = modes["default"]
    assert default["max_abs_diff_in_brain"] <= 1e-4
    assert default["patches_skipped"] > 0
    assert (
        default["patches_computed"] + default["patches_skipped"]
        == modes["authors"]["patches_computed"]
    )
    assert default["points_decoded"] < modes["reference"]["points_decoded"]
    assert modes["fast"]["patches_computed"] <= default["patches_computed"]
    assert 0 < modes["fast"]["psnr_vs_default"] < 200
    for name in ("reference", "default", "fast"):
        assert modes[name]["speedup"] > 0 and modes[name]["model_gflops"] > 0, name
        assert modes[name]["peak_memory_mib"] > 50, name
    counts = report["patch_counts"]["20"]
    assert counts["planned"] >= counts["default"] >= counts["fast"] > 0
    assert report["head"]["brain_fraction"] > 0.05


def test_memory_of_one_pass_on_the_meta_device(tmp_path):
    out = tmp_path / "memory.json"
    argv = ["--model", "mid", "--patch", "16", "24", "--batch", "1", "2", "--json", str(out)]
    assert _module("bench_memory").main(argv) == 0
    rows = {
        (r["network"], r["patch"], r["batch"]): r["peak_mib"] for r in json.loads(out.read_text())
    }
    for net in ("plain", "fused"):
        assert 0 < rows[net, 16, 1] < rows[net, 24, 1]  # grows with the patch ...
        assert rows[net, 24, 1] < rows[net, 24, 2]  # ... and with the batch
    # the plain network keeps the feed-forward's 4C-wide tensors whole, the fused one in slabs
    assert rows["fused", 24, 2] < rows["plain", 24, 2]


@pytest.mark.slow
def test_fast_quality_sweep_reports_each_setting_against_default(tmp_path):
    out = tmp_path / "sweep.json"
    argv = ["--size", "tiny", "--voxel-size", "4", "--threads", "1", "--head-dir",
            str(tmp_path / "head"), "--settings", "0.1:0.5", "0:0.25",
            "--json", str(out)]  # fmt: skip
    assert _module("bench_fast_quality").main(argv) == 0
    report = json.loads(out.read_text())
    default = report["default"]
    assert (default["min_foreground"], default["overlap"]) == (0.0, 0.5)
    assert 0 < default["patches_computed"] < default["patches_planned"]  # brain only
    fast, sparse = report["settings"]
    assert (fast["min_foreground"], sparse["overlap"]) == (0.1, 0.25)
    assert fast["patches_planned"] == default["patches_planned"]
    assert fast["patches_computed"] < default["patches_computed"]
    assert sparse["patches_planned"] < default["patches_planned"]  # a larger gap
    for row in (fast, sparse):
        assert 0 < row["psnr_vs_default"] < 200 and row["max_abs_diff_in_brain"] > 0
        assert row["speedup_vs_default"] > 0
    with pytest.raises(SystemExit):
        _module("bench_fast_quality").main(["--settings", "0.1"])  # not MIN_FOREGROUND:OVERLAP
