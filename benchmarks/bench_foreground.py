"""Foreground-only patches: patches skipped and time saved on a preprocessed head.

A simulated head (``tumsyn-simulate --with-head``, one subject, T1w) is preprocessed with the
app's own nodes (``init_anat_wf``: conform, deepbet, N4, brain extraction); its brain-extracted
image is then synthesized twice with the bundled demo model (20-voxel patches, overlap 0.5, two
patches per pass, the app's defaults for it) and the engine settings of a ``--speed`` preset
(``default`` unless ``--speed`` says otherwise; ``reference`` skips nothing): ``foreground``,
as the app runs by default (the brain mask as the foreground: patches holding no brain voxel
are skipped, and as the output is masked afterwards only output voxels next to the mask are
decoded), and ``all``, as with ``--no-mask-output`` (every patch, every voxel). Reported:
patch counts, wall and CPU seconds of both runs after a warm-up call (CPU: all threads of this
process), their ratio, the largest difference inside the brain mask between the two outputs,
and the patch counts that 20-, 32- and 60-voxel patches (the authors' demo setting) give on the
same image.

    python benchmarks/bench_foreground.py --voxel-size 1 --threads 2 > foreground.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def _timed(fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - start, 1), round(time.process_time() - cpu, 1)


def _preprocess(dataset: Path, work: Path, threads: int) -> tuple[Path, Path]:
    import logging

    from tumsyn_bids.config import PreprocConfig
    from tumsyn_bids.workflows.anat import init_anat_wf

    logging.getLogger("nipype.workflow").setLevel(logging.WARNING)  # stdout is the JSON line
    wf = init_anat_wf(source_suffix="T1w", preproc=PreprocConfig(), omp_nthreads=threads)
    wf.base_dir = str(work)
    wf.inputs.inputnode.source_file = str(dataset / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    graph = wf.run(plugin="Linear")
    nodes = {n.name: n for n in graph.nodes()}
    return (
        Path(nodes["apply_mask"].result.outputs.out_file),
        Path(nodes["brain_mask"].result.outputs.mask_file),
    )


def _corner(mask: np.ndarray) -> np.ndarray:
    """A mask holding one voxel of ``mask``: a warm-up run of a handful of patches."""
    out = np.zeros_like(mask)
    out[tuple(np.argwhere(mask)[0])] = True
    return out


def _count(shape_zyx, mask_zyx, patch: int, overlap: float = 0.5) -> dict[str, int]:
    from tumsyn_bids.model.inference import PatchSettings, plan_patches

    settings = PatchSettings((patch,) * 3, overlap=overlap)
    jobs = plan_patches(tuple(max(n, patch) for n in shape_zyx), settings)
    keep = sum(
        bool(mask_zyx[z : z + patch, y : y + patch, x : x + patch].any())
        for z, y, x in (j.start for j in jobs)
    )
    return {"planned": len(jobs), "computed": keep, "skipped": len(jobs) - keep}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voxel-size", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--speed", default="default", choices=("reference", "default", "fast"))
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each kind, in the order all, foreground, foreground, all, ... (1: one each)",
    )
    args = p.parse_args()

    import torch

    from tumsyn_bids.model import Synthesizer, load_synthesis, load_text_encoder
    from tumsyn_bids.model.bundled import demo_weights
    from tumsyn_bids.model.speed import preset
    from tumsyn_bids.model.volume import load_volume, synthesize_nifti, to_model_order
    from tumsyn_bids.simulate import write_simulated_dataset

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = write_simulated_dataset(
            tmp / "ds", n_subjects=1, modalities=("T1w",), seed=args.seed,
            voxel_size=args.voxel_size, with_head=True,
        )  # fmt: skip
        brain, mask_file = _preprocess(dataset, tmp / "work", args.threads)
        checkpoint, text_encoder = demo_weights()
        speed = preset(args.speed)
        synth = Synthesizer(
            load_synthesis(checkpoint).model, load_text_encoder(text_encoder).model,
            device="cpu", **speed.synthesizer_options("cpu"),
        )  # fmt: skip
        volume = load_volume(brain)
        mask = np.asarray(nib.load(mask_file).dataobj) > 0
        prompt = (
            "Age: 30; Gender: F; Scanner: 3.0 Siemens; Modality: T2w; Voxel size: "
            f"({args.voxel_size}, {args.voxel_size}, {args.voxel_size}); Imaging parameter "
            "TR(ms), TE(ms), TI(ms), and FA(degree):  (3200.0, 563.0, None, T2var)"
        )
        settings = {"patch_size": (20, 20, 20), "overlap": 0.5, "batch_size": 2}
        # warm-up: the first call pays for oneDNN's kernel selection and the prompt embedding
        options = {
            "foreground": {"mask": mask, **speed.engine_options(masked_output=True)},
            "all": {"mask": None, **speed.engine_options(masked_output=False)},
        }
        synthesize_nifti(synth, volume, prompt, **settings, **options["foreground"] | {
            "mask": _corner(mask)})  # fmt: skip
        runs = {"foreground": [], "all": []}
        images = {}
        order = (["all", "foreground", "foreground", "all"] * args.repeats)[: 2 * args.repeats]
        for name in order:
            (img, _), wall, cpu = _timed(
                synthesize_nifti, synth, volume, prompt, **settings, **options[name]
            )
            images[name] = np.asarray(img.dataobj)
            runs[name].append({"patches": vars(synth.last_stats), "wall_s": wall, "cpu_s": cpu})
        cpu = {k: sum(r["cpu_s"] for r in v) for k, v in runs.items()}
        wall = {k: sum(r["wall_s"] for r in v) for k, v in runs.items()}
        diff = float(np.abs(images["foreground"] - images["all"])[mask].max())
        model_mask = to_model_order(mask)
        print(
            json.dumps(
                {
                    "voxel_size": args.voxel_size,
                    "speed": args.speed,
                    "shape": list(volume.shape_ijk),
                    "brain_voxels": int(mask.sum()),
                    "threads": args.threads,
                    "runs": runs,
                    "cpu_ratio": round(cpu["foreground"] / cpu["all"], 3),
                    "wall_ratio": round(wall["foreground"] / wall["all"], 3),
                    "max_abs_difference_inside_mask": diff,
                    **{
                        f"patches_{n}": _count(volume.data.shape, model_mask, n)
                        for n in (20, 32, 60)
                    },  # fmt: skip
                    "load_average": os.getloadavg()[0],
                }
            )
        )


if __name__ == "__main__":
    main()
