import numpy as np
import pytest
import torch

from tests.conftest import FULL, fixture_heads
from tests.weights import save_text_encoder
from tumsyn_bids.model import CheckpointError, load_text_encoder, tokenize


def _embeddings(folder, prompts, heads):
    enc = load_text_encoder(folder / "text_encoder.pt", heads=heads).model
    rows = [prompts[f"cleaned_{k}"] for k in ("source", "target1", "target2")]
    with torch.inference_mode():
        return enc(tokenize(rows)).numpy()


def test_text_embeddings_match_reference(small, small_prompts):
    got = _embeddings(small, small_prompts, fixture_heads(small))
    expected = np.load(small / "text_embeddings.npy")
    assert got.shape == expected.shape == (3, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(not FULL.is_dir(), reason="full-size fixture (../shared) not present")
def test_text_embeddings_match_full_reference():
    import json

    prompts = json.loads((FULL / "prompts.json").read_text())
    got = _embeddings(FULL, prompts, fixture_heads(FULL))
    np.testing.assert_allclose(got, np.load(FULL / "text_embeddings.npy"), rtol=0, atol=1e-5)


def test_config_read_off_shapes(small):
    loaded = load_text_encoder(small / "text_encoder.pt", heads=2)
    cfg = loaded.model.config
    assert (cfg.width, cfg.layers, cfg.heads, cfg.context_length, cfg.embed_dim) == (
        32,
        2,
        2,
        90,
        32,
    )
    # float16 weights land in float32 parameters
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_wrong_head_count_changes_result(small, small_prompts):
    """Heads cannot be read off shapes, so a wrong value must visibly matter."""
    right = _embeddings(small, small_prompts, 2)
    wrong = _embeddings(small, small_prompts, 4)
    assert np.abs(right - wrong).max() > 1e-3


def test_heads_recorded_in_our_checkpoints(small, small_prompts, tmp_path):
    src = torch.load(small / "text_encoder.pt", weights_only=True)["model_state_dict"]
    path = tmp_path / "te.pt"
    save_text_encoder(path, src, heads=2)
    loaded = load_text_encoder(path)  # no override: reads the recorded value
    assert loaded.model.config.heads == 2
    with torch.inference_mode():
        emb = loaded.model(tokenize(small_prompts["cleaned_target1"])).numpy()
    np.testing.assert_allclose(emb[0], np.load(small / "text_embeddings.npy")[1], atol=1e-5)


def test_rejects_wrong_files(small, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_text_encoder(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="model_state_dict"):
        load_text_encoder(small / "synthesis.pth")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_text_encoder(junk)
    sd = torch.load(small / "text_encoder.pt", weights_only=True)["model_state_dict"]
    sd["transformer.resblocks.0.extra"] = torch.zeros(1)
    bad = tmp_path / "extra.pt"
    torch.save({"model_state_dict": sd}, bad)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_text_encoder(bad, heads=2)
