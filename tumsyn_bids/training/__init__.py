"""Training TUMSyn on a BIDS dataset: stage 1 (contrastive text encoder) and stage 2 (synthesis).

This package is the bridge between the BIDS index (:mod:`tumsyn_bids.bids`, no torch) and the
networks (:mod:`tumsyn_bids.model`, no BIDS), the way :mod:`tumsyn_bids.workflows` is for
inference. Prompts come from the same builder the app uses, so a model trained here reads the
prompts the app writes.
"""
