"""model.fused against the plain network and the authors' loop."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
    FastDecoder,
    FastFusionBlock,
    FusedSynthesisNetwork,
    fold_batch_norm,
    fuse_for_inference,
    trilinear_corners,
)
from tumsyn_bids.model.inference import make_coord
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


def test_fused_network_in_float64_takes_the_portable_path(small):
    """float64 skips the oneDNN calls: the code path CUDA takes, checked here to 1e-10."""
    net = load_synthesis(small / "synthesis.pth").model.double()
    fused = fuse_for_inference(net)
    fused.fusion[0].SLAB_ROWS = 40  # slabs of a few planes
    gen = torch.Generator().manual_seed(9)
    patch = torch.rand(2, 1, 10, 9, 8, generator=gen, dtype=torch.float64)
    text = torch.randn(2, 32, generator=gen, dtype=torch.float64)
    coords = torch.rand(2, 700, 3, generator=gen, dtype=torch.float64) * 2.2 - 1.1
    with torch.inference_mode():
        expected = net(patch, coords, text)
        for order in ("plain", "factorised"):
            fused.decode_order = order
            got = fused(patch, coords, text)
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


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
@pytest.mark.parametrize("slab_planes", [None, 1, 2, 3])
def test_fast_fusion_block_equals_authors_block(small, layout, slab_planes):
    """Voxel-major fusion block vs the authors' block, with the raw key/value reshape; the
    feed-forward in slabs of 1-3 z-planes (7 planes: the last slab is shorter) or whole."""
    block = load_synthesis(small / "synthesis.pth").model.fusion.block[0]
    fast = FastFusionBlock(block)
    if slab_planes is not None:
        fast.SLAB_ROWS = slab_planes * 9 * 8 / torch.get_num_threads()  # per thread
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


def _sr_grid(side: int, scale: int, batch: int) -> torch.Tensor:
    """The engine's query grid of a cubic patch at an integer scale: (B, (side*scale)^3, 3)."""
    c = make_coord(side * scale)
    g = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(1, -1, 3)
    return g.expand(batch, -1, -1).contiguous()


def test_trilinear_corners_reproduce_grid_sample():
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(1, 6, 5, 7, 4, generator=gen)
    coords = torch.cat(
        [
            torch.rand(1, 400, 3, generator=gen) * 2.6 - 1.3,  # inside, near and outside
            _sr_grid(4, 1, 1)[:, :50] * torch.tensor([5 / 4, 7 / 4, 1.0]),  # voxel centres
            torch.tensor([[[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]),
        ],
        1,
    )
    expected = F.grid_sample(feats, coords.flip(-1)[:, None, None], align_corners=False)
    expected = expected[0, :, 0, 0].t()
    index, weight, _ = trilinear_corners(coords[0], (5, 7, 4))
    fv = feats[0].permute(1, 2, 3, 0).reshape(-1, 6)
    got = F.embedding_bag(index, fv, per_sample_weights=weight, mode="sum")
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    outside = (coords[0].abs() > 1.3).any(-1)
    assert torch.all(weight.sum(-1)[outside] == 0) and outside.any()


@pytest.fixture(scope="module")
def demo_decoder():
    net = load_synthesis(demo_weights()[0]).model
    return net, FastDecoder(net.imnet)


@pytest.mark.parametrize("order", ["plain", "factorised"])
@pytest.mark.parametrize("budget", [None, 6 * 5 * 256 * 2, 6 * 5 * 256 * 3, 6 * 5 * 256 * 4])
def test_fast_decoder_equals_plain_decode_at_the_patch_border(demo_decoder, order, budget):
    """2x super-resolution of a 7x6x5 feature patch: the outermost queries sit a quarter voxel
    outside, where grid_sample blends in its zero padding; small budgets force z-slabs of 1-3
    planes (7 planes do not divide evenly) and small chunks split the queries."""
    net, decoder = demo_decoder
    if budget is not None:
        decoder = copy.deepcopy(decoder)
        decoder.projection_budget = budget
    gen = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 64, 7, 6, 5, generator=gen) * 2
    axes = [make_coord(2 * n) for n in (7, 6, 5)]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3)
    coords = torch.cat([coords, torch.rand(1, 300, 3, generator=gen) * 2.4 - 1.2], 1)
    coords = coords.expand(2, -1, -1).contiguous()
    with torch.inference_mode():
        expected = net.decode(feats, coords)
        got = decoder(feats, coords, chunk=333, order=order)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    border = (coords[0].abs() > 1 - 1 / 7).any(-1)
    assert border.sum() > 100  # the border queries are part of the comparison


