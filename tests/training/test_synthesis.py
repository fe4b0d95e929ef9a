"""Stage 2 (``tumsyn-train synthesis``) end to end on tiny models and phantoms."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.weights import save_text_encoder
from tumsyn_bids.bids.io import atomic_save_nifti, atomic_write_text
from tumsyn_bids.cli import errors
from tumsyn_bids.cli.train import main
from tumsyn_bids.data.example import make_phantom, write_example_dataset
from tumsyn_bids.model import (
    PatchSettings,
    Synthesizer,
    TextEncoder,
    TextEncoderConfig,
    file_sha256,
    load_synthesis,
    load_text_encoder,
)
from tumsyn_bids.training.synthesis.sampling import EpochSampler, PatchDataset, Sampling

from .logs import read_metrics

ROOT = Path(__file__).resolve().parents[2]

#: The tiny model and sampling of every run here.
TINY = [
    "--n-resblocks", "1",
    "--n-feats", "8",
    "--decoder-hidden", "16", "16",
    "--lr-size", "8",
    "--sample-q", "64",
    "--batch-size", "2",
    "--quiet",
]  # fmt: skip

#: Resume runs: 3 patches in batches of 2, so 2 steps an epoch. On the CPU, as bit-for-bit
#: comparisons need it: CUDA kernels (grid_sample backward, cuDNN autotuning) vary between runs.
RESUME_OPTS = (
    "--participant-label", "01",
    "--patches-per-pair", "3",
    "--workers", "0",
    "--device", "cpu",
)  # fmt: skip

#: sub-03: a second co-registered T1w/T2w pair (validation); sub-04: its T2w on another grid.
EXTRA_IMAGES = [
    ("sub-03/anat/sub-03_T1w.nii.gz", "T1w", (32, 36, 32), 1.5),
    ("sub-03/anat/sub-03_T2w.nii.gz", "T2w", (32, 36, 32), 1.5),
    ("sub-04/anat/sub-04_T1w.nii.gz", "T1w", (32, 36, 32), 1.5),
    ("sub-04/anat/sub-04_T2w.nii.gz", "T2w", (24, 28, 24), 2.0),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions only lose from a second thread, and badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    """The example dataset (sub-01: one T1w/T2w pair; sub-02: T1w only) plus sub-03 and sub-04."""
    root = write_example_dataset(tmp_path_factory.mktemp("data") / "bids")
    for i, (rel, modality, shape, zoom) in enumerate(EXTRA_IMAGES):
        img = make_phantom(shape, (zoom,) * 3, modality, seed=300 + i)
        atomic_save_nifti(img, root / rel)
    atomic_write_text(
        root / "participants.tsv",
        "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\tn/a\tn/a\nsub-03\t51\tM\nsub-04\t27\tF\n",
    )
    return root


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory) -> Path:
    """A stage-1-shaped text encoder file with a random (not zero) projection."""
    torch.manual_seed(0)
    model = TextEncoder(TextEncoderConfig(width=32, layers=1, heads=2, embed_dim=16))
    torch.nn.init.normal_(model.text_projection, std=0.5)
    path = tmp_path_factory.mktemp("te") / "text_encoder.pt"
    save_text_encoder(path, model.state_dict(), heads=2)
    return path


def _train(bids: Path, out: Path, text_encoder: Path, *extra: str) -> int:
    return main(
        ["synthesis", str(bids), str(out), "--text-encoder", str(text_encoder), *TINY, *extra]
    )


@pytest.fixture(scope="module")
def run(bids, text_encoder, tmp_path_factory) -> Path:
    """Two epochs on sub-01 with sub-03 held out for validation."""
    out = tmp_path_factory.mktemp("run") / "out"
    rc = _train(
        bids, out, text_encoder,
        "--participant-label", "01", "03",
        "--val-participant-label", "03",
        "--patches-per-pair", "3",
        "--epochs", "2", "--epoch-val", "1", "--epoch-save", "1",
        "--augment-blur", "0.5", "--augment-noise", "0.05", "--val-scale", "1",
    )  # fmt: skip
    assert rc == 0
    return out


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_checkpoints_in_the_authors_format(run, text_encoder):
    for name in ("epoch-last.pth", "epoch-best.pth", "epoch-1.pth", "epoch-2.pth"):
        assert (run / name).is_file(), name
    ckpt = _load(run / "epoch-last.pth")
    assert ckpt["epoch"] == 2
    model_g = ckpt["model_G"]
    assert model_g["name"] == "lccd" and set(model_g) >= {"name", "args", "sd_G"}
    spec = model_g["args"]["encoder_spec"]["args"]
    assert (spec["n_resblocks"], spec["n_feats"], spec["outdim"]) == (1, 8, 16)
    assert ckpt["optimizer_G"]["name"] == "adam"
    assert ckpt["optimizer_G"]["args"] == {"lr": 1e-4}
    assert ckpt["optimizer_G"]["sd_G"]["state"]  # Adam moments are there to resume

    extra = ckpt["tumsyn_bids"]
    assert extra["stage"] == "synthesis"
    assert extra["text_encoder"]["sha256"] == file_sha256(text_encoder)
    assert extra["text_encoder"]["path"] == str(text_encoder.resolve())
    assert extra["text_encoder"]["heads"] == 2
    assert extra["global_step"] == 4  # 3 patches, batches of 2, 2 epochs
    assert extra["scheduler"]["last_epoch"] == 2
    assert extra["config"]["n_feats"] == 8
    assert extra["config"]["val_scale"] == 1.0
    assert extra["sampling"] == {
        "scale_min": 1.0, "scale_max": 3.0, "lr_size": 8, "sample_q": 64,
        "blur_max": 0.5, "noise_max": 0.05,
    }  # fmt: skip
    assert extra["best"]["metric"] == "val_psnr"
    assert np.isfinite(extra["best"]["value"])
    assert _load(run / "epoch-1.pth")["epoch"] == 1


def test_checkpoint_synthesizes(run, text_encoder):
    net = load_synthesis(run / "epoch-best.pth").model
    assert (net.config.n_feats, net.config.out_dim, net.config.decoder_hidden) == (8, 16, (16, 16))
    synth = Synthesizer(net, load_text_encoder(text_encoder).model, device="cpu")
    volume = np.random.default_rng(0).uniform(0, 100, (12, 14, 10)).astype(np.float32)
    settings = PatchSettings(patch_size=(8, 8, 8), query_size=(16, 16, 16), overlap=0.5)
    out = synth.synthesize(volume, "a T2-weighted MRI", settings)
    assert out.shape == (24, 28, 20) and np.isfinite(out).all()


def test_logs(run):
    rows = read_metrics(run / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["epoch"] for r in rows] == [1, 1, 2, 2]
    for row in rows:
        assert row["world_size"] == 1 and row["lr"] == pytest.approx(1e-4)
        assert row["loss"] == pytest.approx(0.5 * (row["loss_src_to_tgt"] + row["loss_tgt_to_src"]))
        assert row["patches_per_s"] > 0
    assert (run / "train_log.csv").read_text().startswith("epoch,step,lr,loss,loss_src_to_tgt")
    val = read_metrics(run / "val_log.jsonl")
    assert [r["epoch"] for r in val] == [1, 2]
    assert all(np.isfinite(r["val_psnr"]) and r["n_patches"] == 4 for r in val)
    # sub-03's one pair runs T1w -> T2w (sources sort first): per-target scores are its directions
    for r in val:
        assert r["psnr_to_T2w"] == pytest.approx(r["psnr_src_to_tgt"])
        assert r["psnr_to_T1w"] == pytest.approx(r["psnr_tgt_to_src"])
    assert "psnr_to_T1w,psnr_to_T2w" in (run / "val_log.csv").read_text()
    assert (run / "config.json").is_file()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return _load(path)["model_G"]["sd_G"]


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = _load(a), _load(b)
    assert ca["epoch"] == cb["epoch"]
    assert ca["tumsyn_bids"]["global_step"] == cb["tumsyn_bids"]["global_step"]
    wa, wb = ca["model_G"]["sd_G"], cb["model_G"]["sd_G"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)
    sa, sb = ca["optimizer_G"]["sd_G"]["state"], cb["optimizer_G"]["sd_G"]["state"]
    for key in sa:
        torch.testing.assert_close(sa[key]["exp_avg"], sb[key]["exp_avg"], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def straight(bids, text_encoder, tmp_path_factory) -> Path:
    """Two uninterrupted epochs of 2 steps, no validation subjects."""
    out = tmp_path_factory.mktemp("straight") / "out"
    assert _train(bids, out, text_encoder, *RESUME_OPTS, "--epochs", "2") == 0
    return out


def test_resume_after_an_epoch_equals_an_uninterrupted_run(bids, text_encoder, straight, tmp_path):
    out = tmp_path / "out"
    assert _train(bids, out, text_encoder, *RESUME_OPTS, "--epochs", "1") == 0
    assert _load(out / "epoch-last.pth")["epoch"] == 1
    assert _train(bids, out, text_encoder, *RESUME_OPTS, "--epochs", "2", "--resume") == 0
    _assert_same_run(straight / "epoch-last.pth", out / "epoch-last.pth")
    # The log continues where it stopped.
    assert [r["step"] for r in read_metrics(out / "train_log.jsonl")] == [1, 2, 3, 4]
    # Without validation subjects, the training loss picks epoch-best.
    assert _load(out / "epoch-best.pth")["tumsyn_bids"]["best"]["metric"] == "train_loss"


def test_data_loader_workers_do_not_change_the_run(bids, text_encoder, straight, tmp_path):
    out = tmp_path / "out"
    assert _train(bids, out, text_encoder, *RESUME_OPTS, "--epochs", "2", "--workers", "2") == 0
    _assert_same_run(straight / "epoch-last.pth", out / "epoch-last.pth")


def test_max_steps_stops_mid_epoch_and_resume_finishes_it(bids, text_encoder, straight, tmp_path):
    out = tmp_path / "out"
    assert _train(bids, out, text_encoder, *RESUME_OPTS, "--epochs", "2", "--max-steps", "3") == 0
    ckpt = _load(out / "epoch-last.pth")
    assert ckpt["epoch"] == 1 and ckpt["tumsyn_bids"]["global_step"] == 3
    assert ckpt["tumsyn_bids"]["run_state"]["epoch_step"] == 1
    assert _train(bids, out, text_encoder, *RESUME_OPTS, "--epochs", "2", "--resume") == 0
    _assert_same_run(straight / "epoch-last.pth", out / "epoch-last.pth")


def test_resume_refusals(bids, text_encoder, straight, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    missing = tmp_path / "missing"
    assert _train(bids, missing, text_encoder, *RESUME_OPTS, "--resume") == errors.EX_DATAERR
    assert "no epoch-last.pth" in caplog.text
    caplog.clear()
    # A new run never overwrites an existing one.
    assert _train(bids, straight, text_encoder, *RESUME_OPTS) == errors.EX_CANTCREAT
    assert "--resume" in caplog.text
    caplog.clear()
    # Other sizes than the checkpoint's.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "epoch-last.pth").write_bytes((straight / "epoch-last.pth").read_bytes())
    rc = _train(bids, copy, text_encoder, *RESUME_OPTS, "--resume", "--n-feats", "16")
    assert rc == errors.EX_DATAERR
    assert "n_feats: checkpoint 8, options 16" in caplog.text


def test_resume_warns_when_validation_changes_scale(bids, text_encoder, straight, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "epoch-last.pth").write_bytes((straight / "epoch-last.pth").read_bytes())
    rc = _train(bids, copy, text_encoder, *RESUME_OPTS, "--epochs", "2", "--resume")
    assert rc == 0 and "val_scale" not in caplog.text
    rc = _train(
        bids, copy, text_encoder, *RESUME_OPTS, "--epochs", "2", "--resume", "--val-scale", "1"
    )
    assert rc == 0
    assert "val_scale=1.0 (the checkpoint's run had None)" in caplog.text


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--augment-noise", "-0.1"), "--augment-blur and --augment-noise must be >= 0"),
        (("--val-scale", "0.5"), "--val-scale must be at least 1 (got 0.5)"),
    ],
)
def test_bad_sampling_options_are_refused(bids, text_encoder, tmp_path, caplog, option, message):
    caplog.set_level(logging.ERROR)
    rc = _train(bids, tmp_path / "out", text_encoder, *RESUME_OPTS, *option)
    assert rc == errors.EX_DATAERR
    assert message in caplog.text
    assert not (tmp_path / "out" / "epoch-last.pth").exists()


def test_init_from(bids, text_encoder, run, tmp_path, caplog):
    out = tmp_path / "out"
    init = run / "epoch-best.pth"
    assert (
        _train(
            bids, out, text_encoder, *RESUME_OPTS, "--init-from", str(init), "--max-steps", "1",
            "--n-resblocks", "3", "--n-feats", "12", "--decoder-hidden", "8",
        )
        == 0
    )  # fmt: skip
    meta = _load(out / "epoch-last.pth")["tumsyn_bids"]
    assert meta["init_from"]["sha256"] == file_sha256(init)
    # The record holds the sizes of the network it started from (TINY's), not the ignored options.
    for record in (meta["config"], json.loads((out / "config.json").read_text())):
        sizes = (record["n_resblocks"], record["n_feats"], record["decoder_hidden"])
        assert sizes == (1, 8, [16, 16])
    # The text embedding must have the network's feature width.
    wide = tmp_path / "te24.pt"
    enc = TextEncoder(TextEncoderConfig(width=32, layers=1, heads=2, embed_dim=24))
    save_text_encoder(wide, enc.state_dict(), heads=2)
    rc = _train(bids, tmp_path / "o2", wide, *RESUME_OPTS, "--init-from", str(init))
    assert rc == errors.EX_DATAERR
    assert "16 channels" in caplog.text and "24" in caplog.text


def test_off_grid_pair_is_skipped_or_resampled(bids, text_encoder, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    rc = _train(bids, tmp_path / "skip", text_encoder, "--participant-label", "04")
    assert rc == errors.EX_NOINPUT
    warning = [r.getMessage() for r in caplog.records if "pair skipped" in r.getMessage()]
    assert len(warning) == 1
    assert "sub-04/anat/sub-04_T1w.nii.gz" in warning[0]
    assert "sub-04/anat/sub-04_T2w.nii.gz" in warning[0]
    assert "--resample-pairs" in warning[0]

    out = tmp_path / "resampled"
    rc = _train(bids, out, text_encoder, "--participant-label", "04", "--resample-pairs",
                "--max-steps", "1")  # fmt: skip
    assert rc == 0
    assert _load(out / "epoch-last.pth")["tumsyn_bids"]["n_train_pairs"] == 1


def test_no_pairs(bids, text_encoder, tmp_path, caplog):
    # sub-02 has two T1w images and nothing else.
    rc = _train(bids, tmp_path / "out", text_encoder, "--participant-label", "02")
    assert rc == errors.EX_NOINPUT
    assert "no co-registered pairs" in caplog.text
    assert not (tmp_path / "out" / "epoch-last.pth").exists()


def test_sampler_shards_and_skips():
    a = EpochSampler(5, rank=0, world_size=2, seed=1)
    b = EpochSampler(5, rank=1, world_size=2, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    keys = list(a) + list(b)
    assert len(a) == len(b) == 3
    assert sorted(k[1] for k in keys) == list(range(6))  # every slot once
    assert {k[2] for k in keys} == set(range(5))  # every index (one twice, as padding)
    a.set_epoch(3, skip=2)
    assert list(a) == [k for k in keys if k[1] % 2 == 0][2:]
    a.set_epoch(4)
    assert [k[2] for k in a] != [k[2] for k in keys if k[1] % 2 == 0]


def test_patches_are_a_function_of_seed_epoch_and_slot():
    rng = np.random.default_rng(0)
    vol = rng.uniform(0.1, 1, (20, 20, 20)).astype(np.float32)
    from tumsyn_bids.training.synthesis.sampling import PairVolumes

    pair = PairVolumes(vol, vol[::-1].copy(), 0, 1, "p")
    data = PatchDataset([pair], 2, Sampling(1.0, 2.0, 8, 64), seed=5)
    first, again = data[(1, 0, 0)], data[(1, 0, 0)]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["coord"], data[(2, 0, 0)]["coord"])
    assert not torch.equal(first["coord"], data[(1, 1, 0)]["coord"])
    assert first["src_lr"].shape == (1, 8, 8, 8) and first["coord"].shape == (64, 3)
    assert (int(first["src_prompt"]), int(first["tgt_prompt"])) == (0, 1)


def test_degradation_changes_the_inputs_only_and_never_validation():
    from tumsyn_bids.training.synthesis.sampling import (
        PairVolumes,
        make_example,
        validation_examples,
    )

    rng = np.random.default_rng(0)
    vol = rng.uniform(0.1, 1, (20, 20, 20)).astype(np.float32)
    pair = PairVolumes(vol, vol[::-1].copy(), 0, 1, "p")
    plain = Sampling(1.0, 2.0, 8, 64)
    degraded = Sampling(1.0, 2.0, 8, 64, blur_max=0.8, noise_max=0.05)
    a = make_example(pair, plain, np.random.default_rng(9))
    b = make_example(pair, degraded, np.random.default_rng(9))
    for key in ("coord", "src_hr", "tgt_hr", "src_prompt", "tgt_prompt"):
        assert torch.equal(a[key], b[key]), key  # same patch, same targets
    for key in ("src_lr", "tgt_lr"):
        assert not torch.equal(a[key], b[key]), key
    # the two inputs get their own draws
    assert not torch.allclose(b["src_lr"] - a["src_lr"], b["tgt_lr"] - a["tgt_lr"])
    val_plain = validation_examples([pair], plain, seed=3)
    val_degraded = validation_examples([pair], degraded, seed=3)
    assert len(val_plain) == len(val_degraded)
    for x, y in zip(val_plain, val_degraded, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_val_scale_fixes_the_scale_of_validation_patches():
    from tumsyn_bids.training.synthesis.sampling import PairVolumes, validation_examples

    vol = np.random.default_rng(1).uniform(0.1, 1, (30, 30, 30)).astype(np.float32)
    pair = PairVolumes(vol, vol[::-1].copy(), 0, 1, "p")
    # every voxel of the HR cube is queried, so at scale 1 the queries are the LR patch itself
    sampling = Sampling(2.0, 3.0, 8, 8**3)

    def same_voxels(example: dict[str, torch.Tensor]) -> bool:
        lr = example["src_lr"].flatten().sort().values
        return torch.equal(lr, example["src_hr"].sort().values)

    assert not any(same_voxels(e) for e in validation_examples([pair], sampling, seed=3))
    fixed = validation_examples([pair], sampling, seed=3, scale=1.0)
    assert fixed and all(same_voxels(e) for e in fixed)


@pytest.mark.slow
def test_torchrun_two_processes(bids, text_encoder, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node", "2",
        "-m", "tumsyn_bids.cli.train",
        "synthesis", str(bids), str(out), "--text-encoder", str(text_encoder), *TINY,
        "--participant-label", "01", "03", "--val-participant-label", "03",
        "--patches-per-pair", "3", "--epochs", "2", "--epoch-val", "1", "--device", "cpu",
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "epoch-last.pth").is_file() and (out / "epoch-best.pth").is_file()
    rows = read_metrics(out / "train_log.jsonl")
    # 3 patches over 2 ranks: 2 per rank, one batch of 2 each, per epoch.
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["world_size"] == 2 for r in rows)
    ckpt = _load(out / "epoch-last.pth")
    assert ckpt["tumsyn_bids"]["world_size"] == 2 and ckpt["epoch"] == 2
    assert load_synthesis(out / "epoch-last.pth").model.config.out_dim == 16


def test_several_runs_pair_every_target_protocol_and_share_volumes(tmp_path):
    from tumsyn_bids.bids.layout import index_anatomical
    from tumsyn_bids.simulate import write_simulated_dataset
    from tumsyn_bids.training.data import modality_pairs, training_images
    from tumsyn_bids.training.synthesis.data import load_pairs

    root = write_simulated_dataset(
        tmp_path / "sim", modalities=("T1w", "FLAIR"), voxel_size=4.0, labels=["01"], runs=2
    )
    images, skipped = training_images(index_anatomical(root))
    assert not skipped and len(images) == 4
    pairs, skipped = modality_pairs(images)
    assert not skipped
    # Every T1w run with every FLAIR run; runs of one modality are never a pair.
    assert len(pairs) == 4 and all(p.source.suffix != p.target.suffix for p in pairs)
    assert len({p.target.prompt for p in pairs} | {p.source.prompt for p in pairs}) == 4
    ids = {i.prompt: k for k, i in enumerate(images)}
    loaded = load_pairs(pairs, ids)
    # Each image is read once: its pairs see one array (four images, not eight copies).
    bases = {id(v.source.base if v.source.base is not None else v.source) for v in loaded}
    bases |= {id(v.target.base if v.target.base is not None else v.target) for v in loaded}
    assert len(bases) == 4
    for pair, volumes in zip(pairs, loaded, strict=True):
        assert volumes.source.shape == volumes.target.shape
        assert volumes.target_prompt == ids[pair.target.prompt]
