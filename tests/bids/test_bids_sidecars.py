"""Tests of the sidecar of a synthesized image (tumsyn_bids.bids.sidecars), and of the whole
derivative dataset against the official BIDS validator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tumsyn_bids.bids.dataset import update_bidsignore, write_dataset_description
from tumsyn_bids.bids.io import atomic_write_json, atomic_write_text, json_text, save_derivative
from tumsyn_bids.bids.names import (
    CITATION_RELPATH,
    DerivativesError,
    bids_uri,
    brain_mask_relpath,
    derivative_relpath,
    preproc_relpath,
)
from tumsyn_bids.bids.sidecars import (
    brain_mask_sidecar,
    complete_sidecar,
    inference_record,
    model_record,
    protocol_record,
    software_versions,
    synthesis_sidecar,
)
from tumsyn_bids.prompts.protocol import Protocol

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bids-examples"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4
SOURCE = "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii.gz"


def _sidecar(**overrides) -> dict:
    arguments = {
        "source_relpath": SOURCE,
        "target_suffix": "T2w",
        "source_prompt": "Age: 16; Gender: F; Modality: T1w; ...",
        "target_prompt": "Age: 16; Gender: F; Modality: T2w; ...",
        "model": model_record("/weights/a/checkpoint.pth", SHA_A, "C:\\w\\ckpt_CLIP.pt", SHA_B),
        "inference": inference_record(
            patch_size=60,
            overlap=0.5,
            batch_size=4,
            device="cuda:1",
            precision="bf16",
            reference=False,
        ),
        "software": {"tumsyn-bids": "0.1.0", "numpy": "2.0.0"},
        "target_protocol": Protocol(
            repetition_time=3.2,
            echo_time=0.563,
            flip_angle="T2var",
            magnetic_field_strength=3.0,
            manufacturer="Siemens",
            voxel_size=(0.8, 0.8, 0.8),
        ),
    }
    arguments.update(overrides)
    return synthesis_sidecar(**arguments)


def test_sidecar_keys_and_values() -> None:
    sidecar = _sidecar()
    assert set(sidecar) == {
        "Description",
        "Sources",
        "SpatialReference",
        "SkullStripped",
        "SourcePrompt",
        "TargetPrompt",
        "TargetProtocol",
        "Model",
        "Inference",
        "SynthesisSoftwareVersions",
    }
    uri = f"bids:raw:{SOURCE}"
    assert sidecar["Sources"] == [uri]
    assert sidecar["SpatialReference"] == uri
    assert sidecar["SkullStripped"] is False
    assert "T1w image" in sidecar["Description"] and SOURCE in sidecar["Description"]
    assert sidecar["Description"].startswith("Synthesized by TUMSyn")
    assert sidecar["Description"].endswith("not an acquired image.")
    assert sidecar["TargetProtocol"] == {
        "RepetitionTime": 3.2,
        "EchoTime": 0.563,
        "FlipAngle": "T2var",
        "MagneticFieldStrength": 3.0,
        "Manufacturer": "Siemens",
        "VoxelSize": [0.8, 0.8, 0.8],
    }
    assert sidecar["Model"]["Checkpoints"] == {
        "Synthesis": {"File": "checkpoint.pth", "SHA256": SHA_A},
        "TextEncoder": {"File": "ckpt_CLIP.pt", "SHA256": SHA_B},
    }
    assert sidecar["Model"]["Name"] == "TUMSyn"
    assert sidecar["Inference"] == {
        "PatchSize": [60, 60, 60],
        "Overlap": 0.5,
        "BatchSize": 4,
        "Device": "cuda",
        "Precision": "bf16",
        "ReferenceMode": False,
        "Speed": "default",
        "OutputResolution": "source grid",
    }
    assert "Resolution" not in sidecar


#: A preprocessing summary as PreprocSummary writes it (the keys of docs/preprocessing.md).
SUMMARY = {
    "Steps": ["conform", "brain_mask", "inu", "apply_mask"],
    "Software": {"antspyx": "0.6.3", "deepbet": "1.0.2", "nibabel": "5.4.2", "torch": "2.13.0"},
    "Conform": {"SourceAxisCodes": "LPS", "SourceToRAS": [[0, -1], [1, -1], [2, 1]],
                "Reoriented": True},
    "BrainMask": {"Method": "t1w-same-grid", "AlreadyExtractedCheck": "not brain-extracted"},
    "Warnings": [],
    "SkullStripped": True,
}  # fmt: skip


def test_preprocessing_completes_the_synthesis_sidecar() -> None:
    mask_uri = bids_uri(brain_mask_relpath(SOURCE), "")
    base = _sidecar(extra_sources=[mask_uri])
    done = complete_sidecar(
        "synthesized", base, SUMMARY, masked_output=True, patches={"Computed": 7, "Skipped": 5}
    )
    assert done["Sources"] == [f"bids:raw:{SOURCE}", mask_uri]
    assert done["SkullStripped"] is True and base["SkullStripped"] is False
    assert done["Preprocessing"]["Steps"] == SUMMARY["Steps"]
    assert done["Preprocessing"]["Software"]["deepbet"] == "1.0.2"
    assert "SkullStripped" not in done["Preprocessing"]
    assert done["Inference"]["OutputMasked"] is True
    assert done["Inference"]["Patches"] == {"Computed": 7, "Skipped": 5}
    assert {k: v for k, v in done.items() if k not in ("SkullStripped", "Preprocessing",
            "Inference")} == {k: v for k, v in base.items() if k not in ("SkullStripped",
            "Inference")}  # fmt: skip
    with pytest.raises(ValueError, match="kind"):
        complete_sidecar("bias", base, SUMMARY)


def test_mask_and_preproc_sidecars() -> None:
    reference = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    flair = "sub-01/ses-1/anat/sub-01_ses-1_FLAIR.nii.gz"
    mask = complete_sidecar("mask", {"source": flair, "reference": reference}, SUMMARY)
    assert mask["Type"] == "Brain"
    assert mask["Sources"] == [f"bids:raw:{flair}", f"bids:raw:{reference}"]
    assert mask["SpatialReference"] == f"bids:raw:{flair}"
    assert f"the T1w image {reference}, on the same grid" in mask["Description"]
    deepbet = brain_mask_sidecar(SOURCE, "deepbet")
    assert deepbet["Sources"] == [f"bids:raw:{SOURCE}"] and "deepbet" in deepbet["Description"]
    prep = complete_sidecar("preproc", {"source": SOURCE}, SUMMARY)
    assert prep["SkullStripped"] is False and "N4" in prep["Description"]
    assert prep["Preprocessing"]["Steps"] == SUMMARY["Steps"]


def test_sidecar_for_resampled_output() -> None:
    sidecar = _sidecar(output_voxel_size=(0.8, 0.8, 1.25), skull_stripped=True)
    assert sidecar["SkullStripped"] is True
    assert sidecar["SpatialReference"] == f"bids:raw:{SOURCE}"
    assert "0.8 x 0.8 x 1.25 mm" in sidecar["Resolution"]
    with pytest.raises(DerivativesError):
        _sidecar(output_voxel_size=(0.8, 0.8))


def test_sidecar_is_deterministic(tmp_path: Path) -> None:
    first = json_text(_sidecar())
    assert first == json_text(_sidecar())
    a = atomic_write_json(tmp_path / "a.json", _sidecar())
    b = atomic_write_json(tmp_path / "b.json", _sidecar())
    assert a.read_bytes() == b.read_bytes() == first.encode()
    assert first.endswith("}\n") and not first.endswith("\n\n")
    assert first.startswith('{\n  "Description"')  # indent 2, keys sorted
    data = json.loads(first)
    assert list(data) == sorted(data)
    assert "/weights" not in first and str(tmp_path) not in first


def test_protocol_record_mapping_and_errors() -> None:
    record = protocol_record({"EchoTime": 0.003, "InversionTime": None, "VoxelSize": (1, 1, 1)})
    assert record == {"EchoTime": 0.003, "VoxelSize": [1.0, 1.0, 1.0]}
    assert protocol_record(None) == {}
    with pytest.raises(DerivativesError, match="EchoTim"):
        protocol_record({"EchoTim": 0.003})


def test_model_record_refuses_bad_digest() -> None:
    with pytest.raises(DerivativesError, match="sha256"):
        model_record("a.pth", "abc", "b.pt", SHA_B)
    assert model_record("a.pth", SHA_A.upper(), "b.pt", SHA_B, text_heads=8)["TextHeads"] == 8


def test_inference_record_patch_and_resolution() -> None:
    record = inference_record(
        patch_size=(48, 60, 60),
        overlap=0.25,
        batch_size=1,
        device="cpu",
        precision="fp32",
        reference=True,
        output_voxel_size=[1, 1, 1],
    )
    assert record["PatchSize"] == [48, 60, 60]
    assert record["OutputResolution"] == [1.0, 1.0, 1.0]
    assert record["ReferenceMode"] is True
    assert record["Speed"] == "reference"
    fast = inference_record(
        patch_size=32, overlap=0.5, batch_size=1, device="cuda", precision="bf16",
        reference=False, speed="fast",
    )  # fmt: skip
    assert (fast["Speed"], fast["ReferenceMode"], fast["Precision"]) == ("fast", False, "bf16")


def test_software_versions_do_not_import_torch() -> None:
    code = (
        "import sys, json\n"
        "from tumsyn_bids.bids.sidecars import software_versions\n"
        "v = software_versions()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(json.dumps(v))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    versions = json.loads(result.stdout)
    import tumsyn_bids

    assert versions["tumsyn-bids"] == tumsyn_bids.__version__
    for name in ("numpy", "nibabel", "pybids", "python"):
        assert versions[name]
    assert list(versions) == sorted(versions)
    assert software_versions({"cuda": "12.4"})["cuda"] == "12.4"


# --------------------------------------------------------------------------------------------
# The official validator accepts what we write
# --------------------------------------------------------------------------------------------


def test_bids_validator_accepts_derivative_dataset(tmp_path: Path, make_image) -> None:
    exe = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("bids-validator-deno is not installed")
    raw = EXAMPLES / "ds000117"
    out = tmp_path / "out"
    write_dataset_description(out, raw, "0.1.0", {"Type": "docker", "Tag": "x/y:0.1.0"})
    sources = [
        ("sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz", "T1w", "T2w", None),
        ("sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz", "T1w", "FLAIR", "1mm"),
        ("sub-01/anat/sub-01_acq-x_run-1_echo-1_part-mag_T2starw.nii", "T2starw", "T1w", None),
    ]
    for source, source_suffix, target, res in sources:
        rel = derivative_relpath(source, target, source_suffix, res=res)
        voxels = (1.0, 1.0, 1.0) if res else None
        mask_uri = bids_uri(brain_mask_relpath(source), "")
        sidecar = _sidecar(
            source_relpath=source, target_suffix=target, output_voxel_size=voxels,
            extra_sources=[mask_uri],
        )  # fmt: skip
        sidecar = complete_sidecar("synthesized", sidecar, SUMMARY, patches={"Computed": 3})
        save_derivative(out, rel, make_image(), sidecar)
        # preprocessing's derivatives: the brain mask (uint8) and the preprocessed source
        mask = make_image()
        mask = type(mask)((mask.get_fdata() > 0).astype("uint8"), mask.affine)
        save_derivative(out, brain_mask_relpath(source), mask,
                        complete_sidecar("mask", {"source": source}, SUMMARY))  # fmt: skip
        save_derivative(out, preproc_relpath(source), make_image(),
                        complete_sidecar("preproc", {"source": source}, SUMMARY))  # fmt: skip
    # logs/ (CITATION.md, config.json...) is outside the BIDS layout and listed in .bidsignore
    atomic_write_text(out / CITATION_RELPATH, "# Citing tumsyn-bids\n")
    update_bidsignore(out, ["logs/"])
    env = dict(os.environ, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1")
    try:
        result = subprocess.run(
            [exe, str(out), "--format", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"bids-validator-deno did not run: {exc}")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"bids-validator-deno gave no report: {result.stderr[-500:]}")
    errors = [
        (issue["code"], issue.get("subCode"), issue.get("location"))
        for issue in report["issues"]["issues"]
        if issue["severity"] == "error"
    ]
    assert errors == []
