"""Tests of how tumsyn-bids names, describes and writes its derivatives."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumsyn_bids.bids import derivatives as d
from tumsyn_bids.bids.layout import parse_filename
from tumsyn_bids.prompts import Protocol

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "bids-examples"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

NAMING_CASES = [
    # (source, source suffix, target, expected)
    (
        "sub-01/anat/sub-01_T1w.nii.gz",
        "T1w",
        "T2w",
        "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz",
    ),
    (
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii.gz",
        "T1w",
        "T2w",
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_desc-tumsynFromT1w_T2w.nii.gz",
    ),
    (
        "sub-02/ses-pre/anat/sub-02_ses-pre_acq-fast_ce-gad_rec-norm_run-02_T1w.nii.gz",
        "T1w",
        "FLAIR",
        "sub-02/ses-pre/anat/"
        "sub-02_ses-pre_acq-fast_ce-gad_rec-norm_run-02_desc-tumsynFromT1w_FLAIR.nii.gz",
    ),
    (  # uncompressed source, multi-echo magnitude, T2starw
        "sub-03/anat/sub-03_acq-megre_run-1_echo-2_part-mag_T2starw.nii",
        "T2starw",
        "T1w",
        "sub-03/anat/sub-03_acq-megre_run-1_echo-2_part-mag_desc-tumsynFromT2starw_T1w.nii.gz",
    ),
    (  # an existing desc is replaced, not duplicated
        "sub-01/anat/sub-01_acq-mprage_desc-preproc_T1w.nii.gz",
        "T1w",
        "PDw",
        "sub-01/anat/sub-01_acq-mprage_desc-tumsynFromT1w_PDw.nii.gz",
    ),
    (  # entities out of BIDS order in the source come out in order
        "sub-01/anat/sub-01_run-3_acq-hires_T2w.nii.gz",
        "T2w",
        "T1w",
        "sub-01/anat/sub-01_acq-hires_run-3_desc-tumsynFromT2w_T1w.nii.gz",
    ),
    (  # inversion and part (MP2RAGE-like), same target as source
        "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mp2rage_inv-2_part-mag_MP2RAGE.nii.gz",
        "MP2RAGE",
        "T1w",
        "sub-01/ses-mri/anat/"
        "sub-01_ses-mri_acq-mp2rage_inv-2_part-mag_desc-tumsynFromMP2RAGE_T1w.nii.gz",
    ),
    (
        "sub-01/anat/sub-01_T1w.nii.gz",
        "T1w",
        "T1w",
        "sub-01/anat/sub-01_desc-tumsynFromT1w_T1w.nii.gz",
    ),
    (  # the real bids-examples file names
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
        "T1w",
        "T2w",
        "sub-01/ses-1/anat/sub-01_ses-1_desc-tumsynFromT1w_T2w.nii.gz",
    ),
]


@pytest.mark.parametrize(("source", "source_suffix", "target", "expected"), NAMING_CASES)
def test_derivative_relpath(source: str, source_suffix: str, target: str, expected: str) -> None:
    assert d.derivative_relpath(source, target, source_suffix) == expected


@pytest.mark.parametrize(("source", "source_suffix", "target", "_"), NAMING_CASES)
def test_derivative_names_are_in_entity_order_with_desc_last(
    source: str, source_suffix: str, target: str, _: str
) -> None:
    out = d.derivative_relpath(source, target, source_suffix)
    entities, suffix, extension = parse_filename(out)
    ranks = [d.ENTITY_ORDER.index(key) for key in entities]
    assert ranks == sorted(ranks)
    assert list(entities)[-1] == "desc"
    assert entities["desc"] == f"tumsynFrom{source_suffix}"
    assert (suffix, extension) == (target, ".nii.gz")
    # every source entity other than desc survives unchanged
    source_entities, _, _ = parse_filename(source)
    source_entities.pop("desc", None)
    assert {k: v for k, v in entities.items() if k != "desc"} == source_entities


def test_res_entity_goes_before_desc() -> None:
    out = d.derivative_relpath("sub-01/anat/sub-01_run-1_T1w.nii.gz", "T2w", "T1w", res="08mm")
    assert out == "sub-01/anat/sub-01_run-1_res-08mm_desc-tumsynFromT1w_T2w.nii.gz"


def test_unknown_entities_keep_their_order_before_desc() -> None:
    out = d.derivative_relpath(
        "sub-01/anat/sub-01_foo-x_acq-a_bar-y_T1w.nii.gz", "T2w", "T1w"
    )  # foo and bar are not BIDS entities
    assert out == "sub-01/anat/sub-01_acq-a_foo-x_bar-y_desc-tumsynFromT1w_T2w.nii.gz"


def test_entity_order_matches_bids_schema() -> None:
    schema_module = pytest.importorskip("bidsschematools.schema")
    schema = schema_module.load_schema()
    names = [schema.objects.entities[key].name for key in schema.rules.entities]
    known = [name for name in names if name in d.ENTITY_ORDER]
    assert known == [name for name in d.ENTITY_ORDER if name in names]
    assert names[-1] == d.ENTITY_ORDER[-1] == "desc"
    for required in ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part", "res"):
        assert required in d.ENTITY_ORDER


@pytest.mark.parametrize(
    ("suffix", "label"),
    [("T1w", "tumsynFromT1w"), ("T2starw", "tumsynFromT2starw"), ("T1w-x_y", "tumsynFromT1wxy")],
)
def test_desc_label_is_alphanumeric(suffix: str, label: str) -> None:
    assert d.desc_label(suffix) == label
    assert label.isalnum()


@pytest.mark.parametrize(
    ("source", "source_suffix", "target", "message"),
    [
        ("sub-01/anat/sub-01_T1w.nii.gz", "T2w", "FLAIR", "source suffix given"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "T1", "T2w", "source suffix given"),
        ("/data/sub-01/anat/sub-01_T1w.nii.gz", "T1w", "T2w", "relative"),
        ("../sub-01/anat/sub-01_T1w.nii.gz", "T1w", "T2w", "relative"),
        ("sub-01/anat/sub-01_T1w.json", "T1w", "T2w", "NIfTI"),
        ("sub-01/anat/acq-x_T1w.nii.gz", "T1w", "T2w", "sub-<label>"),
        ("sub-01/anat/sub-01_mprage_T1w.nii.gz", "T1w", "T2w", "not a BIDS file name"),
        ("sub-01/anat/sub-01_run-1_run-2_T1w.nii.gz", "T1w", "T2w", "not a BIDS file name"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "T1w", "T2w_x", "alphanumeric"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "T1w", "", "alphanumeric"),
    ],
)
def test_derivative_relpath_refuses_bad_input(
    source: str, source_suffix: str, target: str, message: str
) -> None:
    with pytest.raises(d.DerivativesError, match=message):
        d.derivative_relpath(source, target, source_suffix)


def test_sidecar_relpath() -> None:
    assert d.sidecar_relpath("sub-01/anat/sub-01_desc-x_T2w.nii.gz") == (
        "sub-01/anat/sub-01_desc-x_T2w.json"
    )
    assert d.sidecar_relpath("sub-01/anat/sub-01_T2w.nii") == "sub-01/anat/sub-01_T2w.json"
    with pytest.raises(d.DerivativesError):
        d.sidecar_relpath("sub-01/anat/sub-01_T2w.mgz")


def test_bids_uri() -> None:
    assert d.bids_uri("sub-01/anat/sub-01_T1w.nii.gz") == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert d.bids_uri(Path("sub-01/anat/x.nii")) == "bids:raw:sub-01/anat/x.nii"
    assert d.bids_uri("sub-01/anat/x.nii", dataset="other") == "bids:other:sub-01/anat/x.nii"
    with pytest.raises(d.DerivativesError):
        d.bids_uri("/abs/sub-01/anat/x.nii")


# --------------------------------------------------------------------------------------------
# dataset_description.json
# --------------------------------------------------------------------------------------------


def test_dataset_description_content() -> None:
    raw = EXAMPLES / "ds000117"
    desc = d.dataset_description(raw, "1.2.3")
    uri = raw.resolve().as_uri()
    assert desc["Name"] == "tumsyn-bids: TUMSyn synthesized images"
    assert desc["BIDSVersion"] == "1.10.0"
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"] == [
        {
            "Name": "tumsyn-bids",
            "Version": "1.2.3",
            "CodeURL": "https://github.com/tumsyn-bids/tumsyn-bids",
        }
    ]
    raw_doi = json.loads((raw / "dataset_description.json").read_text())["DatasetDOI"]
    assert desc["SourceDatasets"] == [{"URL": uri, "DOI": raw_doi}]
    assert desc["DatasetLinks"] == {"raw": uri}
    assert uri.startswith("file:///")


def test_dataset_description_copies_version_and_container(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(
        json.dumps(
            {"Name": "x", "BIDSVersion": "1.8.0", "DatasetDOI": " doi:10.1/x ", "Version": 2}
        )
    )
    desc = d.dataset_description(raw / "." / "", "0.1.0", {"Type": "docker", "Tag": "t:1"})
    assert desc["SourceDatasets"] == [{"URL": raw.as_uri(), "DOI": "doi:10.1/x", "Version": "2"}]
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "t:1"}
    with pytest.raises(d.DerivativesError, match="Type"):
        d.dataset_description(raw, "0.1.0", {"Tag": "x"})


def test_dataset_description_without_raw_description(tmp_path: Path) -> None:
    desc = d.dataset_description(tmp_path, "0.1.0")
    assert desc["SourceDatasets"] == [{"URL": tmp_path.as_uri()}]


def test_write_dataset_description_is_deterministic_and_rewrites_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    raw = EXAMPLES / "7t_trt"
    path = d.write_dataset_description(out, raw, "0.1.0")
    first = path.read_bytes()
    assert first.endswith(b"}\n")
    assert d.write_dataset_description(out, raw, "0.1.0").read_bytes() == first
    assert d.existing_version(out) == "0.1.0"
    # an older tumsyn-bids description (even one with extra keys) is replaced, not merged
    data = json.loads(first)
    data["GeneratedBy"][0]["Version"] = "0.0.1"
    data["Stale"] = True
    path.write_text(json.dumps(data))
    assert d.existing_version(out) == "0.0.1"
    assert d.write_dataset_description(out, raw, "0.1.0").read_bytes() == first
    assert not list(out.glob(".*tmp*"))


def test_foreign_dataset_description_is_not_overwritten(tmp_path: Path) -> None:
    foreign = {"Name": "fmriprep", "DatasetType": "derivative", "GeneratedBy": [{"Name": "x"}]}
    (tmp_path / "dataset_description.json").write_text(json.dumps(foreign))
    with pytest.raises(d.DerivativesError, match="not written by tumsyn-bids"):
        d.write_dataset_description(tmp_path, EXAMPLES / "ds114", "0.1.0")
    assert json.loads((tmp_path / "dataset_description.json").read_text()) == foreign
    (tmp_path / "dataset_description.json").write_text("{broken")
    with pytest.raises(d.DerivativesError):
        d.existing_version(tmp_path)
    assert d.existing_version(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("env", "dockerenv", "expected"),
    [
        ({}, False, None),
        ({}, True, {"Type": "docker"}),
        (
            {"TUMSYN_CONTAINER_TYPE": "docker", "TUMSYN_CONTAINER_TAG": "tumsyn/t:0.1"},
            True,
            {"Type": "docker", "Tag": "tumsyn/t:0.1"},
        ),
        ({"TUMSYN_CONTAINER_TYPE": "Singularity"}, False, {"Type": "singularity"}),
        (
            {"SINGULARITY_NAME": "tumsyn_0.1.sif"},
            True,
            {"Type": "singularity", "Tag": "tumsyn_0.1.sif"},
        ),
        ({"APPTAINER_NAME": "t.sif"}, False, {"Type": "singularity", "Tag": "t.sif"}),
        (
            {
                "TUMSYN_CONTAINER_TYPE": "apptainer",
                "APPTAINER_NAME": "t.sif",
                "TUMSYN_CONTAINER_TAG": "ghcr.io/x:1",
            },
            False,
            {"Type": "singularity", "Tag": "ghcr.io/x:1"},
        ),
    ],
)
def test_detect_container(
    tmp_path: Path, env: dict[str, str], dockerenv: bool, expected: dict | None
) -> None:
    marker = tmp_path / ".dockerenv"
    if dockerenv:
        marker.touch()
    assert d.detect_container(env, dockerenv=marker) == expected


# --------------------------------------------------------------------------------------------
# Sidecars
# --------------------------------------------------------------------------------------------

SOURCE = "sub-01/ses-1/anat/sub-01_ses-1_acq-mprage_run-1_T1w.nii.gz"


def _sidecar(**overrides) -> dict:
    arguments = {
        "source_relpath": SOURCE,
        "target_suffix": "T2w",
        "source_prompt": "Age: 16; Gender: F; Modality: T1w; ...",
        "target_prompt": "Age: 16; Gender: F; Modality: T2w; ...",
        "model": d.model_record("/weights/a/checkpoint.pth", SHA_A, "C:\\w\\ckpt_CLIP.pt", SHA_B),
        "inference": d.inference_record(
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
    return d.synthesis_sidecar(**arguments)


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
        "OutputResolution": "source grid",
    }
    assert "Resolution" not in sidecar


def test_sidecar_for_resampled_output() -> None:
    sidecar = _sidecar(output_voxel_size=(0.8, 0.8, 1.25), skull_stripped=True)
    assert sidecar["SkullStripped"] is True
    assert sidecar["SpatialReference"] == f"bids:raw:{SOURCE}"
    assert "0.8 x 0.8 x 1.25 mm" in sidecar["Resolution"]
    with pytest.raises(d.DerivativesError):
        _sidecar(output_voxel_size=(0.8, 0.8))


def test_sidecar_is_deterministic(tmp_path: Path) -> None:
    first = d.json_text(_sidecar())
    assert first == d.json_text(_sidecar())
    a = d.atomic_write_json(tmp_path / "a.json", _sidecar())
    b = d.atomic_write_json(tmp_path / "b.json", _sidecar())
    assert a.read_bytes() == b.read_bytes() == first.encode()
    assert first.endswith("}\n") and not first.endswith("\n\n")
    assert first.startswith('{\n  "Description"')  # indent 2, keys sorted
    data = json.loads(first)
    assert list(data) == sorted(data)
    assert "/weights" not in first and str(tmp_path) not in first


def test_protocol_record_mapping_and_errors() -> None:
    record = d.protocol_record({"EchoTime": 0.003, "InversionTime": None, "VoxelSize": (1, 1, 1)})
    assert record == {"EchoTime": 0.003, "VoxelSize": [1.0, 1.0, 1.0]}
    assert d.protocol_record(None) == {}
    with pytest.raises(d.DerivativesError, match="EchoTim"):
        d.protocol_record({"EchoTim": 0.003})


def test_model_record_refuses_bad_digest() -> None:
    with pytest.raises(d.DerivativesError, match="sha256"):
        d.model_record("a.pth", "abc", "b.pt", SHA_B)
    assert d.model_record("a.pth", SHA_A.upper(), "b.pt", SHA_B, text_heads=8)["TextHeads"] == 8


def test_inference_record_patch_and_resolution() -> None:
    record = d.inference_record(
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


def test_software_versions_do_not_import_torch() -> None:
    code = (
        "import sys, json\n"
        "from tumsyn_bids.bids.derivatives import software_versions\n"
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
    assert d.software_versions({"cuda": "12.4"})["cuda"] == "12.4"


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_json_text_numpy_and_nan() -> None:
    text = d.json_text({"b": np.float32(0.5), "a": np.arange(3), "c": np.int64(2)})
    assert json.loads(text) == {"a": [0, 1, 2], "b": 0.5, "c": 2}
    with pytest.raises(ValueError):
        d.json_text({"x": float("nan")})


def test_unserialisable_json_creates_nothing_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        d.atomic_write_json(target, {"bad": object()})
    assert not target.exists() and _leftovers(tmp_path) == []
    target.write_text('{"old": 1}\n')
    with pytest.raises(TypeError):
        d.atomic_write_json(target, {"bad": {1, 2}})
    assert target.read_text() == '{"old": 1}\n'
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_removes_temporary_and_keeps_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "sub-01" / "anat" / "x.json"
    d.atomic_write_text(target, "old\n")
    seen: list[str] = []
    real_replace = os.replace

    def boom(*args, **kwargs):
        seen.extend(p.name for p in target.parent.iterdir() if p.name.startswith("."))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(d.os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        d.atomic_write_text(target, "new content\n")
    monkeypatch.setattr(d.os, "replace", real_replace)
    assert target.read_text() == "old\n"
    assert _leftovers(target.parent) == []
    assert seen and all(name.startswith(".x.tmp") and name.endswith(".json") for name in seen)


def test_interrupted_nifti_write_removes_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str] = []

    def interrupt(fd):
        names.extend(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(d.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        d.atomic_save_nifti(_image(), tmp_path / "sub-01_desc-x_T2w.nii.gz")
    assert list(tmp_path.iterdir()) == []
    assert len(names) == 1
    assert names[0].startswith(".sub-01_desc-x_T2w.tmp") and names[0].endswith(".nii.gz")


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = d.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def _image(shape=(5, 6, 7)) -> nib.Nifti1Image:
    data = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    affine = np.diag([0.8, 0.8, 1.2, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.5]
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    return img


def test_gzip_output_is_byte_identical_across_saves(tmp_path: Path) -> None:
    first = d.atomic_save_nifti(_image(), tmp_path / "a" / "x.nii.gz").read_bytes()
    second = d.atomic_save_nifti(_image(), tmp_path / "b" / "x.nii.gz").read_bytes()
    assert first == second
    assert first[:2] == b"\x1f\x8b" and first[4:8] == b"\x00\x00\x00\x00"  # gzip, mtime 0
    assert first[3] & 0x08 == 0  # no file name in the gzip header
    loaded = nib.load(tmp_path / "a" / "x.nii.gz")
    np.testing.assert_array_equal(loaded.get_fdata(dtype=np.float32), _image().get_fdata())
    np.testing.assert_allclose(loaded.affine, _image().affine)
    assert gzip.decompress(first) == _image().to_bytes()
    assert _leftovers(tmp_path / "a") == []


def test_uncompressed_nifti_and_bad_extension(tmp_path: Path) -> None:
    path = d.atomic_save_nifti(_image(), tmp_path / "x.nii")
    assert path.read_bytes() == _image().to_bytes()
    with pytest.raises(d.DerivativesError):
        d.atomic_save_nifti(_image(), tmp_path / "x.mgz")


def test_save_derivative_and_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = d.derivative_relpath(SOURCE, "T2w", "T1w")
    assert not d.is_finished(tmp_path, rel)
    image_path = d.save_derivative(tmp_path, rel, _image(), _sidecar())
    assert image_path == tmp_path / rel
    assert d.is_finished(tmp_path, rel)
    json_path = tmp_path / d.sidecar_relpath(rel)
    assert json_path.read_text() == d.json_text(_sidecar())

    # an interrupted overwrite leaves the output unfinished, never with a stale sidecar
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(d, "atomic_save_nifti", broken)
    with pytest.raises(OSError):
        d.save_derivative(tmp_path, rel, _image(), _sidecar())
    assert not json_path.exists()
    assert not d.is_finished(tmp_path, rel)
    assert _leftovers(image_path.parent) == []


def test_is_finished_needs_both_non_empty(tmp_path: Path) -> None:
    rel = "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz"
    image = tmp_path / rel
    sidecar = tmp_path / d.sidecar_relpath(rel)
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    assert not d.is_finished(tmp_path, rel)
    sidecar.write_text("")
    assert not d.is_finished(tmp_path, rel)
    sidecar.write_text("{}\n")
    assert d.is_finished(tmp_path, rel)
    image.write_bytes(b"")
    assert not d.is_finished(tmp_path, rel)


# --------------------------------------------------------------------------------------------
# Citation
# --------------------------------------------------------------------------------------------

SETTINGS = {
    "sources": ["T1w"],
    "targets": ["T2w", "FLAIR"],
    "patch_size": [60, 60, 60],
    "overlap": 0.5,
    "precision": "bf16",
    "output_voxel_size": [1.0, 1.0, 1.0],
}


def test_citation_text_mentions_the_references() -> None:
    text = d.citation_text("0.1.0", SETTINGS)
    assert "T2w and FLAIR images were synthesized" in text
    assert "tumsyn-bids 0.1.0" in text
    for needle in (
        "arXiv:2409.16818",
        "Towards General Text-guided Image Synthesis",
        "10.3389/fninf.2011.00013",
        "5:13",
        "10.21105/joss.01294",
        "4(40):1294",
        "Paszke",
        "NeurIPS",
        "Derivatives",
        "10.5281/zenodo.3686061",
        "60x60x60",
        "1x1x1 mm",
        "bf16",
    ):
        assert needle in text, needle
    assert '- precision: "bf16"' in text
    assert text == d.citation_text("0.1.0", dict(reversed(SETTINGS.items())))
    assert text.endswith("\n")


def test_citation_text_without_settings() -> None:
    text = d.citation_text("9.9")
    assert "Anatomical images were synthesized" in text and "## Settings" not in text
    reference = d.citation_text("9.9", {"reference": True})
    assert "reference inference" in reference


def test_write_citation(tmp_path: Path) -> None:
    (tmp_path / ".bidsignore").write_text("*.html\n")
    path = d.write_citation(tmp_path, "0.1.0", SETTINGS)
    assert path == tmp_path / "logs" / "CITATION.md"
    assert path.read_text(encoding="utf-8") == d.citation_text("0.1.0", SETTINGS)
    d.write_citation(tmp_path, "0.1.0", SETTINGS)
    assert (tmp_path / ".bidsignore").read_text() == "*.html\nlogs/\n"
    import tumsyn_bids

    assert f"tumsyn-bids {tumsyn_bids.__version__}" in d.write_citation(tmp_path).read_text()


# --------------------------------------------------------------------------------------------
# The official validator accepts what we write
# --------------------------------------------------------------------------------------------


def test_bids_validator_accepts_derivative_dataset(tmp_path: Path) -> None:
    exe = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("bids-validator-deno is not installed")
    raw = EXAMPLES / "ds000117"
    out = tmp_path / "out"
    d.write_dataset_description(out, raw, "0.1.0", {"Type": "docker", "Tag": "x/y:0.1.0"})
    sources = [
        ("sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz", "T1w", "T2w", None),
        ("sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz", "T1w", "FLAIR", "1mm"),
        ("sub-01/anat/sub-01_acq-x_run-1_echo-1_part-mag_T2starw.nii", "T2starw", "T1w", None),
    ]
    for source, source_suffix, target, res in sources:
        rel = d.derivative_relpath(source, target, source_suffix, res=res)
        voxels = (1.0, 1.0, 1.0) if res else None
        sidecar = _sidecar(source_relpath=source, target_suffix=target, output_voxel_size=voxels)
        d.save_derivative(out, rel, _image(), sidecar)
    d.write_citation(out, "0.1.0", SETTINGS)
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
