"""model.fused against the plain network and the authors' loop."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import FULL, fixture_heads
from tumsyn_bids.model import (
    PatchSettings,
    SynthesisConfig,
    SynthesisNetwork,
    Synthesizer,
    load_synthesis,
    load_text_encoder,
    tokenize,
)
from tumsyn_bids.model.bundled import demo_weights
from tumsyn_bids.model.fused import (
    FastFusionBlock,
    FusedSynthesisNetwork,
    fold_batch_norm,
    fuse_for_inference,
)
from tumsyn_bids.model.volume import load_volume


@pytest.fixture(scope="module")
def volume(small):
    return load_volume(small / "input_T1w.nii.gz").data


@pytest.fixture(scope="module")
def fused_small(small):
    net = load_synthesis(small / "synthesis.pth").model
    text = load_text_encoder(small / "text_encoder.pt", heads=fixture_heads(small)).model
    return Synthesizer(net, text, device="cpu", fused=True)


@pytest.fixture(scope="module")
def demo_pair():
    syn, te = demo_weights()
    plain = Synthesizer(load_synthesis(syn).model, load_text_encoder(te).model, "cpu")
    fused = Synthesizer(load_synthesis(syn).model, load_text_encoder(te).model, "cpu", fused=True)
    return plain, fused


def _random_bn(channels: int, gen: torch.Generator) -> nn.BatchNorm3d:
    bn = nn.BatchNorm3d(channels).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=gen)
        bn.bias.normal_(0, 0.3, generator=gen)
        bn.running_mean.normal_(0, 0.3, generator=gen)
        bn.running_var.uniform_(0.2, 2.0, generator=gen)
    return bn


@pytest.mark.parametrize(("groups", "bias", "scale"), [(1, True, 0.1), (4, False, 1.0)])
def test_fold_batch_norm_equals_conv_then_bn(groups, bias, scale):
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv3d(8, 12, 3, padding=1, groups=groups, bias=bias)
    bn = _random_bn(12, gen)
    x = torch.randn(2, 8, 6, 5, 7, generator=gen)
    weight = conv.weight.detach().clone()
    with torch.no_grad():
        conv64, bn64 = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
        expected = (bn64(conv64(x.double())) * scale).float()
        got = fold_batch_norm(conv, bn, scale)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(conv.weight, weight)  # the source convolution is untouched


def test_fold_batch_norm_refuses_missing_statistics():
    bn = nn.BatchNorm3d(4, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        fold_batch_norm(nn.Conv3d(4, 4, 1), bn)


def test_fused_network_is_a_copy_for_inference_only(small):
    net = load_synthesis(small / "synthesis.pth").model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse_for_inference(net)
    assert isinstance(fused, FusedSynthesisNetwork)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(isinstance(m, nn.BatchNorm3d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()
    net.train()  # the source still trains
    assert net.training


@pytest.mark.parametrize("res_scale", [0.1, 1.0])
def test_fused_features_equal_plain_with_residual_scale(res_scale):
    """A random mid-size network with res_scale != 1 and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = SynthesisNetwork(SynthesisConfig(3, 16, 32, res_scale, (64, 32), encoder_name="x"))
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.load_state_dict(_random_bn(m.num_features, gen).state_dict())
    net.eval()
    fused = fuse_for_inference(net)
    patch = torch.rand(2, 1, 12, 12, 12, generator=gen)
    text = torch.randn(2, 32, generator=gen)
    coords = torch.rand(2, 500, 3, generator=gen) * 2.2 - 1.1
    with torch.inference_mode():
        enc, enc_fused = net.encoder(patch), fused.encoder(patch)
        torch.testing.assert_close(enc_fused, enc, rtol=1e-5, atol=1e-5 * enc.abs().max().item())
        np.testing.assert_allclose(
            fused(patch, coords, text).numpy(), net(patch, coords, text).numpy(), atol=1e-5
        )


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_fast_fusion_block_equals_authors_block(small, layout):
    """Voxel-major fusion block vs the authors' block, with the raw key/value reshape."""
    block = load_synthesis(small / "synthesis.pth").model.fusion.block[0]
    fast = FastFusionBlock(block)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 32, 7, 9, 8, generator=gen) * 3).contiguous(memory_format=layout)
    text = torch.randn(2, 1, 32, generator=gen)
    with torch.inference_mode():
        expected = block(x, text)
        got = fast(x, text)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # the gate depends on the whole patch: changing one voxel moves every output voxel
        x2 = x.clone()
        x2[:, :, 0, 0, 0] += 5
        moved = (fast(x2, text) - got).abs()[:, :, -1, -1, -1]
        assert moved.max() > 1e-4


