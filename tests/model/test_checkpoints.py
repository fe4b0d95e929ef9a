"""Strict loading of the authors' stage-2 format, and of the published architecture's shapes."""

import json

import pytest
import torch

from tests.conftest import DATA, SMALL
from tumsyn_bids.model import (
    CheckpointError,
    SynthesisConfig,
    load_synthesis,
    load_text_encoder,
    synthesis_checkpoint,
)

OFFICIAL = json.loads((DATA / "official-architecture.json").read_text())


def test_small_config_inferred_from_shapes():
    cfg = load_synthesis(SMALL / "synthesis.pth").model.config
    assert cfg == SynthesisConfig(
        n_resblocks=2,
        n_feats=8,
        out_dim=32,
        res_scale=1.0,
        decoder_hidden=(64, 64, 32, 16),
        encoder_name="resencoder-64",
    )


def _small_ckpt():
    return torch.load(SMALL / "synthesis.pth", weights_only=True)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_strict_load_refuses_mismatch(tmp_path, change):
    ckpt = _small_ckpt()
    sd = ckpt["model_G"]["sd_G"]
    if change == "missing":
        del sd["fusion.block.0.norm3.body.bias"]
        match = "missing keys"
    elif change == "unexpected":
        sd["fusion.block.0.c_attn.temperature"] = torch.ones(8, 1, 1)
        match = "unexpected keys"
    else:
        sd["fusion.block.0.c_attn.proj.bias"] = torch.zeros(5)
        match = "size mismatch"
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=match):
        load_synthesis(path)


def test_res_scale_from_encoder_defaults(tmp_path):
    """No res_scale in args: the registered name's default decides (0.1 for resencoder-256)."""
    ckpt = _small_ckpt()
    ckpt["model_G"]["args"]["encoder_spec"] = {"name": "resencoder-256", "args": {}}
    path = tmp_path / "c.pth"
    torch.save(ckpt, path)
    assert load_synthesis(path).model.config.res_scale == 0.1
    ckpt["model_G"]["args"]["encoder_spec"] = {"name": "my-encoder", "args": {}}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="unknown encoder"):
        load_synthesis(path)


def test_roundtrip_of_our_format(tmp_path):
    model = load_synthesis(SMALL / "synthesis.pth").model
    path = tmp_path / "ours.pth"
    torch.save(synthesis_checkpoint(model, extra={"model_card": "test"}), path)
    again = load_synthesis(path)
    assert again.model.config == model.config
    assert again.extra["model_card"] == "test"
    for (k, a), (_, b) in zip(
        model.state_dict().items(), again.model.state_dict().items(), strict=False
    ):
        assert torch.equal(a, b), k


def _official_state_dict(stage: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors of the published shapes (float16 to halve the memory; zero-stride views
    for the ~1e9-element image tower that text inference never reads)."""
    sd = {}
    for entry in OFFICIAL[stage]["state_dict"]:
        key, shape, dtype = entry["key"], entry["shape"], entry["dtype"]
        if dtype == "int64":
            sd[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.startswith("visual."):
            sd[key] = torch.zeros(1, dtype=torch.float16).expand(shape)
        elif key.endswith("running_var"):
            sd[key] = (torch.rand(shape, generator=generator) + 0.5).half()
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            scale = 0.02 if len(shape) < 2 else fan_in**-0.5
            sd[key] = (torch.randn(shape, generator=generator) * scale).half()
    return sd


@pytest.mark.slow
def test_official_shapes_load_strictly_and_run(tmp_path):
    gen = torch.Generator().manual_seed(0)
    syn_sd = _official_state_dict("stage2_synthesis", gen)
    syn_path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "model_G": {**OFFICIAL["stage2_synthesis"]["constructor_config"], "sd_G": syn_sd},
            "optimizer_G": {},
            "epoch": 300,
        },
        syn_path,
    )
    del syn_sd
    clip_sd = _official_state_dict("stage1_text_encoder", gen)
    clip_path = tmp_path / "checkpoint_CLIP.pt"
    torch.save({"epoch": 1, "global_step": 1, "model_state_dict": clip_sd}, clip_path)
    del clip_sd

    net = load_synthesis(syn_path).model
    cfg = net.config
    assert (cfg.n_resblocks, cfg.n_feats, cfg.out_dim, cfg.res_scale) == (24, 256, 768, 0.1)
    assert cfg.decoder_hidden == (3072, 3072, 768, 256)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == OFFICIAL["stage2_synthesis"]["totals"]["n_parameters"]

    text = load_text_encoder(clip_path).model
    tc = text.config
    assert (tc.width, tc.layers, tc.heads, tc.embed_dim, tc.context_length) == (512, 8, 8, 768, 90)

    from tumsyn_bids.model import PatchSettings, Synthesizer

    synth = Synthesizer(net, text, device="cpu")
    vol = torch.rand(10, 9, 8, generator=gen).numpy() * 100
    out = synth.synthesize(vol, "Age: 30; Modality: T2w", PatchSettings((8, 8, 8), (8, 8, 8)))
    assert out.shape == (10, 9, 8)
    assert torch.isfinite(torch.from_numpy(out)).all()


def test_training_patch_size_is_what_stage_2_recorded(tmp_path):
    from tumsyn_bids.model.bundled import demo_weights
    from tumsyn_bids.model.metadata import EXTRA_KEY, training_patch_size

    assert training_patch_size(demo_weights()[0]) == 20  # the recipe's --lr-size
    assert training_patch_size(SMALL / "synthesis.pth") is None  # the authors' format
    ckpt = torch.load(SMALL / "synthesis.pth", map_location="cpu", weights_only=True)
    ckpt[EXTRA_KEY] = {"sampling": {"lr_size": 12, "sample_q": 64}}
    torch.save(ckpt, tmp_path / "trained.pth")
    assert training_patch_size(tmp_path / "trained.pth") == 12
