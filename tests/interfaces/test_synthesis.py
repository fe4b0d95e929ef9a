"""The synthesis interface keeps one loaded model per process."""

from tests.conftest import SMALL
from tumsyn_bids.interfaces.synthesis import get_synthesizer


def test_models_are_loaded_once_per_process():
    args = (str(SMALL / "synthesis.pth"), str(SMALL / "text_encoder.pt"), 2, "cpu", "fp32")
    first = get_synthesizer(*args)
    assert get_synthesizer(*args) is first
    # a different setting is a different model instance
    assert get_synthesizer(*args[:2], 4, "cpu", "fp32") is not first
