"""The demonstration model shipped inside the package.

A fresh install must synthesize something without downloading anything, and the tests need a
trained model that is small enough for a CPU. Both are served by a tiny TUMSyn trained with our own
``tumsyn-train`` on phantoms from ``tumsyn-simulate`` (recipe: ``scripts/train-demo-model.sh``).
It knows only what the simulator knows: it is for demonstrations and tests, not for research or
clinical use. Its checkpoints are in the authors' formats, so every loader treats it like the
official weights; the identity and intended use travel inside the files (``tumsyn_bids`` key) and
from there into every sidecar it produces.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo_model"
DEMO_SYNTHESIS = DEMO_DIR / "synthesis.pth"
DEMO_TEXT_ENCODER = DEMO_DIR / "text_encoder.pt"
DEMO_MODEL_NAME = "tumsyn-bids-demo-phantom"
DEMO_INTENDED_USE = (
    "Demonstration and testing only: trained on simulated phantoms (tumsyn-simulate), not on real "
    "MRI. Not for research or clinical use. For real data use the official TUMSyn weights "
    "(https://zenodo.org/records/13119176) with --checkpoint and --text-encoder."
)


def demo_weights() -> tuple[Path, Path]:
    """(synthesis checkpoint, text encoder checkpoint) of the bundled demonstration model."""
    for path in (DEMO_SYNTHESIS, DEMO_TEXT_ENCODER):
        if not path.is_file():
            raise CheckpointError(
                f"the bundled demo model is missing ({path}); reinstall tumsyn-bids, or give "
                "--checkpoint and --text-encoder"
            )
    return DEMO_SYNTHESIS, DEMO_TEXT_ENCODER
