"""``tumsyn --help`` and ``tumsyn ... --dry-run`` never import torch or the model code.

torch is made unimportable for the child process: a ``torch`` module that raises ImportError
sits first on its path, so any import of it, direct or through a dependency, fails the run.
"""

import subprocess
import sys

import pytest

from tests.datasets import make_dataset


@pytest.fixture
def no_torch(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked for this test')\n")
    return {"PYTHONPATH": str(blocker)}


def _run(args, env_extra):
    import os

    env = {**os.environ, **env_extra}
    code = (
        "import sys, runpy; sys.argv = ['tumsyn', *sys.argv[1:]]; "
        "from tumsyn_bids.cli.run import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert not any(m.startswith('tumsyn_bids.model.') and m.split('.')[2] not in "
        "('grid', 'tokenizer', 'metadata', 'errors', 'bundled', 'speed') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith('tumsyn_bids.model'));"
        "sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_blocker_really_blocks(no_torch):
    import os

    res = subprocess.run(
        [sys.executable, "-c", "import torch"],
        capture_output=True,
        text=True,
        env={**os.environ, **no_torch},
    )
    assert res.returncode != 0 and "blocked" in res.stderr


def test_help_without_torch(no_torch):
    res = _run(["--help"], no_torch)
    assert res.returncode == 0, res.stderr
    assert "--output-resolution" in res.stdout


def test_dry_run_without_torch(tmp_path, no_torch):
    bids = make_dataset(tmp_path / "bids")
    res = _run(
        [bids, tmp_path / "out", "participant", "--skip-bids-validation", "--dry-run",
         "--target", "T2w", "--output-resolution", 0.7, 0.7, 0.7, "-w", tmp_path / "w"],
        no_torch,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Voxel size: (0.7, 0.7, 0.7)" in res.stdout
    assert list((tmp_path / "out" / "logs").glob("run-*/prompts.tsv"))
