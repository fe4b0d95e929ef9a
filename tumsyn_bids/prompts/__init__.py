"""TUMSyn text prompts, in three modules (import names from them directly):

* :mod:`~tumsyn_bids.prompts.values`: how one value is written (seconds to milliseconds,
  field strength, vendor, sex, age, voxel size); :class:`PromptError`.
* :mod:`~tumsyn_bids.prompts.protocol`: what a prompt describes (:class:`Protocol`,
  :class:`Demographics`), read from BIDS sidecars, with the timing plausibility checks.
* :mod:`~tumsyn_bids.prompts.template`: the authors' template, :func:`build_prompt`,
  :func:`target_prompt` and the validator.

Everything here is a pure function of plain values: no file access, no BIDS, no torch.
"""
