"""Registration to a template and resampling into it, with ANTs (the ANTsPy wheel).

:class:`RegisterToTemplate` runs ``antsRegistration`` (ANTsPy's in-wheel library, given the
command-line arguments; no ANTs binaries needed): a brain-extracted image is aligned to the
template brain by rigid -> affine -> SyN stages (:data:`SETTINGS`), and the forward and inverse
transforms are written as ITK composite HDF5 files with sMRIPrep's names
(``from-T1w_to-<template>_mode-image_xfm.h5`` and the reverse). Any ITK/ANTs-based tool reads
them (``antsApplyTransforms -t``, ANTsPy, nitransforms, sMRIPrep).

:class:`ApplyTemplateTransform` resamples an image once, from its own grid straight to a target
grid through such a composite transform: linear interpolation for images, ``genericLabel``
(ANTs' label-preserving nearest-neighbour) for masks and label maps.

The registration is deterministic: the ``--random-seed`` of ANTs' regular sampling is fixed and
the number of ITK threads is set for the run. ITK reads that number once per process, so
``antsRegistration`` runs in a child Python process with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
in its environment, whatever the parent has loaded.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..evaluation.metrics import dice
from ..templates.flow import DEFAULT_TEMPLATE


@dataclass(frozen=True)
class Stage:
    """One ``antsRegistration`` stage.

    ``levels_mm`` is the pyramid: the voxel size (mm) each level works at, coarse to fine
    (shrink factor = level / the template's voxel size, rounded); ``smoothing_mm`` the sigma
    (mm) of the Gaussian applied to both images at each level. ``iterations`` is the maximum
    per level (a level ends earlier when the metric's slope over the last ``window``
    iterations falls below ``convergence``); ``metric`` is ``Mattes`` (mutual
    information, ``param`` = histogram bins, regular sampling of ``sampling`` of the voxels) or
    ``CC`` (neighbourhood cross-correlation, ``param`` = radius in voxels, every voxel).
    ``step`` is the gradient step; SyN adds the update and total field smoothing (voxels).
    """

    transform: str
    step: float
    metric: str
    param: int
    sampling: float
    iterations: tuple[int, ...]
    levels_mm: tuple[float, ...]
    smoothing_mm: tuple[float, ...]
    update_sigma: float = 3.0
    total_sigma: float = 0.0
    convergence: float = 1e-6
    window: int = 10


#: Registration settings (docs/templates.md compares them with sMRIPrep's and gives the
#: measurements). ``default``: SyN with dense Mattes mutual information down to 2 mm (about 110
#: CPU-seconds for a 1 mm head). ``precise``: SyN with neighbourhood cross-correlation (radius
#: 2), about 3 times the CPU time, for same-contrast (T1w) sources. ``testing``: ``default``
#: without its 2 mm levels, for CI.
SETTINGS: dict[str, tuple[Stage, ...]] = {
    "default": (
        Stage("Rigid", 0.1, "Mattes", 32, 0.25, (1000, 500, 200), (8, 4, 2), (3, 2, 1)),
        Stage("Affine", 0.1, "Mattes", 32, 0.25, (1000, 500, 200), (8, 4, 2), (3, 2, 1)),
        Stage("SyN", 0.1, "Mattes", 32, 1.0, (100, 70, 20), (8, 4, 2), (3, 2, 1)),
    ),
    "precise": (
        Stage("Rigid", 0.1, "Mattes", 32, 0.25, (1000, 500, 200), (8, 4, 2), (3, 2, 1)),
        Stage("Affine", 0.1, "Mattes", 32, 0.25, (1000, 500, 200), (8, 4, 2), (3, 2, 1)),
        Stage("SyN", 0.1, "CC", 2, 1.0, (100, 70, 20), (8, 4, 2), (3, 2, 1)),
    ),
    "testing": (
        Stage("Rigid", 0.1, "Mattes", 32, 0.25, (1000, 500), (8, 4), (3, 2)),
        Stage("Affine", 0.1, "Mattes", 32, 0.25, (1000, 500), (8, 4), (3, 2)),
        Stage("SyN", 0.1, "Mattes", 32, 1.0, (100, 70), (8, 4), (3, 2)),
    ),
}

#: Fixed seed of ANTs' sampling (any constant would do; this one is sMRIPrep-independent).
RANDOM_SEED = 20240611


def registration_args(
    fixed: str,
    moving: str,
    out_prefix: str,
    settings: str = "default",
    fixed_zoom: float = 1.0,
    seed: int = RANDOM_SEED,
    histogram_matching: bool = True,
) -> list[str]:
    """The ``antsRegistration`` command line (without the program name) for ``settings``.

    ``fixed``/``moving`` are NIfTI paths (brain-only images), ``fixed_zoom`` the fixed image's
    voxel size in mm (shrink factors are ``level_mm / fixed_zoom``). The initial transform
    aligns the centres of mass (``[fixed,moving,1]``). ``histogram_matching`` matches the
    moving image's histogram to the fixed one's first: for images of the same contrast only
    (ANTs' advice; sMRIPrep matches T1w to T1w templates). Writes ``<out_prefix>Composite.h5``
    and ``<out_prefix>InverseComposite.h5``. Raises KeyError for unknown settings.
    """
    stages = SETTINGS[settings]
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--output", f"[{out_prefix}]",
        "--interpolation", "Linear",
        "--winsorize-image-intensities", "[0.005,0.995]",
        "--use-histogram-matching", "1" if histogram_matching else "0",
        "--random-seed", str(seed),
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "1",
        "--initial-moving-transform", f"[{fixed},{moving},1]",
        "--verbose", "1",  # per-iteration metric and timing, into the node's log
    ]  # fmt: skip
    for s in stages:
        if s.transform == "SyN":
            transform = f"SyN[{s.step},{s.update_sigma},{s.total_sigma}]"
        else:
            transform = f"{s.transform}[{s.step}]"
        if s.metric == "CC":
            metric = f"CC[{fixed},{moving},1,{s.param}]"
        else:
            metric = f"{s.metric}[{fixed},{moving},1,{s.param},Regular,{s.sampling}]"
        shrink = [max(1, round(level / fixed_zoom)) for level in s.levels_mm]
        args += [
            "--transform", transform,
            "--metric", metric,
            "--convergence", f"[{'x'.join(map(str, s.iterations))},{s.convergence},{s.window}]",
            "--shrink-factors", "x".join(map(str, shrink)),
            "--smoothing-sigmas", "x".join(f"{v:g}" for v in s.smoothing_mm) + "mm",
        ]  # fmt: skip
    return args


def run_ants_registration(args: list[str], num_threads: int, log_file: Path) -> tuple[float, float]:
    """Run ``antsRegistration`` with ``args`` in a child process using ``num_threads`` ITK
    threads; its output goes to ``log_file``. Returns (wall time, CPU time) in seconds, CPU
    being the child's user + system time (the wall time includes waiting for a busy machine).

    Raises RuntimeError (naming the log) when ANTs fails.
    """
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(num_threads))
    code = "import sys, ants; ants.registration(sys.argv[1:], None)"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"antsRegistration failed (exit {proc.returncode}); see {log_file}")
    return elapsed, cpu


def apply_transform(
    in_file: str,
    reference: str,
    transform: str,
    out_file: str,
    interpolation: str = "linear",
    dtype: str | None = None,
) -> str:
    """Resample ``in_file`` onto the grid of ``reference`` through ``transform`` (an ITK
    composite .h5 or any file ``antsApplyTransforms`` reads), once, with ANTs.

    ``interpolation``: ``linear`` (images), ``genericLabel`` or ``nearestNeighbor`` (masks,
    labels), ``lanczosWindowedSinc``, ``bSpline``. Outside the source's field of view the output
    is 0. ``dtype`` (numpy name) casts the result; None keeps float32 for images and the input's
    dtype for ``genericLabel``/``nearestNeighbor``. The output's header is the reference grid
    (affine, qform/sform) with the input's intensity units. Raises ValueError on a 4-D input.
    """
    import ants

    src = nib.load(in_file)
    if len(src.shape) > 3 and any(n > 1 for n in src.shape[3:]):
        raise ValueError(f"{in_file}: a 3-D image is required, got shape {src.shape}")
    moving = ants.image_read(str(in_file))
    fixed = ants.image_read(str(reference))
    warped = ants.apply_transforms(
        fixed=fixed,
        moving=moving,
        transformlist=[str(transform)],
        interpolator=interpolation,
        defaultvalue=0,
    )
    data = warped.numpy()
    if dtype is None:
        labels = interpolation in ("genericLabel", "nearestNeighbor", "multiLabel")
        dtype = src.get_data_dtype().name if labels else "float32"
    if np.issubdtype(np.dtype(dtype), np.integer):
        data = np.rint(data)
    ref = nib.load(reference)
    out = nib.Nifti1Image(data.astype(dtype), ref.affine)
    out.header.set_xyzt_units(*src.header.get_xyzt_units())
    out.header.set_qform(ref.affine, int(ref.header["qform_code"]) or 1)
    out.header.set_sform(ref.affine, int(ref.header["sform_code"]) or 1)
    nib.save(out, out_file)
    return out_file


def _masked(image: str, mask: str, out_file: str) -> str:
    """``image`` with voxels outside ``mask`` set to 0 (float32), for explicit masking."""
    img = nib.load(image)
    m = np.asanyarray(nib.load(mask).dataobj) > 0
    data = np.where(m, img.get_fdata(dtype=np.float32), 0).astype(np.float32)
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.header.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, out_file)
    return out_file


def transform_name(source: str, target: str) -> str:
    """sMRIPrep's file name of an ITK composite transform from space ``source`` to ``target``
    (``from-<source>_to-<target>_mode-image_xfm.h5``, the BIDS-derivatives entities)."""
    return f"from-{source}_to-{target}_mode-image_xfm.h5"


class _RegisterInputSpec(BaseInterfaceInputSpec):
    moving_image = File(
        exists=True, mandatory=True, desc="brain-extracted, bias-corrected source image (T1w)"
    )
    moving_mask = File(exists=True, mandatory=True, desc="brain mask on the source's grid")
    template = traits.Str(DEFAULT_TEMPLATE, usedefault=True, desc="TemplateFlow template")
    source_space = traits.Str(
        "T1w", usedefault=True, desc="name of the source space in the transform file names"
    )
    settings = traits.Enum(*SETTINGS, usedefault=True, desc="registration settings (SETTINGS)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")
    random_seed = traits.Int(RANDOM_SEED, usedefault=True, desc="ANTs sampling seed")
    histogram_matching = traits.Bool(
        True, usedefault=True, desc="match histograms first (same contrast as the template only)"
    )


class _RegisterOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="source -> template composite transform (.h5)")
    reverse_transform = File(exists=True, desc="template -> source composite transform (.h5)")
    warped_image = File(exists=True, desc="source brain on the template's res-1 grid")
    warped_mask = File(exists=True, desc="source brain mask on the template's res-1 grid")
    template_image = File(exists=True, desc="template brain registered to (res-1)")
    template_mask = File(exists=True, desc="template brain mask (res-1)")
    dice = traits.Float(desc="Dice of the warped brain mask against the template brain mask")
    elapsed = traits.Float(desc="antsRegistration wall time (s)")
    cpu_time = traits.Float(desc="antsRegistration CPU time, user + system (s)")
    log_file = File(exists=True, desc="antsRegistration's output")


class RegisterToTemplate(SimpleInterface):
    """Register a brain-extracted image to a TemplateFlow template's brain with ANTs.

    Rigid -> affine -> SyN (:data:`SETTINGS`), both images explicitly masked (voxels outside
    the brain masks set to 0, as sMRIPrep does), started from the centres of mass. The template
    comes from ``TEMPLATEFLOW_HOME`` through ``templateflow.api.get`` at res-1
    (:func:`tumsyn_bids.templates.references.brain_reference`).

    Outputs the transforms (ITK composite HDF5, sMRIPrep's names), the source brain and mask
    resampled once onto the template grid, and the Dice of that warped mask against the template
    mask (the registration's quality number: 1 is perfect overlap of the brain outlines).
    """

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from ..templates.references import brain_reference

        cwd = Path(runtime.cwd)
        ref = brain_reference(self.inputs.template, 1)
        fixed = str(ref.t1w)
        if not ref.skull_stripped:
            fixed = _masked(fixed, str(ref.mask), str(cwd / "template_brain.nii.gz"))
        moving = _masked(
            self.inputs.moving_image, self.inputs.moving_mask, str(cwd / "moving_brain.nii.gz")
        )
        zoom = float(min(nib.load(fixed).header.get_zooms()[:3]))
        prefix = str(cwd / "ants_")
        args = registration_args(
            fixed,
            moving,
            prefix,
            self.inputs.settings,
            zoom,
            self.inputs.random_seed,
            histogram_matching=self.inputs.histogram_matching,
        )
        (cwd / "command.json").write_text(json.dumps(args, indent=1))
        log = cwd / "antsRegistration.log"
        elapsed, cpu = run_ants_registration(args, self.inputs.num_threads, log)

        src, tpl = self.inputs.source_space, self.inputs.template
        forward = cwd / transform_name(src, tpl)
        reverse = cwd / transform_name(tpl, src)
        os.replace(prefix + "Composite.h5", forward)
        os.replace(prefix + "InverseComposite.h5", reverse)

        warped = apply_transform(
            moving, fixed, str(forward), str(cwd / "warped_brain.nii.gz"), "linear"
        )
        warped_mask = apply_transform(
            self.inputs.moving_mask,
            fixed,
            str(forward),
            str(cwd / "warped_mask.nii.gz"),
            "genericLabel",
            "uint8",
        )
        score = dice(
            np.asanyarray(nib.load(warped_mask).dataobj), np.asanyarray(nib.load(ref.mask).dataobj)
        )
        self._results.update(
            forward_transform=str(forward),
            reverse_transform=str(reverse),
            warped_image=warped,
            warped_mask=warped_mask,
            template_image=fixed,
            template_mask=str(ref.mask),
            dice=score,
            elapsed=elapsed,
            cpu_time=cpu,
            log_file=str(log),
        )
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3-D image on the source grid")
    transform = File(exists=True, mandatory=True, desc="source -> template transform (.h5)")
    reference = File(exists=True, desc="an image on the target grid (else template/resolution)")
    template = traits.Str(DEFAULT_TEMPLATE, usedefault=True, desc="TemplateFlow template")
    resolution = traits.Int(1, usedefault=True, desc="TemplateFlow resolution index of the grid")
    interpolation = traits.Enum(
        "linear",
        "genericLabel",
        "nearestNeighbor",
        "lanczosWindowedSinc",
        "bSpline",
        usedefault=True,
        desc="linear for images, genericLabel for masks and labels",
    )
    dtype = traits.Str(desc="numpy dtype of the output (default: float32, or the input's for "
                       "label interpolation)")  # fmt: skip


class _ApplyOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the image on the target grid")
    grid_source = traits.Str(desc="where the target grid comes from")


class ApplyTemplateTransform(SimpleInterface):
    """Resample an image from its own grid to a template grid in one interpolation.

    The target grid is ``reference`` if given, else the template's grid at ``resolution``
    (:func:`tumsyn_bids.templates.references.reference_grid`: TemplateFlow's file, or a grid
    derived from res-1 when TemplateFlow has none at that resolution).
    """

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        cwd = Path(runtime.cwd)
        if self.inputs.reference:
            reference = self.inputs.reference
            source = f"reference image {Path(reference).name}"
        else:
            from ..templates.references import reference_grid

            grid = reference_grid(self.inputs.template, self.inputs.resolution)
            reference = str(cwd / "reference_grid.nii.gz")
            nib.save(grid.empty_image(), reference)
            source = grid.source
        name = Path(self.inputs.in_file).name
        for ext in (".nii.gz", ".nii"):
            if name.endswith(ext):
                name = name[: -len(ext)]
        out = apply_transform(
            self.inputs.in_file,
            reference,
            self.inputs.transform,
            str(cwd / f"{name}_resampled.nii.gz"),
            self.inputs.interpolation,
            self.inputs.dtype or None,
        )
        self._results["out_file"] = out
        self._results["grid_source"] = source
        return runtime
