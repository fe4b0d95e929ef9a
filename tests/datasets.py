"""Small BIDS datasets for tests, built from the reference fixture's input image."""

import hashlib
import json
import shutil
from pathlib import Path

from tests.conftest import SMALL

T1_SIDECAR = {
    "RepetitionTime": 2.5,
    "EchoTime": 0.00298,
    "InversionTime": 1.0,
    "FlipAngle": 8,
    "MagneticFieldStrength": 3,
    "Manufacturer": "SIEMENS",
}


def make_dataset(root: Path) -> Path:
    """sub-01 (no session, full sidecar, in participants.tsv), sub-02/ses-1 (no sidecar, no row)."""
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-02" / "ses-1" / "anat").mkdir(parents=True)
    src = SMALL / "input_T1w.nii.gz"
    shutil.copy(src, root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    shutil.copy(src, root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz")
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text(json.dumps(T1_SIDECAR))
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0"})
    )
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t34\tF\n")
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
