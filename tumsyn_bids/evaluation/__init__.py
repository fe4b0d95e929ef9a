"""Scoring synthesized images against exact ground truth from the simulator.

No torch here except through the model's public API in :mod:`.benchmark`; :mod:`.metrics` is
plain numpy/scipy so the scores can be checked by hand.
"""
