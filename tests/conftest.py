"""Shared fixtures: the small reference data copied from the authors' code (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SMALL = DATA / "tumsyn-reference-small"
#: The full-size fixture lives outside the repository (../shared); tests using it skip without it.
FULL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tumsyn-reference"


def fixture_heads(folder: Path) -> int:
    """Text-tower heads of a fixture checkpoint (the authors' format does not record them)."""
    return json.loads((folder / "text_encoder_config.json").read_text())["params"][
        "transformer_heads"
    ]


@pytest.fixture(scope="session")
def small() -> Path:
    return SMALL


@pytest.fixture(scope="session")
def small_settings() -> dict:
    return json.loads((SMALL / "settings.json").read_text())


@pytest.fixture(scope="session")
def small_prompts() -> dict:
    return json.loads((SMALL / "prompts.json").read_text())


@pytest.fixture(scope="session")
def small_synthesizer():
    from tumsyn_bids.model import Synthesizer, load_synthesis, load_text_encoder

    net = load_synthesis(SMALL / "synthesis.pth").model
    text = load_text_encoder(SMALL / "text_encoder.pt", heads=fixture_heads(SMALL)).model
    return Synthesizer(net, text, device="cpu")


@pytest.fixture(scope="session")
def templateflow_home(tmp_path_factory) -> Path:
    """A TemplateFlow home made by ``tumsyn-templates init``, and ``TEMPLATEFLOW_HOME`` set to
    it for this test session. The TemplateFlow client reads the variable once, at its first
    import, so this fails if the client was imported before with another home."""
    import os
    import sys

    from tumsyn_bids.templates.packaged import init_home

    home = tmp_path_factory.mktemp("templateflow-home")
    init_home(home)
    if "templateflow" in sys.modules:
        from templateflow import conf

        if Path(conf.TF_HOME) != home:
            pytest.fail(f"the TemplateFlow client was imported earlier with home {conf.TF_HOME}")
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    return home
