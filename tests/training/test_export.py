"""Exported (weights-only, float16) models load and predict like the training checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.weights import save_text_encoder
from tumsyn_bids.cli.train import main as train_main
from tumsyn_bids.model import (
    PatchSettings,
    SynthesisConfig,
    SynthesisNetwork,
    Synthesizer,
    TextEncoder,
    TextEncoderConfig,
    load_synthesis,
    load_text_encoder,
    synthesis_checkpoint,
)
from tumsyn_bids.model.metadata import checkpoint_metadata


@pytest.fixture()
def trained(tmp_path):
    torch.manual_seed(0)
    text = TextEncoder(TextEncoderConfig(width=32, layers=1, heads=4, embed_dim=16))
    torch.nn.init.normal_(text.text_projection, std=0.2)
    torch.nn.init.normal_(text.positional_embedding, std=0.02)
    te = tmp_path / "checkpoint_last.pt"
    optimizer = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": []}
    save_text_encoder(te, text.state_dict(), heads=4, optimizer_state_dict=optimizer)
    net = SynthesisNetwork(SynthesisConfig(1, 8, 16, 1.0, (16, 16), encoder_name="tiny"))
    syn = tmp_path / "epoch-last.pth"
    ckpt = synthesis_checkpoint(net, {"scheduler": {"x": 1}}, {"name": "adam", "sd_G": {}}, 5)
    torch.save(ckpt, syn)
    return te, syn


@pytest.mark.slow
def test_export_writes_half_weights_that_predict_like_the_originals(tmp_path, trained):
    te, syn = trained
    out = tmp_path / "model"
    code = train_main(
        ["export", str(out), "--text-encoder", str(te), "--synthesis", str(syn)]
        + ["--name", "tiny-test", "--intended-use", "tests only", "--quiet"]
    )
    assert code == 0
    te_out, syn_out = out / "text_encoder.pt", out / "synthesis.pth"
    sd = torch.load(syn_out, weights_only=True)["model_G"]["sd_G"]
    assert sd["encoder.head.0.weight"].dtype == torch.float16
    assert torch.load(syn_out, weights_only=True)["optimizer_G"] == {}
    assert syn_out.stat().st_size < syn.stat().st_size
    meta = checkpoint_metadata(syn_out)
    assert meta["model_name"] == "tiny-test" and meta["intended_use"] == "tests only"
    assert "scheduler" not in meta
    assert checkpoint_metadata(te_out)["transformer_heads"] == 4

    vol = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)
    settings = PatchSettings((12, 12, 12), (12, 12, 12))
    prompt = "Age: 30; Modality: T2w"
    before = Synthesizer(load_synthesis(syn).model, load_text_encoder(te).model, "cpu")
    after = Synthesizer(load_synthesis(syn_out).model, load_text_encoder(te_out).model, "cpu")
    a = before.synthesize(vol, prompt, settings)
    b = after.synthesize(vol, prompt, settings)
    # float16 storage: relative rounding ~5e-4 per weight
    assert np.abs(a - b).max() < 0.02 * (np.abs(a).max() + 1e-6)
    assert np.abs(a - b).max() > 0  # really rounded


def test_export_refuses_a_text_encoder_without_recorded_heads(tmp_path, trained):
    from tests.conftest import SMALL

    _, syn = trained
    code = train_main(
        ["export", str(tmp_path / "m"), "--text-encoder", str(SMALL / "text_encoder.pt")]
        + ["--synthesis", str(syn), "--name", "x", "--intended-use", "y", "--quiet"]
    )
    assert code == 65
    assert not (tmp_path / "m" / "synthesis.pth").exists()
