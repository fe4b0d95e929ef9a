"""Shared fixtures: one small simulated dataset (2 subjects, 3 mm) for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumsyn_bids.simulate import write_simulated_dataset

#: Coarse voxels keep every test fast; the physics and the layout do not depend on them.
VOXEL_MM = 3.0
MODALITIES = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_simulated_dataset(
        tmp_path_factory.mktemp("simulated") / "ds",
        n_subjects=2,
        modalities=MODALITIES,
        seed=7,
        voxel_size=VOXEL_MM,
        snr=30.0,
    )
