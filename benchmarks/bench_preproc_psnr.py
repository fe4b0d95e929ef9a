"""Synthesis with and without preprocessing on a simulated head, against the skull-free head.

One simulated subject with a head (``tumsyn-simulate --with-head``, T1w) goes through ``tumsyn``
three times with the bundled demo model, synthesizing T2w and FLAIR from the T1w:

* ``preproc``: the raw head, ``--preproc full`` (the default);
* ``skull-free``: the same scan with every voxel outside the true brain mask set to 0, with
  the same preprocessing (the already-brain-extracted rule keeps that mask; N4 still runs);
* ``none``: the raw head, ``--preproc none`` (the network reads the head as stored).

Each output is scored inside the true brain mask (PSNR after TUMSyn's normalisation,
:func:`tumsyn_bids.evaluation.preproc.score_outputs`), and again on the true-brain voxels that
the ``preproc`` arm's estimated mask holds too (``psnr_in_preproc_mask``: the same voxels in
every arm, so the difference between ``preproc`` and ``skull-free`` there is what the
network's input changed, the rest being true-brain voxels the estimated mask left out and the
output therefore set to 0). Printed as one JSON object with the scores, the Dice of each
arm's brain mask (``desc-brain_mask``) against the true one, the patch counts from the
sidecars and the wall-clock seconds of each run (no CPU seconds: the app's MultiProc workers
are not its waited-for children, so ``RUSAGE_CHILDREN`` would miss their work).
Extra arguments after ``--`` go to every ``tumsyn`` run; ``--keep DIR`` keeps the datasets and
outputs there.

    python benchmarks/bench_preproc_psnr.py --voxel-size 2 --nprocs 2 > psnr.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ("T2w", "FLAIR")
ARMS = ("preproc", "skull-free", "none")


def run_arm(bids: Path, out: Path, work: Path, nprocs: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(out), "participant",
           "-w", str(work), "--skip-bids-validation", "--source", "T1w", "--target", *TARGETS,
           "--nprocs", str(nprocs), *extra]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voxel-size", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--keep", type=Path, help="keep datasets and outputs in this new folder")
    p.add_argument("extra", nargs="*", help="more tumsyn arguments (after --)")
    args = p.parse_args()

    import nibabel as nib
    import numpy as np

    from tumsyn_bids.evaluation.metrics import dice
    from tumsyn_bids.evaluation.preproc import score_outputs, skull_free_dataset
    from tumsyn_bids.simulate import brain_mask, write_simulated_dataset

    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=args.keep is None)  # a kept folder must be new
        head = write_simulated_dataset(
            tmp / "head", n_subjects=1, modalities=("T1w",), seed=args.seed,
            voxel_size=args.voxel_size, with_head=True,
        )  # fmt: skip
        free = skull_free_dataset(head, tmp / "free")
        outputs = [f"sub-01/anat/sub-01_desc-tumsynFromT1w_{t}.nii.gz" for t in TARGETS]
        result: dict = {"voxel_size": args.voxel_size, "seed": args.seed, "extra": args.extra,
                        "arms": {}}  # fmt: skip
        truth = np.asarray(brain_mask(head, "01").dataobj) > 0
        estimated = None  # the preproc arm's brain mask
        for arm in ARMS:
            bids = free if arm == "skull-free" else head
            extra = [*args.extra, *(["--preproc", "none"] if arm == "none" else [])]
            timing = run_arm(bids, tmp / f"out-{arm}", tmp / f"work-{arm}", args.nprocs, extra)
            scores = score_outputs(tmp / f"out-{arm}", head, outputs)
            mask_file = tmp / f"out-{arm}" / "sub-01/anat/sub-01_desc-brain_mask.nii.gz"
            mask = np.asarray(nib.load(mask_file).dataobj) > 0 if mask_file.exists() else None
            if arm == "preproc":
                estimated = mask
            common = score_outputs(tmp / f"out-{arm}", head, outputs, within=estimated)
            patches = {}
            for rel in outputs:
                side = json.loads(
                    (tmp / f"out-{arm}" / rel.replace(".nii.gz", ".json")).read_text()
                )
                patches[rel.rsplit("_", 1)[1].split(".")[0]] = side["Inference"].get("Patches")
            result["arms"][arm] = {
                "psnr": {rel.rsplit("_", 1)[1].split(".")[0]: round(v, 2) for v, rel in
                         zip(scores.values(), outputs, strict=True)},
                "psnr_in_preproc_mask": {rel.rsplit("_", 1)[1].split(".")[0]: round(v, 2)
                                         for v, rel in zip(common.values(), outputs,
                                                           strict=True)},
                "mask_dice": None if mask is None else round(dice(mask, truth), 4),
                "patches": patches,
                **timing,
            }  # fmt: skip
        result["load_average"] = os.getloadavg()[0]
        print(json.dumps(result))


if __name__ == "__main__":
    main()
