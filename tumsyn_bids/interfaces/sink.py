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
