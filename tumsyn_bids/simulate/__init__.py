"""A physics-based multi-contrast brain MRI simulator that writes BIDS datasets with ground truth.

Training and evaluating a text-guided synthesis model needs many subjects scanned with many
protocols, and evaluation needs to know what the *true* image of a protocol looks like. Real
data gives neither at scale, so we simulate: subjects are the MNI ICBM152 2009 tissue maps
warped at random (:mod:`.anatomy`, :mod:`.subject`), images follow from textbook signal
equations with literature tissue parameters (:mod:`.signal`, :mod:`.tissues`), and protocols
are drawn per scan from realistic ranges (:mod:`.protocols`); :mod:`.head` optionally wraps the
brain in a head (skull, scalp, fat). Because the tissue maps are known,
the image of any protocol is exact ground truth (:func:`render_ground_truth`).

The package uses numpy, scipy and nibabel only (no torch), and reads the template from nilearn's
installed data files without importing nilearn.

Typical use::

    from tumsyn_bids.simulate import write_simulated_dataset, simulated_scans, render_ground_truth

    root = write_simulated_dataset("sim", n_subjects=10, voxel_size=1.5, seed=0)
    scan = simulated_scans(root)[0]
    truth = render_ground_truth(root, scan.subject, scan.protocol, scan.suffix)
"""

from .anatomy import (
    TEMPLATE_NOTICE,
    TEMPLATE_REFERENCES,
    TissueMaps,
    grid_for,
    load_template,
    template_tissue_maps,
)
from .dataset import DEFAULT_MODALITIES, subject_labels, write_simulated_dataset
from .ground_truth import (
    SimulatedScan,
    brain_mask,
    load_tissue_maps,
    render_ground_truth,
    simulated_scans,
)
from .head import HEAD_MARGIN_MM, head_fractions, head_levels, render_head
from .protocols import ScanProtocol, sample_protocol
from .signal import (
    SIGNAL_SCALE,
    SUFFIXES,
    inversion_recovery,
    mprage,
    render,
    sequence_for,
    spin_echo,
    spoiled_gradient_echo,
    tissue_signals,
)
from .subject import Deformation, SimulatedSubject, draw_subject
from .tissues import (
    HEAD_TISSUES,
    TISSUES,
    TissueParameters,
    head_tissue_parameters,
    tissue_parameters,
)

__all__ = [
    "DEFAULT_MODALITIES",
    "HEAD_MARGIN_MM",
    "HEAD_TISSUES",
    "SIGNAL_SCALE",
    "SUFFIXES",
    "TEMPLATE_NOTICE",
    "TEMPLATE_REFERENCES",
    "TISSUES",
    "Deformation",
    "ScanProtocol",
    "SimulatedScan",
    "SimulatedSubject",
    "TissueMaps",
    "TissueParameters",
    "brain_mask",
    "draw_subject",
    "grid_for",
    "head_fractions",
    "head_levels",
    "head_tissue_parameters",
    "inversion_recovery",
    "load_template",
    "load_tissue_maps",
    "mprage",
    "render",
    "render_ground_truth",
    "render_head",
    "sample_protocol",
    "sequence_for",
    "simulated_scans",
    "spin_echo",
    "spoiled_gradient_echo",
    "subject_labels",
    "template_tissue_maps",
    "tissue_parameters",
    "tissue_signals",
    "write_simulated_dataset",
]
