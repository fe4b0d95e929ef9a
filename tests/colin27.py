"""The Colin27 single-subject head from Debian's ``mricron-data`` (installed by scripts/test.sh).

``ch2.nii.gz`` is the whole head (1 mm, RAS, zero background, neck included); ``ch2bet.nii.gz``
is the same image brain-extracted, whose non-zero voxels are the reference brain mask. Tests that
need them are marked :data:`requires_colin27` and skip, saying why, only when the package is
really absent (CI installs it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TEMPLATES = Path("/usr/share/mricron/templates")
HEAD = TEMPLATES / "ch2.nii.gz"
BRAIN = TEMPLATES / "ch2bet.nii.gz"

requires_colin27 = pytest.mark.skipif(
    not (HEAD.is_file() and BRAIN.is_file()),
    reason=f"Colin27 ({HEAD}, {BRAIN}) is absent: install Debian's mricron-data "
    "(scripts/test.sh does so as root)",
)
