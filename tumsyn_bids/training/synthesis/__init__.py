"""Stage 2: train TUMSyn's synthesis network on co-registered modality pairs.

Follows the authors' ``train.py`` with the ``sr-implicit-paired`` sampling (see
:mod:`tumsyn_bids.model.patches`): every example is an LR patch of both images of a pair plus
query coordinates with their HR values, and the loss is the mean of the L1 errors of both
directions, source→target under the target's prompt and target→source under the source's.
Adam, with a MultiStepLR schedule stepped once per epoch; validation PSNR every ``epoch_val``
epochs; checkpoints in the authors' layout, which :func:`~tumsyn_bids.model.load_synthesis` reads
(and the authors' own ``models.make``, for their hard-coded decoder widths).

The text encoder (stage 1) stays frozen: every distinct prompt is embedded once, up front, on the
CPU, and the encoder is dropped. Only the embedding table travels to the training device.

Differences worth knowing:

* The authors set the learning rate to 1e-5 at the start of every epoch (``train.py``:
  ``optimizer_G.param_groups[0]['lr'] = 0.00001``), overriding both ``--lr`` and the schedule;
  their published recipe says 1e-4 with MultiStepLR, so we do not reproduce that line.
* The patch of epoch ``e`` at position ``p`` of that epoch's (shuffled, rank-padded) order is a
  pure function of ``(seed, e, p)``, and the order of ``(seed, e)``. Runs are reproducible
  whatever the number of data-loader workers, and ``--resume`` (even mid-epoch, after
  ``--max-steps``) continues where an uninterrupted run would be: on the CPU to the bit; on GPUs
  up to the run-to-run noise of their kernels.
* Validation uses fixed patches (the same every epoch), so its PSNR changes only with the model.
  The mean PSNR of both directions decides ``epoch-best.pth`` (the authors' sum, halved). Without
  validation subjects the epoch's mean training loss decides instead, at the same epochs, which
  says little about generalisation; a warning says so.
* Validation also runs after the last epoch, so every complete run has an ``epoch-best.pth``.

Outputs in ``OUT_DIR``: ``epoch-last.pth`` (after every epoch, and where ``--max-steps`` stops),
``epoch-best.pth``, ``epoch-N.pth`` every ``epoch_save`` epochs, ``train_log.{csv,jsonl}``,
``val_log.{csv,jsonl}`` and ``config.json``.

Modules: :mod:`.data` (pairs from the BIDS index, prompts embedded, volumes in memory),
:mod:`.sampling` (training and validation patches, the epoch order), :mod:`.network` (the
bidirectional forward and the training step), :mod:`.validation` (PSNR of the fixed validation
patches), :mod:`.checkpoints` (run state, resume, checkpoint payloads) and :mod:`.loop` (set-up,
epochs, validation and checkpoints in order).
"""

from .loop import train_synthesis

__all__ = ["train_synthesis"]
