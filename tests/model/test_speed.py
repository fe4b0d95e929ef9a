"""The --speed presets: reference is the authors' loop, default changes nothing inside the brain,
fast stays within its documented PSNR; patch selection and the mask on the output grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import SMALL, fixture_heads
from tumsyn_bids.evaluation.metrics import psnr
from tumsyn_bids.model import PatchSettings, Synthesizer, load_synthesis, load_text_encoder
from tumsyn_bids.model.inference import (
    Sampling,
    mask_on_grid,
    plan_patches,
    select_patches,
)
from tumsyn_bids.model.speed import FAST_MIN_FOREGROUND, PRESETS, SPEEDS, preset
from tumsyn_bids.model.volume import load_volume


@pytest.fixture(scope="module")
def volume():
    return load_volume(SMALL / "input_T1w.nii.gz").data  # (z, y, x) = (27, 23, 21)


@pytest.fixture(scope="module")
def synthesizers():
    """The small reference checkpoints, as each preset builds them (all fused), and the
    network as loaded (``"plain"``)."""

    def build(name: str) -> Synthesizer:
        net = load_synthesis(SMALL / "synthesis.pth").model
        text = load_text_encoder(SMALL / "text_encoder.pt", heads=fixture_heads(SMALL)).model
        return Synthesizer(net, text, "cpu", **preset(name).synthesizer_options("cpu"))

    built = {name: build(name) for name in SPEEDS}
    net = load_synthesis(SMALL / "synthesis.pth").model
    text = load_text_encoder(SMALL / "text_encoder.pt", heads=fixture_heads(SMALL)).model
    built["plain"] = Synthesizer(net, text, "cpu")  # the network as loaded
    return built


def _brain(shape: tuple[int, int, int], centre: float = 0.4, radius: float = 0.25) -> np.ndarray:
    """An ellipsoid "brain" (centre and semi-axes as fractions of each side); by default small
    enough that some patches hold none of it."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [n * centre for n in shape]
    r = [n * radius for n in shape]
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1


def test_presets_are_what_the_docs_say():
    assert SPEEDS == ("reference", "default", "fast")
    ref, default, fast = (PRESETS[s] for s in SPEEDS)
    assert (ref.reference, ref.fused, ref.min_foreground) == (True, True, 0.0)
    assert (default.reference, default.fused, default.min_foreground) == (False, True, 0.0)
    assert (fast.reference, fast.fused, fast.min_foreground) == (False, True, FAST_MIN_FOREGROUND)
    assert preset(None) is default
    with pytest.raises(ValueError, match="unknown speed 'ludicrous'"):
        preset("ludicrous")
    # precision: bf16 for fast on CUDA only, an explicit choice wins, bf16 never on the CPU
    assert fast.precision("cuda") == "bf16" and fast.precision("cpu") == "fp32"
    assert default.precision("cuda") == "fp32" and fast.precision("cuda", "fp32") == "fp32"
    assert default.precision("cuda", "bf16") == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        fast.precision("cpu", "bf16")
    with pytest.raises(ValueError, match="reference runs in fp32"):
        ref.precision("cuda", "bf16")
    # the reference preset never skips decoding, whatever the caller does with the output
    assert ref.engine_options(masked_output=True)["decode_outside_mask"] is True
    assert default.engine_options(masked_output=True)["decode_outside_mask"] is False
    assert default.engine_options()["decode_outside_mask"] is True


def test_reference_preset_is_reference_mode_on_the_fused_copy(synthesizers, volume):
    """--speed reference runs reference mode (the authors' placement, every patch) on the fused
    copy: the network as loaded in reference mode to float32 rounding, and a mask changes
    nothing."""
    prompt = "Age: 16; Gender: F; Modality: T2w"
    ref = synthesizers["reference"]
    assert ref.fused_network is not None
    settings = PatchSettings((10, 10, 10), **preset("reference").engine_options(True))
    got = ref.synthesize(volume, prompt, settings, mask=_brain(volume.shape))
    assert ref.last_stats.skipped == 0  # the authors' loop computes every patch
    assert np.array_equal(got, ref.synthesize(volume, prompt, settings))
    plain = synthesizers["plain"].synthesize(
        volume, prompt, PatchSettings((10, 10, 10), reference=True)
    )
    assert np.abs(got - plain).max() <= 1e-5


