"""The inference engine against outputs of the authors' own loop (tests/data fixtures)."""

import copy

import numpy as np
import pytest
import torch

from tests.conftest import FULL, fixture_heads
from tumsyn_bids.model import InputImageError, PatchSettings, Synthesizer, percentile_normalise
from tumsyn_bids.model.inference import plan_patches
from tumsyn_bids.model.volume import load_volume

CASES = ["same_res", "sr2", "aniso"]


def _settings(run: dict, **kw) -> PatchSettings:
    return PatchSettings(
        patch_size=tuple(run["crop_size"]),
        query_size=tuple(run["coord_size"]),
        overlap=run["overlap_ratio"],
        **kw,
    )


@pytest.fixture(scope="module")
def volume(small):
    return load_volume(small / "input_T1w.nii.gz").data


def test_normalisation_matches_reference(small, volume):
    got = percentile_normalise(volume)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.load(small / "normalized_input.npy"), rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_reference_patch_plan(small_settings, volume, case):
    run = small_settings["runs"][case]
    jobs = plan_patches(volume.shape, _settings(run, reference=True))
    assert [list(j.start) for j in jobs] == run["patch_starts"]
    assert [list(j.out_start) for j in jobs] == run["target_starts"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_reference_mode_matches_authors_loop(
    small, small_settings, small_prompts, small_synthesizer, volume, case
):
    run = small_settings["runs"][case]
    out = small_synthesizer.synthesize(
        volume, small_prompts[f"cleaned_{run['prompt']}"], _settings(run, reference=True)
    )
    expected = np.load(small / f"expected_{case}.npy")
    assert out.shape == expected.shape == tuple(run["output_shape"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["same_res", pytest.param("sr2", marks=pytest.mark.slow)])
def test_default_mode_equals_reference_for_cubic_integer_scale(
    small, small_settings, small_prompts, small_synthesizer, volume, case
):
    run = small_settings["runs"][case]
    settings = _settings(run, batch_size=4, decoder_chunk=5000)
    out = small_synthesizer.synthesize(volume, small_prompts[f"cleaned_{run['prompt']}"], settings)
    np.testing.assert_allclose(out, np.load(small / f"expected_{case}.npy"), rtol=1e-4, atol=1e-4)


def test_default_mode_samples_where_the_affine_says(small_settings, volume):
    """Non-cubic patch, non-integer scale: every query sits at (m + 0.5)/s - 0.5."""
    settings = _settings(small_settings["runs"]["aniso"])
    jobs = plan_patches(volume.shape, settings)
    out_shape = tuple(int(n * s) for n, s in zip(volume.shape, settings.scale, strict=False))
    covered = np.zeros(out_shape, dtype=int)
    for job in jobs:
        for axis in range(3):
            c, s, p0 = settings.patch_size[axis], settings.scale[axis], job.start[axis]
            u = job.coords[axis].double().numpy()
            position = p0 + ((u + 1) * c - 1) / 2  # align_corners=False: u -> input voxel
            m = job.out_start[axis] + np.arange(len(u))
            np.testing.assert_allclose(position, (m + 0.5) / s - 0.5, atol=1e-5)
            assert np.all(np.abs(u) <= 1)
        (oz, oy, ox), (nz, ny, nx) = job.out_start, job.out_shape
        covered[oz : oz + nz, oy : oy + ny, ox : ox + nx] += 1
    assert covered.min() >= 1


def test_reference_mode_is_not_consistent_for_non_integer_scale(small_settings, volume):
    """Documents the authors' truncating placement: at least one patch is off the output grid."""
    settings = _settings(small_settings["runs"]["aniso"], reference=True)
    errors = []
    for job in plan_patches(volume.shape, settings):
        c, s, p0 = settings.patch_size[2], settings.scale[2], job.start[2]
        u = job.coords[2].double().numpy()
        m = job.out_start[2] + np.arange(len(u))
        errors.append(np.abs(p0 + ((u + 1) * c - 1) / 2 - ((m + 0.5) / s - 0.5)).max())
    assert max(errors) > 0.1


@pytest.mark.slow
def test_batching_and_chunking_do_not_change_results(small_prompts, small_synthesizer, volume):
    prompt = small_prompts["cleaned_target2"]
    base = PatchSettings((16, 16, 16), (32, 32, 32), overlap=0.5)
    one = small_synthesizer.synthesize(volume, prompt, base)
    many = small_synthesizer.synthesize(
        volume, prompt, PatchSettings((16, 16, 16), (32, 32, 32), batch_size=5, decoder_chunk=777)
    )
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)


def test_small_volume_is_padded_and_cropped(small_prompts, small_synthesizer, volume):
    sub = volume[:12, :23, :9]
    out = small_synthesizer.synthesize(
        sub, small_prompts["cleaned_target1"], PatchSettings((20, 20, 20), (40, 40, 40))
    )
    assert out.shape == (24, 46, 18)
    assert np.isfinite(out).all()


@pytest.mark.slow
def test_prompt_changes_output_and_embedding_is_cached(small_prompts, small_synthesizer, volume):
    s = PatchSettings((20, 20, 20), (20, 20, 20))
    a = small_synthesizer.synthesize(volume, small_prompts["cleaned_target1"], s)
    b = small_synthesizer.synthesize(volume, small_prompts["cleaned_target2"], s)
    assert np.abs(a - b).mean() > 0.05
    assert small_synthesizer.embed("x") is small_synthesizer.embed("x")


def test_bad_inputs(small_synthesizer, volume):
    with pytest.raises(InputImageError, match="non-finite"):
        bad = volume.copy()
        bad[0, 0, 0] = np.inf
        small_synthesizer.synthesize(bad, "x")
    with pytest.raises(InputImageError, match="intensity range"):
        small_synthesizer.synthesize(np.zeros((30, 30, 30), np.float32), "x")
    with pytest.raises(ValueError, match="overlap"):
        PatchSettings(overlap=1.0)


def test_bf16_needs_cuda(small_synthesizer):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the CPU refusal cannot be observed")
    with pytest.raises(ValueError, match="CUDA"):
        Synthesizer(small_synthesizer.network, small_synthesizer.text_encoder, "cpu", "bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_bf16_close_to_fp32(small_prompts, small_synthesizer, volume):
    # Synthesizer moves the modules it is given: give the GPU one its own copies.
    net = copy.deepcopy(small_synthesizer.network)
    gpu = Synthesizer(net, copy.deepcopy(small_synthesizer.text_encoder), "cuda", "bf16")
    s = PatchSettings((20, 20, 20), (20, 20, 20), batch_size=4)
    ref = small_synthesizer.synthesize(volume, small_prompts["cleaned_target1"], s)
    out = gpu.synthesize(volume, small_prompts["cleaned_target1"], s)
    assert np.abs(out - ref).mean() < 0.05 * ref.std()


@pytest.mark.slow
@pytest.mark.skipif(not FULL.is_dir(), reason="full-size fixture (../shared) not present")
def test_full_size_fixture_same_res_and_first_patch():
    import json

    from tumsyn_bids.model import load_synthesis, load_text_encoder

    net = load_synthesis(FULL / "synthesis.pth").model
    text = load_text_encoder(FULL / "text_encoder.pt", heads=fixture_heads(FULL)).model
    synth = Synthesizer(net, text, device="cpu")
    prompts = json.loads((FULL / "prompts.json").read_text())
    run = json.loads((FULL / "settings.json").read_text())["runs"]["same_res"]
    inter = np.load(FULL / "intermediates_patch0.npz")
    with torch.inference_mode():
        patch = torch.from_numpy(inter["same_res__input_patch"])
        feats = net.features(patch, synth.embed(prompts["cleaned_target1"]))
    np.testing.assert_allclose(feats.numpy(), inter["same_res__fusion_out"], atol=1e-5)
    vol = load_volume(FULL / "input_T1w.nii.gz").data
    out = synth.synthesize(vol, prompts["cleaned_target1"], _settings(run, reference=True))
    np.testing.assert_allclose(out, np.load(FULL / "expected_same_res.npy"), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_memory_layout_does_not_change_results(small_prompts, small_synthesizer, volume):
    """Channels-last is a speed choice only (default on CPU; off on CUDA, where it is slower)."""
    assert small_synthesizer.memory_format == torch.channels_last_3d
    plain = Synthesizer(
        copy.deepcopy(small_synthesizer.network),
        copy.deepcopy(small_synthesizer.text_encoder),
        "cpu",
        channels_last=False,
    )
    assert plain.memory_format == torch.contiguous_format
    s = PatchSettings((20, 20, 20), (20, 20, 20))
    prompt = small_prompts["cleaned_target1"]
    ref = small_synthesizer.synthesize(volume, prompt, s)
    np.testing.assert_allclose(plain.synthesize(volume, prompt, s), ref, atol=1e-5)


ODD_REQUESTS = [(0.7,) * 3, (0.75,) * 3, (0.9,) * 3, (0.5, 0.6, 1.3)]


@pytest.mark.parametrize("request_mm", ODD_REQUESTS)
def test_exact_grid_queries_sit_where_the_affine_says(request_mm):
    """Default mode, any voxel size: every query of every patch reads input position
    origin + q * step (the grid's own map), and every output voxel is covered."""
    from tumsyn_bids.model.grid import output_grid
    from tumsyn_bids.model.volume import sampling_for

    shape_ijk = (21, 23, 27)
    grid = output_grid(shape_ijk, np.diag([1.0, 1.2, 1.5, 1.0]), voxel_size=request_mm)
    sampling = sampling_for(grid)
    settings = PatchSettings(patch_size=(12, 10, 8), overlap=0.5)
    covered = np.zeros(sampling.shape, dtype=int)
    for job in plan_patches(shape_ijk[::-1], settings, sampling):
        for axis in range(3):
            c, p0 = settings.patch_size[axis], job.start[axis]
            u = job.coords[axis].double().numpy()
            position = p0 + ((u + 1) * c - 1) / 2  # align_corners=False: u -> input voxel
            q = job.out_start[axis] + np.arange(len(u))
            expected = sampling.origin[axis] + q * sampling.step[axis]
            np.testing.assert_allclose(position, expected, atol=1e-5)
            assert np.all((position >= p0 - 0.5) & (position < p0 + c - 0.5))
        (oz, oy, ox), (nz, ny, nx) = job.out_start, job.out_shape
        covered[oz : oz + nz, oy : oy + ny, ox : ox + nx] += 1
    assert covered.min() >= 1


def test_exact_grid_values_match_the_source_grid_where_centres_coincide(
    small_prompts, small_synthesizer, volume
):
    """At a third of the voxel size the centred grid puts every third output voxel exactly on
    an input voxel centre: there the output must equal same-resolution synthesis (same
    patches, same coordinates), which it cannot if the grid were shifted or rounded."""
    from tumsyn_bids.model.grid import output_grid
    from tumsyn_bids.model.volume import sampling_for

    sub = np.ascontiguousarray(volume[:11, :13, :9])  # (z, y, x), odd sizes
    prompt = small_prompts["cleaned_target1"]
    settings = PatchSettings(patch_size=(8, 8, 8), overlap=0.5)
    same = small_synthesizer.synthesize(sub, prompt, settings)
    grid = output_grid(sub.shape[::-1], np.eye(4), voxel_size=1 / 3)
    assert grid.shape == (27, 39, 33)
    fine = small_synthesizer.synthesize(sub, prompt, settings, sampling=sampling_for(grid))
    assert fine.shape == (33, 39, 27)
    # (n - 1)/2 + (q - (3n - 1)/2)/3 = k  <=>  q = 3k + 1
    np.testing.assert_allclose(fine[1::3, 1::3, 1::3], same, rtol=0, atol=1e-5)
    assert np.abs(fine[0::3, 1::3, 1::3] - same).max() > 1e-3  # the others are new samples


def test_foreground_mask_skips_empty_patches_and_keeps_the_brain(
    small_prompts, small_synthesizer, volume
):
    prompt = small_prompts["cleaned_target1"]
    settings = PatchSettings(patch_size=(10, 10, 10), overlap=0.5)
    full = small_synthesizer.synthesize(volume, prompt, settings)
    planned = small_synthesizer.last_stats.planned
    assert small_synthesizer.last_stats.skipped == 0
    mask = np.zeros(volume.shape, dtype=bool)
    mask[2:8, 3:9, 4:10] = True  # a small "brain" in one corner
    part = small_synthesizer.synthesize(volume, prompt, settings, mask=mask)
    stats = small_synthesizer.last_stats
    assert stats.planned == planned and stats.skipped > 0
    assert stats.computed + stats.skipped == planned
    np.testing.assert_allclose(part[mask], full[mask], rtol=0, atol=1e-5)
    assert np.isfinite(part).all()
