"""The BIDS App end to end: real pybids, nipype (MultiProc), torch and NIfTI files.

The dataset is built from the reference fixture's input image; the model is the small reference
checkpoint pair, so outputs are the authors' model's outputs.
"""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import SMALL
from tests.datasets import make_dataset, tree_digest
from tumsyn_bids.cli.run import main
from tumsyn_bids.runlog import list_runs, read_run_configs, read_run_plans


def model_args() -> list[str]:
    """The small reference model, on the source as stored (``--preproc none``): these tests
    check the app against the engine and the authors' loop on unpreprocessed input."""
    return [
        "--checkpoint", str(SMALL / "synthesis.pth"),
        "--text-encoder", str(SMALL / "text_encoder.pt"),
        "--text-heads", "2", "--patch-size", "20", "--preproc", "none",
    ]  # fmt: skip


def run_app(bids, out, work, *extra):
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(out), "participant",
           "-w", str(work), "--skip-bids-validation", *model_args(), *map(str, extra)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


OUTPUTS = [
    "sub-01/anat/sub-01_desc-tumsynFromT1w_FLAIR.nii.gz",
    "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_desc-tumsynFromT1w_FLAIR.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_desc-tumsynFromT1w_T2w.nii.gz",
]


@pytest.fixture(scope="module")
def app_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    bids = make_dataset(base / "bids")
    before = tree_digest(bids)
    res = run_app(bids, base / "out", base / "work", "--target", "T2w", "FLAIR", "--nprocs", 2)
    return base, bids, before, res


@pytest.mark.slow
def test_participant_run_writes_derivatives(app_run):
    base, bids, before, res = app_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = base / "out"
    for rel in OUTPUTS:
        img = nib.load(out / rel)
        src = nib.load(bids / (rel.split("_desc-")[0] + "_T1w.nii.gz"))
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-6)
        assert img.shape == src.shape
        side = json.loads((out / rel.replace(".nii.gz", ".json")).read_text())
        for key in ("Sources", "Description", "SkullStripped", "SpatialReference", "SourcePrompt",
                    "TargetPrompt", "TargetProtocol", "Model", "Inference",
                    "SynthesisSoftwareVersions"):  # fmt: skip
            assert key in side, key
        assert len(side["Model"]["Checkpoints"]["Synthesis"]["SHA256"]) == 64
        # no --batch-size: 20-voxel patches go two to a pass, and the sidecar says so
        assert side["Inference"]["BatchSize"] == 2
        # --preproc none: the source as stored, no mask, no preprocessing record
        assert side["SkullStripped"] is False and "Preprocessing" not in side
        assert len(side["Sources"]) == 1 and "Patches" not in side["Inference"]
        assert not list((out / rel).parent.glob("*desc-brain_mask*"))
        assert side["Inference"]["Speed"] == "default"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "tumsyn-bids"
    assert (out / "logs" / "CITATION.md").is_file()
    (run_dir,) = list_runs(out)  # the run's own record (docs/reliability.md)
    for log in ("prompts.tsv", "config.json", "runtime.json", "nipype.log"):
        assert (run_dir / log).is_file(), log
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "T2w and FLAIR images were synthesized with tumsyn-bids" in citation
    assert "overlapping patches of 20 x 20 x 20 voxels (overlap ratio 0.5)" in citation
    assert "Each output is on the voxel grid of its source image." in citation
    assert "inference-only copy with its batch normalization layers folded" in citation
    # the input dataset is never written to
    assert tree_digest(bids) == before


