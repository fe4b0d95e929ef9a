"""Write one derivative (image + sidecar) into the output dataset, atomically, and finish its
sidecar with what was found at run time."""

from __future__ import annotations

import json
import os

import nibabel as nib
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..bids.io import save_derivative
from ..bids.names import sidecar_relpath
from ..bids.sidecars import complete_sidecar


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to store")
    output_dir = Directory(mandatory=True, desc="root of the derivatives dataset")
    relpath = traits.Str(mandatory=True, desc="BIDS derivative path relative to output_dir")
    sidecar = traits.Str(mandatory=True, desc="JSON sidecar content (a JSON object)")
    wait_for = traits.List(
        traits.Any,
        desc="outputs of nodes that must finish first (not read): e.g. the same "
        "image in template spaces, so that a finished source-grid output means a finished job",
    )


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the stored image")
    out_sidecar = File(desc="its JSON sidecar")


class DerivativesSink(SimpleInterface):
    """Store ``in_file`` at ``output_dir/relpath`` with its sidecar.

    Both files are written under a temporary name and renamed, the sidecar last
    (:func:`tumsyn_bids.bids.io.save_derivative`): a reader, or a rerun deciding what is
    finished, never sees a half-written output.
    """

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec

    def _run_interface(self, runtime):
        out = save_derivative(
            self.inputs.output_dir,
            self.inputs.relpath,
            nib.load(self.inputs.in_file),
            json.loads(self.inputs.sidecar),
        )
        self._results["out_file"] = str(out)
        self._results["out_sidecar"] = os.path.join(
            self.inputs.output_dir, sidecar_relpath(self.inputs.relpath)
        )
        return runtime


class _FinishSidecarInputSpec(BaseInterfaceInputSpec):
    kind = traits.Enum("synthesized", "mask", "preproc", mandatory=True, desc="which derivative")
    base = traits.Str(mandatory=True, desc="JSON: what is known when the workflow is built")
    summary = File(exists=True, mandatory=True, desc="the preprocessing summary (preproc.json)")
    masked_output = traits.Bool(True, usedefault=True, desc="output set to 0 outside the mask")
    patches_computed = traits.Int(desc="patches the synthesis node encoded")
    patches_skipped = traits.Int(desc="patches it skipped (no brain-mask voxel)")


class _FinishSidecarOutputSpec(TraitedSpec):
    sidecar = traits.Str(desc="the finished sidecar (a JSON object)")


class FinishSidecar(SimpleInterface):
    """Finish a derivative's sidecar with what preprocessing and synthesis found at run time
    (:func:`tumsyn_bids.bids.sidecars.complete_sidecar`): whether the source was
    brain-extracted, the steps and their software, the mask method, the patch counts."""

    input_spec = _FinishSidecarInputSpec
    output_spec = _FinishSidecarOutputSpec

    def _run_interface(self, runtime):
        with open(self.inputs.summary, encoding="utf-8") as fh:
            summary = json.load(fh)
        patches = None
        if isdefined(self.inputs.patches_computed):
            patches = {"Computed": self.inputs.patches_computed}
            if isdefined(self.inputs.patches_skipped):
                patches["Skipped"] = self.inputs.patches_skipped
        sidecar = complete_sidecar(
            self.inputs.kind,
            json.loads(self.inputs.base),
            summary,
            masked_output=self.inputs.masked_output,
            patches=patches,
        )
        self._results["sidecar"] = json.dumps(sidecar, sort_keys=True)
        return runtime


class _SpaceSidecarInputSpec(BaseInterfaceInputSpec):
    sidecar = traits.Str(mandatory=True, desc="JSON sidecar of the derivative on the source grid")
    space = traits.Str(mandatory=True, desc="output space, e.g. MNI152NLin2009aSym:res-2")
    grid_source = traits.Str(desc="where the target grid comes from (ApplyTemplateTransform)")
    sources = traits.List(traits.Str, mandatory=True, desc="BIDS URIs of the files used")
    interpolation = traits.Str(mandatory=True, desc="interpolation of the one resampling")


class _SpaceSidecarOutputSpec(TraitedSpec):
    sidecar = traits.Str(desc="the sidecar of the derivative in the template space (JSON)")


class SpaceSidecar(SimpleInterface):
    """The sidecar of a derivative resampled into a template space: every field of the
    source-grid derivative's sidecar, ``Sources`` replaced by the files it was resampled from
    (the source-grid derivative and the transform), plus ``SpatialReference`` and ``Resolution``
    (:func:`tumsyn_bids.templates.spaces.space_metadata`) and a ``Resampling`` record
    (interpolation, transform, target grid, software)."""

    input_spec = _SpaceSidecarInputSpec
    output_spec = _SpaceSidecarOutputSpec

    def _run_interface(self, runtime):
        from importlib.metadata import version

        from ..templates.spaces import parse_output_spaces, space_metadata

        (space,) = parse_output_spaces([self.inputs.space])
        grid = self.inputs.grid_source if isdefined(self.inputs.grid_source) else None
        sidecar = json.loads(self.inputs.sidecar)
        sidecar["Sources"] = list(self.inputs.sources)
        sidecar.update(space_metadata(space, grid))
        sidecar["Resampling"] = {
            "Interpolation": self.inputs.interpolation,
            "Transform": self.inputs.sources[-1],
            "Software": {"antspyx": version("antspyx")},
            "Note": "resampled once, from the source grid straight onto the template grid",
        }
        self._results["sidecar"] = json.dumps(sidecar, sort_keys=True)
        return runtime


class _FileSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store as it is")
    output_dir = Directory(mandatory=True, desc="root of the derivatives dataset")
    relpath = traits.Str(mandatory=True, desc="path relative to output_dir")
    bidsignore = traits.List(traits.Str, desc="patterns to add to the output's .bidsignore")


class _FileSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the stored file")


class FileSink(SimpleInterface):
    """Store a file that is not a NIfTI image (a transform) at ``output_dir/relpath``, byte for
    byte and atomically (:func:`tumsyn_bids.bids.io.atomic_write_bytes`); ``bidsignore``
    patterns (files BIDS has no name for yet, e.g. ``*_xfm.h5``) are added to the output's
    ``.bidsignore`` first."""

    input_spec = _FileSinkInputSpec
    output_spec = _FileSinkOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        from ..bids.dataset import update_bidsignore
        from ..bids.io import atomic_write_bytes
        from ..bids.names import posix_relpath

        if isdefined(self.inputs.bidsignore) and self.inputs.bidsignore:
            update_bidsignore(self.inputs.output_dir, self.inputs.bidsignore)
        rel = posix_relpath(self.inputs.relpath, "derivative path")
        out = atomic_write_bytes(
            Path(self.inputs.output_dir) / rel, Path(self.inputs.in_file).read_bytes()
        )
        self._results["out_file"] = str(out)
        return runtime