def test_bias_goes_after_sampling():
    """Sampling commutes with the first layer's weights, not with its bias: with zero padding a
    border query's weights sum to less than 1, so sample(W F + b) != sample(W F) + b there,
    while inside the patch the two agree."""
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(1, 8, 4, 4, 4, generator=gen)
    weight, bias = torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen)
    coords = _sr_grid(4, 2, 1)[0]  # 8^3 queries, the outermost 1/4 voxel outside
    index, wts, _ = trilinear_corners(coords, (4, 4, 4))
    fv = feats[0].permute(1, 2, 3, 0).reshape(-1, 8)
    sampled = F.embedding_bag(index, fv, per_sample_weights=wts, mode="sum")
    reference = sampled @ weight.t() + bias  # the plain order: sample, then the layer
    after = F.embedding_bag(index, fv @ weight.t(), per_sample_weights=wts, mode="sum") + bias
    before = F.embedding_bag(index, fv @ weight.t() + bias, per_sample_weights=wts, mode="sum")
    torch.testing.assert_close(after, reference, rtol=1e-5, atol=1e-5)
    inside = wts.sum(-1) > 1 - 1e-6
    torch.testing.assert_close(before[inside], reference[inside], rtol=1e-5, atol=1e-5)
    assert (before[~inside] - reference[~inside]).abs().max() > 0.1


def test_auto_order_follows_the_query_to_voxel_ratio(demo_decoder):
    _, demo = demo_decoder
    assert not demo.factorised_pays(8000, 8000)  # same resolution
    assert demo.factorised_pays(27 * 8000, 8000)  # 3x super-resolution
    published = FastDecoder(nn.Sequential(nn.Linear(771, 3072), nn.ReLU(), nn.Linear(3072, 1)))
    assert not published.factorised_pays(216000, 216000)
    assert published.factorised_pays(8 * 216000, 216000)
    with pytest.raises(ValueError, match="order"):
        demo(torch.zeros(1, 64, 2, 2, 2), torch.zeros(1, 1, 3), order="fast")


@pytest.mark.parametrize(
    ("case", "order"),
    [
        ("same_res", "auto"),
        ("sr2", "auto"),
        pytest.param("sr2", "factorised", marks=pytest.mark.slow),
    ],
)
def test_fused_default_mode_matches_authors_loop(
    small, small_settings, small_prompts, small_synthesizer, fused_small, volume, case, order
):
    fused_small.fused_network.decode_order = order
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
    fused_small.fused_network.decode_order = "auto"


def test_reference_mode_runs_the_fused_copy_to_float32_rounding(
    small, small_settings, small_prompts, small_synthesizer, fused_small, volume, monkeypatch
):
    """Reference mode keeps the authors' placement and grid; with a fused copy it runs that copy
    (--speed reference does): the authors' outputs to 1e-4, the network as loaded to 1e-5."""
    run = small_settings["runs"]["same_res"]
    settings = PatchSettings(
        tuple(run["crop_size"]),
        tuple(run["coord_size"]),
        run["overlap_ratio"],
        batch_size=4,
        reference=True,
    )
    prompt = small_prompts["cleaned_target1"]
    calls = []
    features = fused_small.fused_network.features
    monkeypatch.setattr(
        fused_small.fused_network, "features", lambda *a: calls.append(1) or features(*a)
    )
    out = fused_small.synthesize(volume, prompt, settings)
    assert calls  # the fused copy computed the patches
    assert np.abs(out - np.load(small / "expected_same_res.npy")).max() <= 1e-4
    assert np.abs(out - small_synthesizer.synthesize(volume, prompt, settings)).max() <= 1e-5


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


@pytest.mark.parametrize("order", ["plain", "factorised"])
def test_fused_under_bf16_autocast_is_as_close_as_plain(demo_decoder, order):
    """The fast preset may run bf16 autocast (CUDA): the fused network must keep working and
    stay as close to float32 as the plain network under the same autocast (run on the CPU)."""
    net, _ = demo_decoder
    fused = fuse_for_inference(net)
    fused.decode_order = order
    gen = torch.Generator().manual_seed(8)
    patch = torch.rand(2, 1, 12, 12, 12, generator=gen)
    text = torch.randn(2, 64, generator=gen)
    coords = torch.rand(2, 2000, 3, generator=gen) * 2 - 1
    with torch.inference_mode():
        exact = net(patch, coords, text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = net(patch, coords, text).float()
            got = fused(patch, coords, text)
    assert got.dtype == torch.bfloat16
    err_plain = (plain - exact).abs().mean().item()
    err_fused = (got.float() - exact).abs().mean().item()
    assert err_fused <= 2 * err_plain + 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("order", ["plain", "factorised"])
def test_fused_network_on_cuda_matches_authors_loop(
    small, small_settings, small_prompts, volume, order
):
    """The fused network on CUDA (float32, TF32 off) against the authors' expected outputs."""
    net = load_synthesis(small / "synthesis.pth").model
    text = load_text_encoder(small / "text_encoder.pt", heads=fixture_heads(small)).model
    synth = Synthesizer(net, text, device="cuda", fused=True)
    synth.fused_network.decode_order = order
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for case in ("same_res", "sr2"):
            run = small_settings["runs"][case]
            settings = PatchSettings(
                tuple(run["crop_size"]),
                tuple(run["coord_size"]),
                run["overlap_ratio"],
                batch_size=4,
            )
            out = synth.synthesize(volume, small_prompts[f"cleaned_{run['prompt']}"], settings)
            assert np.abs(out - np.load(small / f"expected_{case}.npy")).max() <= 1e-4, case
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