@pytest.mark.slow
def test_workflow_output_equals_a_direct_engine_call(app_run):
    """The workflow's output equals a direct call of the engine on the same image and prompt
    (whose agreement with the authors' loop tests/model checks)."""
    base, _, _, res = app_run
    assert res.returncode == 0
    side = json.loads((base / "out" / OUTPUTS[1].replace(".nii.gz", ".json")).read_text())
    from tests.conftest import fixture_heads
    from tumsyn_bids.model import PatchSettings, Synthesizer, load_synthesis, load_text_encoder
    from tumsyn_bids.model.volume import load_volume

    synth = Synthesizer(
        load_synthesis(SMALL / "synthesis.pth").model,
        load_text_encoder(SMALL / "text_encoder.pt", heads=fixture_heads(SMALL)).model,
        device="cpu",
    )
    vol = load_volume(SMALL / "input_T1w.nii.gz")
    expected = synth.synthesize(vol.data, side["TargetPrompt"], PatchSettings((20,) * 3, (20,) * 3))
    got = np.asarray(nib.load(base / "out" / OUTPUTS[1]).dataobj).T
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_rerun_is_byte_identical_and_skips_finished(app_run):
    base, bids, _, res = app_run
    assert res.returncode == 0
    again = run_app(bids, base / "out2", base / "work2", "--target", "T2w", "FLAIR", "--nprocs", 1)
    assert again.returncode == 0, again.stderr[-3000:]
    for rel in [*OUTPUTS, "logs/CITATION.md", "dataset_description.json"]:
        assert (base / "out" / rel).read_bytes() == (base / "out2" / rel).read_bytes(), rel
        side = rel.replace(".nii.gz", ".json")
        assert (base / "out" / side).read_bytes() == (base / "out2" / side).read_bytes(), side
    # a rerun into a finished output folder does nothing
    skip = run_app(bids, base / "out2", base / "work2", "--target", "T2w", "FLAIR", "--dry-run")
    assert skip.returncode == 0
    assert skip.stdout.count(" done ") == 4, skip.stdout


def test_dry_run_prompts_are_the_hand_written_ones(tmp_path, capsys):
    bids = make_dataset(tmp_path / "bids")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--dry-run", "--target", "T2w", "-w", str(tmp_path / "w")])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    tail = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  "
    expected = [
        "Age: 34; Gender: F; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (1.0, 1.2, 1.5); "
        + tail
        + "(2500.0, 2.98, 1000.0, 8.0)",
        "Age: 34; Gender: F; Scanner: 3.0 Siemens; Modality: T2w; Voxel size: (1.0, 1.2, 1.5); "
        + tail
        + "(3200.0, 563.0, None, T2var)",
        "Age: None; Gender: None; Scanner: None None; Modality: T1w; Voxel size: (1.0, 1.2, 1.5); "
        + tail
        + "(None, None, None, None)",
        "Age: None; Gender: None; Scanner: None None; Modality: T2w; Voxel size: (1.0, 1.2, 1.5); "
        + tail
        + "(3200.0, 563.0, None, T2var)",
    ]
    for prompt in expected:
        assert prompt in text, prompt
    tsv = (list_runs(tmp_path / "out")[0] / "prompts.tsv").read_text()
    assert all(p in tsv for p in expected)


