"""The demonstration model shipped in the package: present, small, and labelled as such."""

from __future__ import annotations

import torch

from tumsyn_bids.model import load_synthesis, load_text_encoder
from tumsyn_bids.model.bundled import (
    DEMO_INTENDED_USE,
    DEMO_MODEL_NAME,
    demo_weights,
)
from tumsyn_bids.model.metadata import checkpoint_metadata


def test_demo_weights_ship_small_and_load():
    synthesis, text_encoder = demo_weights()
    size_mb = (synthesis.stat().st_size + text_encoder.stat().st_size) / 1e6
    assert size_mb < 15, f"the bundled model grew to {size_mb:.1f} MB"
    net = load_synthesis(synthesis).model
    text = load_text_encoder(text_encoder).model
    # the fusion block reads the prompt embedding at the network's feature width
    assert text.config.embed_dim == net.config.out_dim
    stored = torch.load(synthesis, weights_only=True)["model_G"]["sd_G"]
    assert stored["encoder.head.0.weight"].dtype == torch.float16
    assert net.encoder.head[0].weight.dtype == torch.float32


def test_demo_weights_say_what_they_are():
    synthesis, text_encoder = demo_weights()
    for path in (synthesis, text_encoder):
        meta = checkpoint_metadata(path)
        assert meta["model_name"] == DEMO_MODEL_NAME
        assert meta["intended_use"] == DEMO_INTENDED_USE
    assert "not for research or clinical use" in DEMO_INTENDED_USE.lower()
    assert checkpoint_metadata(text_encoder)["transformer_heads"] == 4
