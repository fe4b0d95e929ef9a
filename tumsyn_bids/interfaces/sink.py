"""Write one derivative (image + sidecar) into the output dataset, atomically."""

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
    traits,
)

from ..bids.io import save_derivative
from ..bids.names import sidecar_relpath


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
