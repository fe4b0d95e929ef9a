"""The stage-1 CLIP: the authors' state-dict layout, their initialisation, the loss, the cube."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tumsyn_bids.model.clip import (
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    ContrastiveModel,
    ImageTowerConfig,
    centre_cube,
    clamp_logit_scale,
    contrastive_loss,
)
from tumsyn_bids.model.text_encoder import TextEncoderConfig
from tumsyn_bids.model.tokenizer import tokenize

ARCHITECTURE = Path(__file__).parents[1] / "data" / "official-architecture.json"


def tiny(image_size: int = 32) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(
        TextEncoderConfig(width=32, layers=1, heads=2, embed_dim=32),
        ImageTowerConfig(image_size=image_size, layers=(1, 1, 1, 1), width=8, embed_dim=32),
    )


def official() -> tuple[ContrastiveModel, dict]:
    """The published CLIP's sizes, built on the meta device (~1e9 parameters, none allocated)."""
    stage1 = json.loads(ARCHITECTURE.read_text())["stage1_text_encoder"]
    c = stage1["constructor_config"]
    with torch.device("meta"):
        model = ContrastiveModel(
            TextEncoderConfig(
                width=c["transformer_width"],
                layers=c["transformer_layers"],
                heads=c["transformer_heads"],
                context_length=c["context_length"],
                vocab_size=c["vocab_size"],
                embed_dim=c["embed_dim"],
            ),
            ImageTowerConfig(
                image_size=c["image_resolution"],
                layers=tuple(c["vision_layers"]),
                width=c["vision_width"],
                embed_dim=c["embed_dim"],
            ),
        )
    return model, stage1


@pytest.mark.slow
def test_official_state_dict_layout():
    model, stage1 = official()
    expected = {e["key"]: (e["shape"], e["dtype"]) for e in stage1["state_dict"]}
    got = {
        k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    }
    assert sorted(got) == sorted(expected)
    assert got == expected
    assert model.image_config.heads == stage1["derived"]["vision_heads"]
    assert model.image_config.feature_dim == stage1["derived"]["attnpool_embed_dim"]


def test_training_config_sizes():
    """The authors' training yaml (width 128, 128^3 cubes): a 4^3 grid, 64 heads of 64."""
    with torch.device("meta"):
        model = ContrastiveModel(TextEncoderConfig(), ImageTowerConfig())
    assert model.visual.attnpool.positional_embedding.shape == (4**3 + 1, 4096)
    assert model.visual.attnpool.num_heads == 64
    assert model.visual.conv1.weight.shape == (64, 1, 3, 3, 3)


def test_image_size_must_give_the_pooled_grid():
    ImageTowerConfig(image_size=120)  # 120 -> 60 -> 30 -> 15 -> 7 -> 3 == 120 // 32
    with pytest.raises(ValueError, match="feature grid"):
        ImageTowerConfig(image_size=127)  # 64 -> 32 -> 16 -> 8 -> 4 != 3
    with pytest.raises(ValueError, match="same size"):
        ContrastiveModel(TextEncoderConfig(embed_dim=16), ImageTowerConfig(embed_dim=32))


def test_initialisation():
    model = tiny()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT)
    for stage in (model.visual.layer1, model.visual.layer2, model.visual.layer3):
        for block in stage:
            assert torch.count_nonzero(block.bn3.weight) == 0
    assert torch.count_nonzero(model.visual.bn3.weight) == model.visual.bn3.weight.numel()
    # Nothing is left at TextEncoder's zero placeholders.
    assert model.positional_embedding.std() > 0 and model.text_projection.std() > 0


def test_forward_shapes_and_text_half():
    model = tiny().eval()
    tokens = tokenize(["a T1w image", "a T2w image"])
    with torch.no_grad():
        img, txt = model(torch.rand(2, 1, 32, 32, 32), tokens)
        assert img.shape == txt.shape == (2, 32)
        # The text half is the plain text encoder's forward.
        torch.testing.assert_close(txt, model.encode(tokens))


def test_attention_pool_matches_full_attention():
    """Querying with the mean token only gives the authors' all-token attention's first row."""
    pool = tiny().visual.attnpool
    x = torch.randn(2, pool.k_proj.in_features, 1, 1, 1)
    tokens = x.flatten(2).permute(2, 0, 1)
    tokens = torch.cat([tokens.mean(0, keepdim=True), tokens]) + pool.positional_embedding[:, None]
    full, _ = F.multi_head_attention_forward(
        tokens,
        tokens,
        tokens,
        tokens.shape[-1],
        pool.num_heads,
        None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        None,
        None,
        False,
        0.0,
        pool.c_proj.weight,
        pool.c_proj.bias,
        need_weights=False,
        use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
    )
    torch.testing.assert_close(pool(x), full[0])


def test_contrastive_loss_by_hand():
    # Images along the axes (lengths must not matter), texts at 0 and atan(2) rad.
    img = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    txt = torch.tensor([[2.0, 0.0], [1.0, 2.0]])
    scale = torch.tensor(math.log(2.0))  # logits = 2 x cosine
    # cosines: [[1, 1/sqrt5], [0, 2/sqrt5]]; each row/column: -own + log(sum exp)
    r5 = math.sqrt(5)
    row1 = -2 + math.log(math.exp(2) + math.exp(2 / r5))
    row2 = -4 / r5 + math.log(math.exp(0) + math.exp(4 / r5))
    col1 = -2 + math.log(math.exp(2) + math.exp(0))
    col2 = -4 / r5 + math.log(math.exp(2 / r5) + math.exp(4 / r5))
    expected = ((row1 + row2) / 2 + (col1 + col2) / 2) / 2
    assert expected == pytest.approx(0.2275521477)
    loss, accuracy = contrastive_loss(img, txt, scale)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == 1.0
    _, swapped = contrastive_loss(img, txt.flip(0), scale)
    assert swapped.item() == 0.0


def test_contrastive_loss_gradient_reaches_scale():
    scale = torch.tensor(LOGIT_SCALE_INIT, requires_grad=True)
    loss, _ = contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), scale)
    loss.backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)


@pytest.mark.parametrize(("start", "clamped"), [(10.0, LOGIT_SCALE_MAX), (-1.0, 0.0), (3.0, 3.0)])
def test_clamp_logit_scale(start, clamped):
    model = tiny()
    with torch.no_grad():
        model.logit_scale.fill_(start)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(clamped)
    assert LOGIT_SCALE_MAX == pytest.approx(4.6052, abs=1e-4)


def test_centre_cube_pads_even_differences_symmetrically():
    vol = np.ones((2, 4, 6), dtype=np.float32)
    cube = centre_cube(vol, 6)
    assert cube.shape == (6, 6, 6) and cube.dtype == np.float32
    assert cube.sum() == vol.sum()
    assert np.array_equal(np.argwhere(cube).min(0), [2, 1, 0])
    assert np.array_equal(np.argwhere(cube).max(0), [3, 4, 5])


def test_centre_cube_crops_and_odd_differences():
    vol = np.arange(3 * 7 * 8, dtype=np.float32).reshape(3, 7, 8)
    cube = centre_cube(vol, 4)
    assert cube.shape == (4, 4, 4)
    # z: padded by 1, the extra voxel after; y: 7 -> 4 from index 1; x: 8 -> 4 from index 2
    assert not cube[3].any()
    np.testing.assert_array_equal(cube[:3], vol[:, 1:5, 2:6])
    with pytest.raises(ValueError, match="3-D"):
        centre_cube(np.zeros((2, 2)), 4)
