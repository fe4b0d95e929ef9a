"""``--speed`` on the command line: one option in every command, recorded where settings go."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import SMALL
from tests.datasets import make_dataset
from tumsyn_bids.cli.parsing import UsageError, precision, speed
from tumsyn_bids.cli.run import main
from tumsyn_bids.config import InferenceConfig
from tumsyn_bids.runlog import read_run_configs


def test_speed_values_and_the_reference_alias():
    assert speed(None) == "default"
    assert speed("fast") == "fast"
    assert speed(None, reference=True) == speed("reference", reference=True) == "reference"
    with pytest.raises(UsageError, match="--reference means --speed reference; it cannot be "):
        speed("fast", reference=True)
    assert precision("fast", "cuda", None) == "bf16"
    assert precision("fast", "cpu", None) == precision("default", "cuda", None) == "fp32"
    with pytest.raises(UsageError, match="CUDA"):
        precision("default", "cpu", "bf16")


def test_inference_config_keeps_speed_and_reference_in_step():
    assert InferenceConfig("c", "t").speed == "default"
    assert InferenceConfig("c", "t", reference=True).speed == "reference"
    config = InferenceConfig("c", "t", speed="reference")
    assert config.reference is True
    with pytest.raises(ValueError, match="contradicts"):
        InferenceConfig("c", "t", reference=True, speed="fast")
    with pytest.raises(ValueError, match="unknown speed"):
        InferenceConfig("c", "t", speed="warp")


@pytest.mark.parametrize(
    "flags,expected",
    [
        ([], ("default", False)),
        (["--speed", "fast"], ("fast", False)),
        (["--reference"], ("reference", True)),
        (["--speed", "reference"], ("reference", True)),
    ],
)
def test_config_json_records_the_preset(tmp_path, flags, expected):
    bids = make_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--dry-run",
                 "--target", "T2w", "-w", str(tmp_path / "w"), *flags])  # fmt: skip
    assert code == 0
    (config,) = read_run_configs(out).values()
    inference = config["inference"]
    assert (inference["speed"], inference["reference"]) == expected
    assert inference["precision"] == "fp32"


def _synth(tmp_path, name, *flags):
    out = tmp_path / f"{name}.nii.gz"
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.synth", str(SMALL / "input_T1w.nii.gz"),
           str(out), "--prompt", "Age: 16; Gender: F; Modality: T2w", "--checkpoint",
           str(SMALL / "synthesis.pth"), "--text-encoder", str(SMALL / "text_encoder.pt"),
           "--text-heads", "2", "--patch-size", "20", "--quiet", *flags]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return res, out


@pytest.mark.slow
def test_synth_reference_preset_is_the_old_reference_flag_bit_for_bit(tmp_path):
    old, old_out = _synth(tmp_path, "old", "--reference")
    new, new_out = _synth(tmp_path, "new", "--speed", "reference")
    default, default_out = _synth(tmp_path, "default")
    assert old.returncode == new.returncode == default.returncode == 0, new.stderr
    a = np.asarray(nib.load(old_out).dataobj)
    assert np.array_equal(a, np.asarray(nib.load(new_out).dataobj))
    # the default preset (the same fused network; here, without a mask and with cubic patches,
    # the same placement) differs from it by float rounding at most
    b = np.asarray(nib.load(default_out).dataobj)
    assert np.abs(a - b).max() <= 1e-4
    clash, clash_out = _synth(tmp_path, "clash", "--reference", "--speed", "fast")
    assert clash.returncode == 64 and not clash_out.exists()
    lines = [ln for ln in clash.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--reference means --speed reference" in lines[0]
    bf16, _ = _synth(tmp_path, "bf16", "--device", "cpu", "--precision", "bf16")
    assert bf16.returncode == 64 and "CUDA" in bf16.stderr


def test_methods_text_names_what_fast_changes():
    from tumsyn_bids.config import PreprocConfig
    from tumsyn_bids.workflows.synthesis import synthesis_desc

    masked = PreprocConfig()  # --preproc full: synthesis gets the brain mask, output masked
    config = InferenceConfig("c", "t", speed="fast")
    text = synthesis_desc(config, preproc=masked)
    assert "fewer than 1% brain-mask voxels" in text and "inference-only copy" in text
    assert "were not computed" in synthesis_desc(InferenceConfig("c", "t"), preproc=masked)
    reference = synthesis_desc(InferenceConfig("c", "t", reference=True), preproc=masked)
    assert "inference-only copy" in reference and "brain-mask" not in reference
    assert "brain-mask" not in synthesis_desc(config)  # without a mask nothing is skipped
