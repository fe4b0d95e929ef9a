"""Test views of a simulated subject: its noise-free image of a protocol, and a scan read back as
a file would be (scaled values)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from tumsyn_bids.prompts.protocol import Protocol
from tumsyn_bids.simulate.signal import render
from tumsyn_bids.simulate.subject import SimulatedSubject


def ground_truth(
    subject: SimulatedSubject, protocol: Protocol, suffix: str, voxel_size: float
) -> np.ndarray:
    """The noise-free, bias-free image of ``protocol`` on the subject's grid (float32 array).

    The protocol's field strength wins; without one, the subject's scanner's.
    """
    field = protocol.magnetic_field_strength
    if field is None:
        field = subject.field_strength
    return render(subject.tissue_maps(voxel_size), protocol, suffix, float(field))


def acquire(
    subject: SimulatedSubject,
    protocol: Protocol,
    suffix: str,
    voxel_size: float,
    snr: float,
    run: int = 0,
) -> nib.Nifti1Image:
    """:meth:`SimulatedSubject.encoded_scan` read back from its bytes, so ``get_fdata()`` gives
    the scaled values, as for the file the dataset writer saves."""
    encoded = subject.encoded_scan(protocol, suffix, voxel_size, snr, run=run)
    return nib.Nifti1Image.from_bytes(encoded.to_bytes())