def test_default_preset_equals_the_plain_path_inside_the_brain(synthesizers, volume):
    """Fused network, foreground-only patches, decoding next to the mask only: max |diff| <=
    1e-4 inside the brain against the plain network on every patch and every voxel."""
    prompt = "Age: 16; Gender: F; Modality: T2w"
    brain = _brain(volume.shape)
    plain = synthesizers["plain"].synthesize(volume, prompt, PatchSettings((8, 8, 8)))
    default = synthesizers["default"]
    settings = PatchSettings((8, 8, 8), **preset("default").engine_options(masked_output=True))
    got = default.synthesize(volume, prompt, settings, mask=brain)
    stats = default.last_stats
    assert stats.skipped > 0 and stats.computed + stats.skipped == stats.planned
    assert stats.decoded < stats.computed * 8**3  # not every query point of every patch
    assert np.abs(got - plain)[brain].max() <= 1e-4
    assert np.all(got[~mask_on_grid(brain, Sampling.identity(volume.shape))] == 0)


def test_fast_preset_skips_patches_within_its_psnr(synthesizers, volume):
    """A brain about three patch sides across, as a head's is (1 mm, 60-voxel patches): the
    skipped patches' brain voxels are at the rim and keep other patches."""
    prompt = "Age: 16; Gender: F; Modality: T2w"
    brain = _brain(volume.shape, centre=0.5, radius=0.5)
    default, fast = synthesizers["default"], synthesizers["fast"]
    options = {"patch_size": (6, 6, 6), "overlap": 0.5}
    settings = PatchSettings(**options, **preset("default").engine_options(True))
    ref = default.synthesize(volume, prompt, settings, mask=brain)
    computed = default.last_stats.computed
    settings = PatchSettings(**options, **preset("fast").engine_options(True))
    got = fast.synthesize(volume, prompt, settings, mask=brain)
    assert fast.last_stats.computed < computed  # it does skip patches here
    assert np.isfinite(got).all() and np.all(got[brain] != 0)  # every brain voxel computed
    peak = ref[brain].max() - ref[brain].min()
    assert psnr(got / peak, ref / peak, brain) >= 40.0


def test_select_patches_keeps_every_brain_voxel_covered():
    shape = (40, 44, 36)
    brain = _brain(shape)
    settings = PatchSettings((10, 10, 10), overlap=0.5)
    jobs = plan_patches(shape, settings)

    def coverage(kept):
        cover = np.zeros(shape, dtype=int)
        for j in kept:
            cover[tuple(slice(s, s + 10) for s in j.start)] += 1
        return cover

    exact = select_patches(jobs, brain, settings.patch_size)
    # no patch without brain, and every patch with brain: the brain's coverage is unchanged
    assert np.array_equal(coverage(exact)[brain], coverage(jobs)[brain])
    assert len(exact) < len(jobs)
    previous = len(exact)
    for fraction in (0.05, 0.2, 0.5, 0.9):
        kept = select_patches(jobs, brain, settings.patch_size, fraction)
        assert coverage(kept)[brain].min() >= 1, fraction
        assert len(kept) <= previous
        previous = len(kept)
        assert kept == select_patches(jobs, brain, settings.patch_size, fraction)  # deterministic
        assert [jobs.index(j) for j in kept] == sorted(jobs.index(j) for j in kept)  # in order
    assert previous < len(exact)


def test_mask_on_grid_holds_any_resampled_mask():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 10, 11)) > 0.95
    assert np.array_equal(mask_on_grid(mask, Sampling.identity(mask.shape)), mask)
    fine = Sampling((27, 30, 33), (-1 / 3, -1 / 3, -1 / 3), (1 / 3, 1 / 3, 1 / 3))
    near = mask_on_grid(mask, fine)
    assert near.shape == (27, 30, 33)
    positions = [np.clip(o + np.arange(n) * s, 0, m - 1) for n, o, s, m in
                 zip(fine.shape, fine.origin, fine.step, mask.shape, strict=True)]  # fmt: skip
    nearest = mask[np.ix_(*[np.rint(p).astype(int) for p in positions])]
    assert near[nearest].all()  # nearest-neighbour resampling lies inside
    # trilinear resampling > 0 lies inside too
    import scipy.ndimage

    coords = np.stack(np.meshgrid(*positions, indexing="ij"))
    linear = scipy.ndimage.map_coordinates(mask.astype(float), coords, order=1) > 1e-9
    assert near[linear].all()
    assert near.sum() < near.size / 2  # and it is not everything