@pytest.mark.parametrize(
    "case,code",
    [
        ("usage", 64),
        ("missing-bids", 66),
        ("not-bids", 16),
        ("unknown-participant", 66),
        ("output-inside-input", 64),
        ("work-inside-input", 64),
        ("output-in-derivatives-ok", 0),
        ("output-not-creatable", 73),
        ("output-is-another-dataset", 73),
        ("unknown-target", 64),
        ("nothing-selected", 66),
        ("zero-batch-size", 64),
        ("reference-and-fast", 64),
        ("bf16-on-cpu", 64),
    ],
)
def test_exit_codes(tmp_path, case, code, capsys):
    bids = make_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    extra = ["--skip-bids-validation", "--dry-run", "-w", str(tmp_path / "w")]
    args = [str(bids), str(out), "participant"]
    if case == "usage":
        args = [str(bids), str(out), "everyone"]
    elif case == "missing-bids":
        args[0] = str(tmp_path / "nope")
    elif case == "not-bids":
        (bids / "dataset_description.json").unlink()
    elif case == "unknown-participant":
        extra += ["--participant-label", "sub-99"]
    elif case == "output-inside-input":
        args[1] = str(bids / "out")
    elif case == "work-inside-input":
        extra += ["-w", str(bids / "work")]
    elif case == "output-in-derivatives-ok":
        args[1] = str(bids / "derivatives" / "tumsyn")
    elif case == "output-not-creatable":
        (tmp_path / "file").write_text("x")
        args[1] = str(tmp_path / "file" / "out")
    elif case == "output-is-another-dataset":
        out.mkdir()
        (out / "dataset_description.json").write_text(
            json.dumps({"Name": "other", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
        )
    elif case == "unknown-target":
        extra += ["--target", "CT"]
    elif case == "nothing-selected":
        extra += ["--source", "FLAIR"]
    elif case == "zero-batch-size":
        extra += ["--batch-size", "0"]
    elif case == "reference-and-fast":
        extra += ["--reference", "--speed", "fast"]
    elif case == "bf16-on-cpu":
        extra += ["--device", "cpu", "--precision", "bf16"]
    assert _exit_code(args + extra) == code
    assert "Traceback" not in capsys.readouterr().err


def _exit_code(argv: list[str]) -> int:
    """``main``'s return value, or the code argparse exits with on a usage error."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.slow
def test_bad_image_fails_alone(tmp_path):
    """A broken image gives a clear error and exit code 65; the other participant finishes."""
    bids = make_dataset(tmp_path / "bids")
    (bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz").write_bytes(b"")
    res = run_app(bids, tmp_path / "out", tmp_path / "w", "--target", "T2w", "--nprocs", 1)
    assert res.returncode == 65, res.stderr[-2000:]
    assert "sub-02_ses-1_T1w.nii.gz: empty file" in res.stderr
    assert (tmp_path / "out" / OUTPUTS[1]).is_file()


@pytest.mark.slow
def test_example_dataset_validated_in_and_out(tmp_path):
    """The bundled example dataset through the real validator, the app, and the validator again."""
    from tumsyn_bids.bids.validation import validate_bids
    from tumsyn_bids.data.example import write_example_dataset

    bids = write_example_dataset(tmp_path / "example")
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(tmp_path / "out"),
           "participant", "-w", str(tmp_path / "w"), "--target", "FLAIR", "--participant-label",
           "01", "--nprocs", "1", *model_args()]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "sub-01/anat/sub-01_desc-tumsynFromT1w_FLAIR.nii.gz").is_file()
    result = validate_bids(tmp_path / "out")
    assert result.ok, result.errors


def test_invalid_dataset_exit_code_16(tmp_path, capsys):
    bids = make_dataset(tmp_path / "bids")
    shutil.copy(SMALL / "input_T1w.nii.gz", bids / "sub-01" / "anat" / "sub-01_T1.nii.gz")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--dry-run",
                 "-w", str(tmp_path / "w")])  # fmt: skip
    assert code == 16
    err = capsys.readouterr().err
    assert "sub-01_T1.nii.gz" in err and "--skip-bids-validation" in err


@pytest.mark.slow
def test_crashing_job_leaves_crash_file_and_others_finish(tmp_path):
    """A job that crashes in the workflow (its output folder cannot be created: a file stands
    where sub-02's anat folder goes) is a crash, not a data problem: exit 1, one line naming
    the node and the crash file that holds the traceback, no traceback on the terminal, and the
    other participant finishes."""
    bids = make_dataset(tmp_path / "bids")
    blocked = tmp_path / "out" / "sub-02" / "ses-1" / "anat"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    res = run_app(bids, tmp_path / "out", tmp_path / "w", "--target", "T2w", "--nprocs", 2)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    last = res.stderr.strip().splitlines()[-1].strip()
    assert last.startswith(f"{OUTPUTS[3]}: synthesis crashed in node ds_synthesized (")
    crash = last.rsplit("traceback in ", 1)[1]
    assert (
        crash.startswith("sub-02/log/crash-")
        and "Traceback" in (tmp_path / "out" / crash).read_text()
    )
    assert (tmp_path / "out" / OUTPUTS[1]).is_file()
    plan = read_run_plans(tmp_path / "out")
    assert set(plan["status"]) == {"failed", "done"}
    assert last in set(plan["message"])


@pytest.mark.slow
def test_plugin_yaml_and_graph(tmp_path):
    """``--use-plugin`` picks nipype's plugin; ``--write-graph`` works with or without graphviz."""
    bids = make_dataset(tmp_path / "bids")
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    res = run_app(bids, tmp_path / "out", tmp_path / "w", "--target", "T2w",
                  "--participant-label", "01", "--use-plugin", plugin, "--write-graph")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    (config,) = read_run_configs(tmp_path / "out").values()
    assert config["execution"]["plugin"] == "Linear"
    assert config["inference"]["patch_size"] == [20, 20, 20]
    assert (tmp_path / "w" / "tumsyn_wf" / "graph.dot").is_file()
    assert (tmp_path / "out" / OUTPUTS[1]).is_file()
    plugin.write_text("- not a mapping\n")
    bad = run_app(bids, tmp_path / "out", tmp_path / "w", "--target", "T2w", "--overwrite",
                  "--use-plugin", plugin)  # fmt: skip
    assert bad.returncode == 64 and "not a mapping" in bad.stderr


@pytest.mark.slow
def test_output_resolution_grid(tmp_path):
    """``--output-resolution``: the requested voxel size over the source's field of view."""
    from tumsyn_bids.model.grid import output_grid

    bids = make_dataset(tmp_path / "bids")
    res = run_app(bids, tmp_path / "out", tmp_path / "w", "--target", "T2w",
                  "--participant-label", "01", "--output-resolution", 0.5, 0.6, 0.75,
                  "--nprocs", 1)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = nib.load(tmp_path / "out" / OUTPUTS[1])
    src = nib.load(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    assert out.shape == (42, 46, 54)
    expected = output_grid(src.shape, src.affine, scale=2).affine_array
    np.testing.assert_allclose(out.affine, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.header.get_zooms(), (0.5, 0.6, 0.75), rtol=0, atol=1e-6)
    side = json.loads((tmp_path / "out" / OUTPUTS[1].replace(".nii.gz", ".json")).read_text())
    assert "Voxel size: (0.5, 0.6, 0.75)" in side["TargetPrompt"]


def test_too_long_prompt_is_reported_for_that_image(tmp_path, capsys):
    bids = make_dataset(tmp_path / "bids")
    side = bids / "sub-01" / "anat" / "sub-01_T1w.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "Manufacturer": "A " * 40}))
    code = main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--dry-run", "--target", "T2w", "-w", str(tmp_path / "w")])  # fmt: skip
    assert code == 65  # a dry run exits as the real run would
    text = capsys.readouterr().out
    assert "ERROR sub-01/anat/sub-01_T1w.nii.gz" in text and "tokens" in text
    assert "sub-02_ses-1_desc-tumsynFromT1w_T2w.nii.gz" in text


def test_preprocessing_options_reach_the_run_configuration(tmp_path, capsys):
    bids = make_dataset(tmp_path / "bids")
    base = [str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
            "--dry-run", "--target", "T2w", "-w", str(tmp_path / "w")]  # fmt: skip
    assert main([*base, "--skull-strip-source", "skip", "--no-inu", "--no-mask-output",
                 "--save-preproc"]) == 0  # fmt: skip
    (config,) = read_run_configs(tmp_path / "out").values()
    assert config["preproc"] == {
        "preproc": "full",
        "skull_strip_source": "skip",
        "inu": False,
        "mask_output": False,
        "save_preproc": True,
    }
    assert main(base) == 0
    configs = read_run_configs(tmp_path / "out")
    assert sorted(c["preproc"]["inu"] for c in configs.values()) == [False, True]
    # options of preprocessing mean nothing without it: a usage error naming them
    code = _exit_code([*base, "--preproc", "none", "--no-inu", "--save-preproc"])
    err = capsys.readouterr().err
    assert code == 64
    assert "--no-inu, --save-preproc: only used with --preproc full" in err
    assert _exit_code([*base, "--preproc", "some"]) == 64


def test_a_flair_source_takes_the_sessions_t1w_as_reference(tmp_path):
    """Plan column anat_reference: with preprocessing, a non-T1w source names the T1w whose
    brain mask it takes; without, nothing."""
    bids = make_dataset(tmp_path / "bids")
    anat = bids / "sub-01" / "anat"
    shutil.copy(anat / "sub-01_T1w.nii.gz", anat / "sub-01_FLAIR.nii.gz")
    argv = [str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
            "--dry-run", "--source", "FLAIR", "--target", "T2w", "-w", str(tmp_path / "w"),
            "--participant-label", "01"]  # fmt: skip
    assert main(argv) == 0
    plan = read_run_plans(tmp_path / "out")
    assert list(plan["source"]) == ["sub-01/anat/sub-01_FLAIR.nii.gz"]
    assert list(plan["anat_reference"]) == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert main([*argv, "--preproc", "none"]) == 0
    plans = read_run_plans(tmp_path / "out")
    assert sorted(plans["anat_reference"]) == ["n/a", "sub-01/anat/sub-01_T1w.nii.gz"]


def test_an_unknown_target_is_refused_before_any_folder_is_made(tmp_path, capsys):
    """A target name the model has no protocol for is a usage error (64) found with the other
    option values: before validation, and before the output and work folders are created."""
    bids = make_dataset(tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "w"
    argv = [str(bids), str(out), "participant", "--target", "T3w", "-w", str(work)]
    assert _exit_code(argv) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tumsyn: error: unknown target 'T3w'; choose from ")
    assert not out.exists() and not work.exists()
