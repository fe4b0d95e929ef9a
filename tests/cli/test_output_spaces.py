"""``--output-spaces``: parsed into the run configuration, refused with exit 64 in one line.

Dry runs (no model, no registration); the TemplateFlow home is the session's, made by
``tumsyn-templates init`` (tests/conftest.py). The end-to-end runs are in
tests/workflows/test_template_space.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.datasets import make_dataset
from tumsyn_bids.cli.run import main
from tumsyn_bids.runlog import read_run_configs

TPL = "MNI152NLin2009aSym"


def run(tmp_path, *extra) -> int:
    bids = tmp_path / "bids"
    if not bids.exists():
        make_dataset(bids)
    argv = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
            "--skip-bids-validation", "--dry-run", "--target", "T2w", *extra]  # fmt: skip
    return main(argv)


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_default_is_the_source_grid(tmp_path, templateflow_home):
    assert run(tmp_path) == 0
    (config,) = read_run_configs(tmp_path / "out").values()
    assert config["output_spaces"] == ["T1w"]


def test_template_spaces_are_recorded_in_canonical_spelling(tmp_path, templateflow_home):
    code = run(tmp_path, "--output-spaces", TPL, f"{TPL}:res-2", "T1w", f"{TPL}:res-1")
    assert code == 0
    (config,) = read_run_configs(tmp_path / "out").values()
    assert config["output_spaces"] == [f"{TPL}:res-1", f"{TPL}:res-2", "T1w"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["MNI152NLin2009cAsym"], "template MNI152NLin2009cAsym (resolution=1, suffix=mask"),
        ([f"{TPL}:res-3"], f"template {TPL} (resolution=3, suffix=mask"),
        ([f"{TPL}:res-x"], "cannot read 'MNI152NLin2009aSym:res-x'"),
        (["T1w:res-2"], "T1w is the source grid, no :res-"),
    ],
)
def test_bad_spaces_exit_64_in_one_line(tmp_path, templateflow_home, capsys, values, expected):
    assert run(tmp_path, "--output-spaces", *values) == 64
    line = last_line(capsys)
    assert line.startswith("tumsyn: error: ") and expected in line, line
    if "template " in expected:  # names the home and the fix
        assert f"TEMPLATEFLOW_HOME={templateflow_home}" in line
        assert "tumsyn-templates init" in line
    assert not (tmp_path / "out" / "logs").exists()  # refused before anything is recorded


def test_template_space_needs_preprocessing(tmp_path, templateflow_home, capsys):
    assert run(tmp_path, "--output-spaces", TPL, "--preproc", "none") == 64
    line = last_line(capsys)
    assert f"--output-spaces {TPL}:res-1: template spaces need --preproc full" in line


def test_empty_templateflow_home_exit_64(tmp_path):
    """A home without the template (a fresh process: the client reads the home once)."""
    bids = make_dataset(tmp_path / "bids")
    empty = tmp_path / "empty-home"
    empty.mkdir()
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(empty))
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(tmp_path / "out"),
           "participant", "-w", str(tmp_path / "w"), "--skip-bids-validation", "--dry-run",
           "--output-spaces", TPL]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 64, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert f"TEMPLATEFLOW_HOME={empty} is missing or empty" in line
    assert f"tumsyn-templates init {empty}" in line
