"""``tumsyn-train text-encoder``: outputs, logs, --max-steps, --resume, errors and torchrun.

Everything runs through the CLI entry point on the generated example dataset (4 images: sub-01
T1w and T2w, sub-02 ses-1 T1w and ses-2 T1w) with a tiny model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tumsyn_bids.cli.train import main
from tumsyn_bids.data.example import write_example_dataset
from tumsyn_bids.model import load_text_encoder, tokenize
from tumsyn_bids.model.clip import ContrastiveModel, ImageTowerConfig
from tumsyn_bids.model.metadata import EXTRA_KEY
from tumsyn_bids.model.text_encoder import TextEncoderConfig

from .logs import read_metrics

TINY = [
    "--image-size", "32",
    "--vision-layers", "1", "1", "1", "1",
    "--vision-width", "8",
    "--embed-dim", "32",
    "--text-width", "32",
    "--text-layers", "1",
    "--text-heads", "2",
    "--batch-size", "2",
    "--quiet",
]  # fmt: skip

PROMPTS = ["T1-weighted image of a 30-year-old", "T2-weighted image of a 60-year-old"]


def _model_from_sizes(sizes: dict) -> ContrastiveModel:
    """Rebuild the model from the sizes a checkpoint records (``ContrastiveModel.sizes()``)."""
    image = dict(sizes["image"])
    image["layers"] = tuple(image["layers"])
    return ContrastiveModel(TextEncoderConfig(**sizes["text"]), ImageTowerConfig(**image))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 3-D convolutions only lose from a second thread, and badly on a busy machine (the
    runs here took 1.5 s in one full-suite run and 13-33 s in others with two threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    return write_example_dataset(tmp_path_factory.mktemp("example") / "bids")


def train(bids: Path, out: Path, *extra: str) -> int:
    return main(["text-encoder", str(bids), str(out), *TINY, *extra])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(bids, tmp_path_factory) -> Path:
    """sub-01's two images for training, sub-02's two for validation; 5 epochs, stopped at 3."""
    out = tmp_path_factory.mktemp("trained")
    args = ["--epochs", "5", "--max-steps", "3", "--val-participant-label", "02"]
    assert train(bids, out, *args) == 0
    return out


def test_outputs(trained):
    assert {p.name for p in trained.iterdir()} >= {
        "checkpoint_last.pt",
        "text_encoder.pt",
        "config.json",
        "train_log.csv",
        "train_log.jsonl",
        "val_log.csv",
        "val_log.jsonl",
    }
    last = load(trained / "checkpoint_last.pt")
    assert {"epoch", "global_step", "model_state_dict", "optimizer_state_dict"} <= set(last)
    assert "scheduler_state_dict" in last
    assert last["global_step"] == 3 and last["epoch"] == 2
    meta = last[EXTRA_KEY]
    assert meta["transformer_heads"] == 2 and meta["stage"] == "text-encoder"
    # The schedule spans all 5 epochs; --max-steps only stopped the run early.
    assert meta["total_steps"] == 5 and meta["batches_per_epoch"] == 1
    model = _model_from_sizes(meta["model"])
    model.load_state_dict(last["model_state_dict"])  # strict: visual.*, text keys, logit_scale
    assert any(k.startswith("visual.") for k in last["model_state_dict"])
    assert "logit_scale" in last["model_state_dict"]

    final = load(trained / "text_encoder.pt")
    assert "optimizer_state_dict" not in final and final["global_step"] == 3
    config = json.loads((trained / "config.json").read_text())
    assert config["max_steps"] == 3 and config["vision_width"] == 8

    # The file users pass to `tumsyn --text-encoder` embeds prompts like the trained model.
    encoder = load_text_encoder(trained / "text_encoder.pt").model
    assert encoder.config.heads == 2
    tokens = tokenize(PROMPTS)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(encoder(tokens), model.encode_text(tokens))
        assert encoder(tokens).shape == (2, 32)


def test_logs(trained):
    rows = read_metrics(trained / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["world_size"] == 1
        assert row["loss"] > 0 and 0 <= row["accuracy"] <= 1
        assert 1 <= row["logit_scale"] <= 100 and row["images_per_s"] > 0
    # warm-up over int(0.2 * 5) = 1 step: 0 at step 1, then the base rate, then the cosine
    assert rows[0]["lr"] == 0 and rows[1]["lr"] == pytest.approx(5e-4)
    assert rows[2]["lr"] < rows[1]["lr"]
    with open(trained / "train_log.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and float(table[-1]["loss"]) == pytest.approx(rows[-1]["loss"])
    val = read_metrics(trained / "val_log.jsonl")
    assert [r["epoch"] for r in val] == [0, 1, 2]
    assert all(r["n_images"] == 2 and r["val_loss"] > 0 for r in val)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(bids, tmp_path):
    """4 steps straight == 3 steps (stopped mid-epoch) + --resume for the last one."""
    common = ["--epochs", "2", "--seed", "3", "--workers", "0"]
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    assert train(bids, straight, *common) == 0
    assert train(bids, chunked, *common, "--max-steps", "3") == 0
    assert load(chunked / "checkpoint_last.pt")["global_step"] == 3
    assert train(bids, chunked, *common, "--resume") == 0

    a, b = load(straight / "checkpoint_last.pt"), load(chunked / "checkpoint_last.pt")
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["model_state_dict"].items():
        torch.testing.assert_close(b["model_state_dict"][key], value, msg=key)
    opt_a, opt_b = a["optimizer_state_dict"], b["optimizer_state_dict"]
    for index, state in opt_a["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(opt_b["state"][index][name], value)
    assert opt_a["param_groups"][0]["lr"] == pytest.approx(opt_b["param_groups"][0]["lr"])
    assert a["scheduler_state_dict"]["last_epoch"] == b["scheduler_state_dict"]["last_epoch"]
    assert [r["step"] for r in read_metrics(chunked / "train_log.jsonl")] == [1, 2, 3, 4]


def test_resume_refuses_other_sizes(bids, trained, tmp_path, caplog):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    assert train(bids, out, "--epochs", "5", "--resume", "--vision-width", "16") == 65
    assert "image width: checkpoint 8, options 16" in caplog.text


def test_resume_needs_a_checkpoint(bids, tmp_path, caplog):
    assert train(bids, tmp_path / "new", "--resume") == 65
    assert "no checkpoint_last.pt" in caplog.text


def test_new_run_does_not_overwrite_a_run(bids, trained, tmp_path, caplog):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    before = (out / "checkpoint_last.pt").read_bytes()
    assert train(bids, out, "--epochs", "1") == 73
    assert "--resume" in caplog.text
    assert (out / "checkpoint_last.pt").read_bytes() == before


def test_empty_selection(bids, tmp_path, caplog):
    nothing = {k: {"acquisition": "none"} for k in ("t1w", "t2w", "flair", "pdw")}
    query = tmp_path / "filter.json"
    query.write_text(json.dumps(nothing))
    assert train(bids, tmp_path / "out", "--bids-filter-file", str(query)) == 66
    assert "no usable anatomical images" in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--participant-label", "02", "--session-label", "1"], "at least 2 training images"),
        (["--batch-size", "1"], "use --batch-size 2 or more"),
    ],
)
def test_nothing_to_contrast_is_refused(bids, tmp_path, caplog, args, message):
    assert train(bids, tmp_path / "out", *args) == 65
    assert message in caplog.text
    assert not (tmp_path / "out" / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_torchrun_two_processes(bids, tmp_path):
    """Two gloo ranks on the CPU; features are gathered so every step sees all 4 images."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tumsyn_bids.cli.train", "text-encoder", str(bids), str(out), *TINY,
        "--epochs", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_metrics(out / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone writes the log
    assert all(r["world_size"] == 2 for r in rows)
    meta = load(out / "checkpoint_last.pt")[EXTRA_KEY]
    assert meta["world_size"] == 2 and meta["global_batch_size"] == 4
    assert meta["batches_per_epoch"] == 1  # 2 images per rank, one batch of 2 each
    encoder = load_text_encoder(out / "text_encoder.pt").model
    with torch.no_grad():
        assert torch.isfinite(encoder(tokenize(PROMPTS))).all()
