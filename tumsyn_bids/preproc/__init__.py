"""Preprocessing of anatomical source images: conform, INU correction, brain extraction.

Raw BIDS anatomy is a head (skull, scalp, neck), carries a receive-coil bias field and is stored
in whatever axis order the scanner used. These modules turn it into what the synthesis network
was trained on, one library call per step, with functions that take and return nibabel images:

* :mod:`.orientation`: conform to RAS+ by axis permutations and flips, and back exactly
  (numpy/nibabel).
* :mod:`.masks`: the already-brain-extracted rule, mask clean-up (numpy/scipy).
* :mod:`.inu`: N4 intensity non-uniformity correction (ANTsPy).
* :mod:`.skullstrip`: deepbet brain extraction (torch, imported when called).
* :mod:`.register`: rigid registration and mask transfer between images of a session (ANTsPy).

The package knows no BIDS (paths and entities live in :mod:`tumsyn_bids.bids`) and imports
neither torch nor ANTsPy at import time; the nipype interfaces in
:mod:`tumsyn_bids.interfaces.preproc` wrap these functions, and
:func:`tumsyn_bids.workflows.preproc.init_preproc_wf` chains them.
"""
