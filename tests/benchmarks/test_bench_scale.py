"""benchmarks/bench_scale.py runs end to end on a tiny size and writes a valid dataset."""

import importlib.util
import json
from pathlib import Path

import pytest

from tumsyn_bids.bids.validation import validate_bids

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_synthetic_dataset_is_valid_bids(tmp_path):
    root = _module().write_dataset(tmp_path / "bids", 3)
    assert len(list(root.rglob("*.nii.gz"))) == 3 * 2 * 2
    result = validate_bids(root)
    assert result.ok, result.report()


@pytest.mark.slow
def test_the_benchmark_measures_every_case(tmp_path, capsys):
    out = tmp_path / "scale.json"
    assert _module().main(["--sizes", "2", "--repeats", "1", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    for case in ("prepare", "full", "full+db", "task", "task+db"):
        assert result[case]["seconds"] > 0 and result[case]["peak_rss_mb"] > 50, case
    assert "| 2 | 8 |" in capsys.readouterr().out
