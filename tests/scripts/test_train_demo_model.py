"""The demo model's recipe, run end to end at toy size (both profiles' options reach the CLIs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tumsyn_bids.model import load_synthesis, load_text_encoder
from tumsyn_bids.model.bundled import DEMO_MODEL_NAME, demo_weights
from tumsyn_bids.model.metadata import checkpoint_metadata, file_sha256

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "scripts" / "train-demo-model.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        # the recipe calls the console scripts of the environment running the tests
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DEST": str(tmp_path / "export"),
        "DEVICE": "cpu",
        **env,
    }
    return subprocess.run(
        ["bash", str(RECIPE), str(tmp_path / "work")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_cpu_profile_trains_exports_and_scores_a_model(tmp_path):
    shipped = [file_sha256(p) for p in demo_weights()]
    result = _run(
        tmp_path,
        PROFILE="cpu",
        SUBJECTS="3",
        TEST_SUBJECTS="1",
        VOXEL_SIZE="3",
        STAGE1_EPOCHS="1",
        STAGE2_EPOCHS="1",
        # the second stage-2 round is the gpu profile's; here it runs at toy size on the cpu one
        ROUND2_SUBJECTS="4",
        ROUND2_EPOCHS="1",
        # one patch per head at 3 mm; the trained 16 would score ~600 patches per image
        EVAL_PATCH="64",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    export = tmp_path / "export"
    net = load_synthesis(export / "synthesis.pth")
    text = load_text_encoder(export / "text_encoder.pt")
    assert net.model.config.n_feats == 16
    assert text.model.config.embed_dim == 32 == net.model.config.out_dim
    meta = checkpoint_metadata(export / "synthesis.pth")
    assert meta["model_name"] == DEMO_MODEL_NAME
    # the shipped weights are round two's, started from round one's export
    round1 = tmp_path / "work" / "round1" / "synthesis.pth"
    assert meta["init_from"]["sha256"] == file_sha256(round1)
    assert meta["config"]["val_participants"] == ["03", "04"]
    assert meta["config"]["lr"] == 5e-4
    assert (tmp_path / "work" / "train-round2" / "sub-04").is_dir()
    # the run scored the weights it exported, not the bundled ones
    assert "using the bundled demo model" not in result.stderr
    assert json.loads((tmp_path / "work" / "eval" / "evaluation.json").read_text())[
        "patch_size"
    ] == [64, 64, 64]
    scores = pd.read_csv(tmp_path / "work" / "eval" / "scores.tsv", sep="\t")
    assert set(scores["task"]) == {"T1w->T2w", "T1w->FLAIR", "T2w->T1w"}
    assert set(scores["method"]) == {"model", "source", "histmatch"}
    # validation used the last two training subjects, which stage 2 never trained on
    assert (tmp_path / "work" / "train" / "sub-03").is_dir()
    # DEST was honoured: the package's model is untouched
    assert [file_sha256(p) for p in demo_weights()] == shipped


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROFILE": "laptop"}, "PROFILE must be gpu or cpu"),
        ({"SUBJECTS": "2"}, "at least 3"),
        ({"ROUND2_SUBJECTS": "2"}, "ROUND2_SUBJECTS must be 0"),
    ],
)
def test_recipe_refuses_bad_settings(tmp_path, env, message):
    result = _run(tmp_path, **env)
    assert result.returncode == 64
    assert message in result.stderr
    assert not (tmp_path / "work").exists()