def test_streamed_key_value_gate_equals_the_whole_one():
    """The gate with the key/value matrix in row slabs (tokens cut at slab boundaries) equals
    the one formed whole, in float64."""
    from tumsyn_bids.model.fused import FastFusionBlock

    block = load_synthesis(SMALL / "synthesis.pth").model.fusion.block[0].double()
    fast = FastFusionBlock(block)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32, 7, 9, 8, generator=gen, dtype=torch.float64) * 3
    text = torch.randn(2, 1, 32, generator=gen, dtype=torch.float64)
    with torch.inference_mode():
        expected = block(x, text)
        for budget in (1000, 504, 505, 64, 1):  # N = 504 voxels, tokens of 64 values
            fast.KV_BUDGET = budget
            torch.testing.assert_close(fast(x, text), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_default_preset_on_cuda_is_float32_exact(small, small_settings, small_prompts, volume):
    """On CUDA the default preset (fused network, fp32) runs without TF32 by itself: the
    authors' outputs to 1e-4, also inside a brain mask with foreground-only patches."""
    run = small_settings["runs"]["same_res"]
    net = load_synthesis(small / "synthesis.pth").model
    text = load_text_encoder(small / "text_encoder.pt", heads=fixture_heads(small)).model
    synth = Synthesizer(net, text, "cuda", **preset("default").synthesizer_options("cuda"))
    assert (synth.precision, synth.fused_network is not None) == ("fp32", True)
    assert torch.backends.cudnn.allow_tf32  # PyTorch's default, which the engine overrides
    settings = PatchSettings(tuple(run["crop_size"]), overlap=run["overlap_ratio"], batch_size=4,
                             **preset("default").engine_options(masked_output=True))  # fmt: skip
    brain = _brain(volume.shape, centre=0.5, radius=0.45)
    out = synth.synthesize(volume, small_prompts[f"cleaned_{run['prompt']}"], settings, mask=brain)
    expected = np.load(small / "expected_same_res.npy")
    assert np.abs(out - expected)[brain].max() <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_fast_preset_on_cuda_is_bf16_and_within_40_db_on_a_simulated_head(tmp_path):
    """The demo model on a 2 mm simulated head with its brain mask: fast (bf16, fewer patches)
    against default (fp32) inside the brain."""
    import nibabel as nib

    from tumsyn_bids.cli.simulate import main as simulate
    from tumsyn_bids.model.bundled import demo_weights
    from tumsyn_bids.model.volume import to_model_order

    options = ["--subjects", "1", "--modalities", "T1w", "--with-head", "--voxel-size", "2"]
    assert simulate([str(tmp_path / "head"), *options]) == 0
    head = np.asarray(nib.load(next((tmp_path / "head").rglob("*_T1w.nii.gz"))).dataobj)
    mask = nib.load(next((tmp_path / "head").rglob("*_desc-brain_mask.nii.gz"))).dataobj
    head, brain = to_model_order(head.astype(np.float32)), to_model_order(np.asarray(mask) > 0)
    syn, te = demo_weights()
    outputs, computed = {}, {}
    for name in ("default", "fast"):
        synth = Synthesizer(load_synthesis(syn).model, load_text_encoder(te).model, "cuda",
                            **preset(name).synthesizer_options("cuda"))  # fmt: skip
        settings = PatchSettings((20, 20, 20), batch_size=8, **preset(name).engine_options(True))
        outputs[name] = synth.synthesize(head, "Age: 40; Modality: T2w", settings, mask=brain)
        computed[name] = synth.last_stats.computed
        assert synth.precision == ("bf16" if name == "fast" else "fp32")
    assert computed["fast"] < computed["default"]
    default = outputs["default"]
    peak = default[brain].max() - default[brain].min()
    assert psnr(outputs["fast"] / peak, default / peak, brain) >= 40.0