@pytest.mark.parametrize("case", ["same_res", "sr2"])
def test_fused_default_mode_matches_authors_loop(
    small, small_settings, small_prompts, small_synthesizer, fused_small, volume, case
):
    run = small_settings["runs"][case]
    settings = PatchSettings(
        tuple(run["crop_size"]), tuple(run["coord_size"]), run["overlap_ratio"], batch_size=2
    )
    prompt = small_prompts[f"cleaned_{run['prompt']}"]
    out = fused_small.synthesize(volume, prompt, settings)
    expected = np.load(small / f"expected_{case}.npy")
    assert np.abs(out - expected).max() <= 1e-4
    plain = small_synthesizer.synthesize(volume, prompt, settings)
    assert np.abs(out - plain).max() <= 1e-5


def test_reference_mode_never_runs_the_fused_copy(
    small_settings, small_prompts, small_synthesizer, fused_small, volume
):
    run = small_settings["runs"]["same_res"]
    settings = PatchSettings(
        tuple(run["crop_size"]),
        tuple(run["coord_size"]),
        run["overlap_ratio"],
        batch_size=4,
        reference=True,
    )
    prompt = small_prompts["cleaned_target1"]
    assert np.array_equal(
        fused_small.synthesize(volume, prompt, settings),
        small_synthesizer.synthesize(volume, prompt, settings),
    )


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1, 2])
def test_fused_demo_model_equals_plain(demo_pair, small_prompts, volume, scale):
    plain, fused = demo_pair
    settings = PatchSettings((20, 20, 20), (20 * scale,) * 3, batch_size=2)
    prompt = small_prompts["cleaned_target1"]
    a = plain.synthesize(volume, prompt, settings)
    b = fused.synthesize(volume, prompt, settings)
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a).max() > 0.1  # the comparison is not between two near-zero outputs


def test_fused_demo_model_patch_equals_plain(small_prompts):
    """Fast lane: one batch of two patches through the bundled model, fused vs plain."""
    syn, te = demo_weights()
    net = load_synthesis(syn).model
    fused = fuse_for_inference(net)
    text = load_text_encoder(te).model
    gen = torch.Generator().manual_seed(4)
    patch = torch.rand(2, 1, 20, 20, 20, generator=gen)
    coords = torch.rand(2, 3000, 3, generator=gen) * 2.1 - 1.05
    with torch.inference_mode():
        emb = text(tokenize(small_prompts["cleaned_target1"])).expand(2, -1)
        a, b = net(patch, coords, emb), fused(patch, coords, emb)
    assert (a - b).abs().max().item() <= 1e-5
    assert a.abs().max().item() > 0.1


@pytest.mark.slow
@pytest.mark.skipif(not FULL.is_dir(), reason="full-size fixture (../shared) not present")
def test_fused_full_size_fixture_first_patch():
    net = load_synthesis(FULL / "synthesis.pth").model
    text = load_text_encoder(FULL / "text_encoder.pt", heads=fixture_heads(FULL)).model
    synth = Synthesizer(copy.deepcopy(net), text, device="cpu", fused=True)
    prompts = json.loads((FULL / "prompts.json").read_text())
    inter = np.load(FULL / "intermediates_patch0.npz")
    with torch.inference_mode():
        patch = torch.from_numpy(inter["same_res__input_patch"])
        feats = synth.fused_network.features(patch, synth.embed(prompts["cleaned_target1"]))
    np.testing.assert_allclose(feats.numpy(), inter["same_res__fusion_out"], atol=1e-4)
