"""Run time of each preprocessing step, and brain-mask Dice, at 1 mm and 2 mm.

Heads: Colin27 (Debian's ``mricron-data``: ``ch2`` with ``ch2bet`` as the reference brain) and a
simulated head (``tumsyn-simulate --with-head``, exact brain mask). The 2 mm Colin27 is ``ch2``
resampled (trilinear; the reference mask by nearest neighbour). Steps, as the workflow runs
them: conform, deepbet brain mask, N4 within that mask, and the rigid transfer of the T1w mask
onto another contrast (Colin27 moved by a known rigid transform, inverted contrast).

Each step is timed once after a warm-up of the libraries, with ``--threads`` torch threads for
deepbet (ANTs steps run single-threaded in a child process, as in the workflow): wall-clock
seconds and CPU seconds (all threads, child processes included).
On a shared machine wall times move with the load (the load average is printed with each row);
CPU times much less so.

    python benchmarks/bench_preproc.py --threads 2 > preproc-times.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

COLIN = Path("/usr/share/mricron/templates")


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished child processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed(fn, *args, **kwargs):
    """``fn``'s result and its (wall, CPU) seconds (ANTs steps run in child processes)."""
    start, cpu = time.perf_counter(), _cpu()
    result = fn(*args, **kwargs)
    return result, (round(time.perf_counter() - start, 2), round(_cpu() - cpu, 2))


def _colin(voxel: float, workdir: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    from nibabel.processing import resample_to_output

    head = nib.load(COLIN / "ch2.nii.gz")
    brain = nib.load(COLIN / "ch2bet.nii.gz")
    if voxel != 1.0:
        head = resample_to_output(head, voxel, order=1)
        brain = resample_to_output(brain, voxel, order=0)
    path = workdir / f"ch2_{voxel}.nii.gz"
    nib.save(head, path)
    return nib.load(path), np.asarray(brain.dataobj) > 0


def _simulated(voxel: float, workdir: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    from tumsyn_bids.simulate import brain_mask, write_simulated_dataset

    root = write_simulated_dataset(
        workdir / f"sim_{voxel}", n_subjects=1, modalities=("T1w",), seed=5, voxel_size=voxel,
        with_head=True,
    )  # fmt: skip
    return nib.load(root / "sub-01/anat/sub-01_T1w.nii.gz"), np.asarray(
        brain_mask(root, "01").dataobj
    ) > 0


def _moved_other_contrast(head: nib.Nifti1Image, mask: np.ndarray):
    """``head`` rotated (about 6 degrees), shifted and resampled to 1.25 times its voxel size,
    with an inverted contrast; and the mask moved the same way."""
    import ants

    from tumsyn_bids.preproc._ants import to_ants

    rigid = ants.new_ants_transform(dimension=3, transform_type="Euler3DTransform")
    rigid.set_parameters([0.08, -0.05, 0.1, 3.0, -4.0, 2.0])
    rigid.set_fixed_parameters([0.0, -20.0, 10.0])
    src = to_ants(head)
    # another grid: 1.25 times coarser voxels (registration, not reorientation, is needed)
    grid = ants.resample_image(src, [1.25 * s for s in src.spacing], use_voxels=False)
    moved = ants.to_nibabel_nifti(rigid.apply_to_image(src, reference=grid, interpolation="linear"))
    truth = rigid.apply_to_image(
        to_ants(head, mask.astype(np.float32)), reference=grid, interpolation="nearestneighbor"
    ).numpy()
    data = moved.get_fdata(dtype=np.float32)
    other = np.where(data > 0.05 * data.max(), data.max() * 1.2 - data, 0.0).astype(np.float32)
    return nib.Nifti1Image(other, moved.affine), truth > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--voxels", type=float, nargs="+", default=[1.0, 2.0])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from tumsyn_bids.evaluation.metrics import dice
    from tumsyn_bids.preproc.inu import n4_correct
    from tumsyn_bids.preproc.orientation import conform
    from tumsyn_bids.preproc.register import transfer_mask
    from tumsyn_bids.preproc.skullstrip import deepbet_mask

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        warm, _ = _colin(2.0, workdir)  # load the libraries and deepbet's weights once
        deepbet_mask(conform(warm)[0], threads=args.threads)
        for voxel in args.voxels:
            for name, make in (("colin27", _colin), ("simulated", _simulated)):
                head, truth = make(voxel, workdir)
                (img, record), t_conform = _timed(conform, head)
                mask, t_bet = _timed(deepbet_mask, img, threads=args.threads)
                truth_ras = np.asarray(nib.as_closest_canonical(
                    nib.Nifti1Image(truth.astype(np.uint8), head.affine)).dataobj) > 0  # fmt: skip
                _, t_n4 = _timed(n4_correct, img, mask)
                row = {
                    "head": name,
                    "voxel_mm": voxel,
                    "shape": list(img.shape),
                    "conform_wall_cpu_s": t_conform,
                    "deepbet_wall_cpu_s": t_bet,
                    "deepbet_dice": round(dice(mask, truth_ras), 4),
                    "n4_wall_cpu_s": t_n4,
                }
                if name == "colin27":
                    other, moved_truth = _moved_other_contrast(head, truth)
                    t1w_mask = nib.Nifti1Image(truth.astype(np.uint8), head.affine)
                    (carried, how), t_rigid = _timed(transfer_mask, t1w_mask, head, other)
                    row.update(
                        rigid_transfer_wall_cpu_s=t_rigid,
                        rigid_transfer_dice=round(dice(carried, moved_truth), 4),
                        rigid_method=how,
                    )
                row["load_average"] = [round(x, 2) for x in os.getloadavg()]
                rows.append(row)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
