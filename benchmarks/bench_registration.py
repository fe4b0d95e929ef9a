"""Run time and accuracy of the registration to MNI152NLin2009aSym (Colin27 from mricron-data).

Registers the brain-only Colin27 head (``/usr/share/mricron/templates/ch2bet.nii.gz``, Debian's
``mricron-data``), its header moved by a rigid transform (10 deg about x, -6 deg about z,
(8, -12, 15) mm) so that registration has something to find, at the subject's 1 mm grid and
resampled to 2 mm, with :class:`tumsyn_bids.interfaces.registration.RegisterToTemplate`. Prints
one JSON line per run: wall and CPU time of antsRegistration, the Dice of the warped brain mask
against the template mask, the correlation of the warped brain with the template brain inside
that mask, and a hash of the warped image (to see whether reruns agree).

    TEMPLATEFLOW_HOME=/path/to/home python benchmarks/bench_registration.py \\
        --settings default --threads 2 --resolutions 1 2 --repeat 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

COLIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


def rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    r = np.eye(4)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def moved_colin(out_dir: Path, zoom: float) -> tuple[Path, Path]:
    """Colin27's brain and mask (ch2bet > 0), at ``zoom`` mm, with a moved header."""
    img = nib.load(COLIN)
    data = img.get_fdata(dtype=np.float32)
    affine = img.affine.copy()
    if zoom != 1.0:
        data = ndimage.zoom(data, 1.0 / zoom, order=1)
        affine[:3, :3] *= zoom
        affine[:3, 3] += (zoom - 1.0) / 2.0  # voxel (0,0,0) centred on the old voxels' middle
    shift = np.eye(4)
    shift[:3, 3] = (8.0, -12.0, 15.0)
    affine = shift @ rotation(0, 10.0) @ rotation(2, -6.0) @ affine
    brain = out_dir / f"colin_{zoom:g}mm.nii.gz"
    mask = out_dir / f"colin_{zoom:g}mm_mask.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), brain)
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), affine), mask)
    return brain, mask


def brain_ncc(warped: str, template: str, mask: str) -> float:
    """Pearson correlation of the warped brain and the template brain inside the template's
    brain mask: finer than the Dice of brain outlines (it sees sulci and ventricles)."""
    m = np.asanyarray(nib.load(mask).dataobj) > 0
    a = nib.load(warped).get_fdata()[m]
    b = nib.load(template).get_fdata()[m]
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resolutions", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--syn",
        metavar="METRIC,PARAM,ITERS,LEVELS,SMOOTHING",
        help="try another SyN stage in place of the chosen settings' one, e.g. "
        "CC,2,100x70x20,8x4x2,3x2x1 (levels and smoothing in mm)",
    )
    args = p.parse_args()

    from dataclasses import replace

    from tumsyn_bids.interfaces import registration
    from tumsyn_bids.interfaces.registration import RegisterToTemplate

    if args.syn:
        metric, param, iters, levels, smooth = args.syn.split(",")
        stages = list(registration.SETTINGS[args.settings])
        stages[-1] = replace(
            stages[-1],
            metric=metric,
            param=int(param),
            iterations=tuple(int(v) for v in iters.split("x")),
            levels_mm=tuple(float(v) for v in levels.split("x")),
            smoothing_mm=tuple(float(v) for v in smooth.split("x")),
        )
        registration.SETTINGS[args.settings] = tuple(stages)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for zoom in args.resolutions:
            brain, mask = moved_colin(tmp, zoom)
            for rep in range(args.repeat):
                work = tmp / f"run_{zoom:g}_{rep}"
                work.mkdir()
                os.chdir(work)
                res = RegisterToTemplate(
                    moving_image=str(brain),
                    moving_mask=str(mask),
                    settings=args.settings,
                    num_threads=args.threads,
                ).run(cwd=str(work))
                out = res.outputs
                # the warped image's values, not the .h5 bytes (HDF5 stores object timestamps)
                warped = np.asanyarray(nib.load(out.warped_image).dataobj)
                digest = hashlib.sha256(warped.tobytes()).hexdigest()
                ncc = brain_ncc(out.warped_image, out.template_image, out.template_mask)
                print(
                    json.dumps(
                        {
                            "subject_mm": zoom,
                            "settings": args.settings,
                            "syn": args.syn,
                            "threads": args.threads,
                            "wall_s": round(out.elapsed, 1),
                            "cpu_s": round(out.cpu_time, 1),
                            "dice": round(out.dice, 4),
                            "ncc": round(ncc, 4),
                            "forward_h5_MB": round(
                                Path(out.forward_transform).stat().st_size / 1e6, 1
                            ),
                            "warped_sha256": digest[:16],
                            "loadavg_1min_after": os.getloadavg()[0],
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
