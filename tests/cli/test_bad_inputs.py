"""The reliability catalogue (issue 18 item 11): bad inputs, each with its exit code and message.

Every case starts from tests/datasets.py's two-participant dataset (real NIfTI files, sub-02's
image replaced by a head phantom: an ellipsoid "head" in a zero background), breaks one thing,
and runs ``tumsyn`` the way a user would. For each case the test checks:

* the exit code and the one line that names the file, the problem and the fix (for problems of
  one image: the run's last line, and the same text in the run's ``prompts.tsv``);
* the input dataset is byte-identical afterwards;
* no partial file is left in the output (no temporary file, no image without its sidecar, no
  empty file);
* the other participant still finishes (its jobs are planned with their prompts in a dry run;
  its outputs exist in a real run). Cases refused before any job (options, output folder,
  weights) write no output at all instead.

Dry runs cover what needs no model: they apply the same header and voxel checks as the real run
(item 9). The few real runs (marked slow) use the small reference checkpoints. The table in
docs/reliability.md lists the same cases.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.cli.test_run import model_args
from tests.conftest import SMALL
from tests.datasets import make_dataset, tree_digest
from tumsyn_bids.cli.run import main
from tumsyn_bids.runlog import list_runs, read_run_plans

SUB01 = "sub-01/anat/sub-01_T1w.nii.gz"
SUB02 = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"
SUB01_T2W = "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.nii.gz"
SUB02_T2W = "sub-02/ses-1/anat/sub-02_ses-1_desc-tumsynFromT1w_T2w.nii.gz"
P = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree):  "


# ------------------------------------------------------------------------------ building


def phantom(shape=(21, 23, 27)) -> tuple[np.ndarray, np.ndarray]:
    """A head phantom (ellipsoid of varying intensity in a zero background) and the squared
    normalised radius of every voxel (< 1 inside the head)."""
    index = np.indices(shape).astype(float)
    radius = sum(((index[a] - (n - 1) / 2) / (n * 0.4)) ** 2 for a, n in enumerate(shape))
    data = np.where(radius < 1, 800 + 100 * np.sin(index[0]), 0).astype(np.float32)
    return data, radius


def dataset(root: Path) -> Path:
    """tests/datasets.py's dataset, sub-02's image replaced by the phantom."""
    make_dataset(root)
    image = root / SUB02
    nib.save(nib.Nifti1Image(phantom()[0], nib.load(image).affine), image)
    return root


def save(root: Path, relpath: str, data: np.ndarray, affine=None) -> Path:
    path = root / relpath
    affine = nib.load(path).affine if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


def sidecar(root: Path, values: dict, relpath: str = "sub-01/anat/sub-01_T1w.json") -> None:
    (root / relpath).write_text(json.dumps(values))


def _four_d(root, tmp):
    data = phantom()[0]
    save(root, SUB02, np.stack([data, data, data], axis=-1))


def _truncated_gz(root, tmp):
    path = root / SUB02
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_gzip(root, tmp):
    path = root / SUB02
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain NIfTI bytes in a .nii.gz


def _truncated_nii(root, tmp):
    path = root / SUB02
    plain = path.with_name(path.name[: -len(".gz")])
    plain.write_bytes(gzip.decompress(path.read_bytes())[:2000])
    path.unlink()


def _nonfinite(where: str, value: float):
    def build(root, tmp):
        data, radius = phantom()
        if where == "inside":
            data[radius < 0.05] = value
        elif where == "background":
            data[radius >= 1.2] = value
        else:  # all but a few voxels
            data[radius >= 0.02] = value
        save(root, SUB02, data)

    return build


def _constant(value: float):
    def build(root, tmp):
        save(root, SUB02, np.full(phantom()[0].shape, value))

    return build


def _two_slices(root, tmp):
    save(root, SUB02, phantom()[0][:, :, :2])


def _huge_header(root, tmp):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((4000, 4000, 4000))  # 256 GB of float32; the file holds 4 kB
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    raw = header.binaryblock + b"\0" * 4 + np.zeros(1000, np.float32).tobytes()
    (root / SUB02).write_bytes(gzip.compress(raw))


def _affine(kind: str):
    def build(root, tmp):
        affine = np.eye(4)
        if kind == "oblique":  # rotated 20 degrees about two axes
            a, b = np.deg2rad(20), np.deg2rad(12)
            rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
            ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
            affine[:3, :3] = rx @ ry @ np.diag([1.0, 1.2, 1.5])
        elif kind == "left-handed":  # LAS: the i axis runs right to left (det < 0)
            affine[:3, :3] = np.diag([-1.0, 1.2, 1.5])
        elif kind == "singular":  # j and k axes parallel
            affine[:3, :3] = [[1.0, 0, 0], [0, 1.2, 1.2], [0, 0, 0]]
        affine[:3, 3] = (10.0, -20.0, 5.0)
        image = nib.Nifti1Image(phantom()[0], None)
        image.header.set_sform(affine, code=1)
        image.header.set_qform(None, code=0)
        if kind == "zero":
            image.header.set_sform(np.zeros((4, 4)), code=1)
        nib.save(image, root / SUB02)

    return build


def _empty_file(root, tmp):
    (root / SUB02).write_bytes(b"")


def _broken_link(root, tmp):
    path = root / SUB02
    path.unlink()
    os.symlink("../../../.git/annex/objects/Xk/SHA256E-s1--0.nii.gz", path)


def _no_sidecar(root, tmp):
    (root / "sub-01/anat/sub-01_T1w.json").unlink()


def _not_json(root, tmp):
    (root / "sub-01/anat/sub-01_T1w.json").write_text('{"RepetitionTime": 2.5, "EchoTime":')


def _age(value: str):
    def build(root, tmp):
        (root / "participants.tsv").write_text(f"participant_id\tage\tsex\nsub-01\t{value}\tF\n")

    return build


def _ages_in_months(root, tmp):
    (root / "sub-02/sub-02_sessions.tsv").write_text("session_id\tage\nses-1\t10\n")
    (root / "sessions.json").write_text(json.dumps({"age": {"Units": "months"}}))


def _mp2rage(root, tmp):
    sidecar(
        root,
        {"RepetitionTimePreparation": 5.0, "EchoTime": 0.0029, "InversionTime": 0.7,
         "FlipAngle": 4, "MagneticFieldStrength": 7, "Manufacturer": "Siemens"},
    )  # fmt: skip


def _option(*extra: str):
    def build(root, tmp):
        return list(extra)

    return build


def _output_is_a_file(root, tmp):
    (tmp / "out").write_text("a file where the output folder should be")


def _output_of_another_dataset(root, tmp):
    from tumsyn_bids.bids.dataset import write_dataset_description

    other = dataset(tmp / "other-bids")  # a tumsyn-bids output folder made from it
    (tmp / "out").mkdir()
    write_dataset_description(tmp / "out", other, "0")


def _output_of_another_program(root, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "dataset_description.json").write_text(
        json.dumps({"Name": "raw data", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )


def _small_weights(tmp: Path) -> tuple[Path, Path]:
    ckpt, text = tmp / "synthesis.pth", tmp / "text_encoder.pt"
    shutil.copy(SMALL / "synthesis.pth", ckpt)
    shutil.copy(SMALL / "text_encoder.pt", text)
    return ckpt, text


def _weights(kind: str):
    def build(root, tmp):
        import torch

        ckpt, text = _small_weights(tmp)
        heads = ["--text-heads", "2"]
        if kind == "pickle-runs-code":
            marker = tmp / "code-ran"

            class Payload:
                def __reduce__(self):
                    return (os.system, (f"touch {marker}",))

            torch.save({"model_G": Payload()}, ckpt)
        elif kind == "wrong-stage":
            ckpt = text  # the text encoder given as the synthesis checkpoint
        elif kind == "truncated":
            ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
        elif kind == "heads-option":
            heads = ["--text-heads", "3"]
        elif kind == "heads-recorded":
            state = torch.load(text, map_location="cpu", weights_only=True)
            state["tumsyn_bids"] = {"transformer_heads": 5}
            torch.save(state, text)
            heads = []
        return ["--checkpoint", str(ckpt), "--text-encoder", str(text), *heads,
                "--patch-size", "20", "--preproc", "none"]  # fmt: skip

    return build


def _long_manufacturer(root, tmp):
    sidecar(root, {"RepetitionTime": 2.5, "EchoTime": 0.003, "Manufacturer": "Vendor " * 12})


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, what ``tumsyn`` must say, and how it runs.

    ``scope`` is ``image`` (one image is refused; the other participant finishes and the run
    lists the refusal last), ``ok`` (the input works: exit 0) or ``run`` (the whole run is
    refused before anything is written). ``dry`` runs ``--dry-run``; otherwise the real run.
    """

    name: str
    build: Callable
    code: int
    message: str
    scope: str = "image"
    dry: bool = True
    bad: str = SUB02


CASES = [
    # voxel data and headers
    Case("truncated .nii.gz", _truncated_gz, 65,
         f"{SUB02}: the image data cannot be read (Compressed file ended before the "
         "end-of-stream marker was reached); the file is probably truncated or corrupt"),
    Case("non-gzip .nii.gz", _not_gzip, 65, f"{SUB02}: not a readable NIfTI image ("
         "File "),
    Case("truncated .nii", _truncated_nii, 65,
         f"{SUB02[:-3]}: file is truncated: 2000 bytes, but the header's shape and data type "
         "need 52516 (an interrupted copy or download? copy the image again)",
         bad=SUB02[:-3]),
    Case("4-D with 3 volumes", _four_d, 65,
         f"{SUB02}: 4D image of shape (21, 23, 27, 3); a single 3D volume is needed"),
    Case("all-zero image", _constant(0.0), 65,
         f"{SUB02}: every voxel is zero (an empty image); it cannot be synthesized from"),
    Case("constant image", _constant(100.0), 65,
         f"{SUB02}: every voxel has the value 100 (no contrast)"),
    Case("NaN inside the brain", _nonfinite("inside", np.nan), 65,
         f"{SUB02}: 39 NaN or infinite voxel(s) inside the head (first at voxel (9, 10, 12)); "
         "only background voxels may be undefined (fill or mask them before synthesis)"),
    Case("Inf inside the brain", _nonfinite("inside", np.inf), 65,
         f"{SUB02}: 39 NaN or infinite voxel(s) inside the head"),
    Case("mostly NaN", _nonfinite("mostly", np.nan), 65,
         f"{SUB02}: 13034 of 13041 voxels (99.9%) are NaN or infinite; the image is mostly "
         "undefined (check how it was converted or resampled)"),
    Case("NaN background", _nonfinite("background", np.nan), 0,
         f"{SUB02}: 8456 NaN or infinite background voxel(s) (outside the head) are treated "
         "as 0", scope="ok"),
    Case("-Inf background", _nonfinite("background", -np.inf), 0,
         f"{SUB02}: 8456 NaN or infinite background voxel(s)", scope="ok"),
    Case("2-slice image, smaller than the patch", _two_slices, 65,
         f"{SUB02}: only 2 voxel(s) along k (shape (21, 23, 2)); TUMSyn needs a 3-D volume of "
         "at least 4 voxels along each axis"),
    Case("huge header dimension", _huge_header, 65,
         f"{SUB02}: synthesizing it needs about 1668.9 GiB of memory (grid (4000, 4000, "
         "4000) -> (4000, 4000, 4000)), more than the"),
    Case("oblique affine", _affine("oblique"), 0, "", scope="ok"),
    Case("left-handed affine", _affine("left-handed"), 0, "", scope="ok"),
    Case("zero affine", _affine("zero"), 65,
         f"{SUB02}: unusable header geometry: the affine has a zero or non-finite voxel axis"),
    Case("singular affine", _affine("singular"), 65,
         f"{SUB02}: unusable header geometry: the affine is singular"),
    Case("empty (0-byte) image", _empty_file, 65,
         f"{SUB02}: empty file (0 bytes) — not a readable NIfTI image"),
    Case("dangling DataLad link", _broken_link, 65,
         f"{SUB02}: broken symbolic link — the image content is not present (in a DataLad "
         "dataset, run `datalad get` on it)"),
    # sidecars and tables
    Case("missing sidecar", _no_sidecar, 0, "", scope="ok", bad=SUB01),
    Case("sidecar that is not JSON", _not_json, 65,
         f"{SUB01}: its sidecar sub-01/anat/sub-01_T1w.json is not valid JSON (Expecting value: "
         "line 1 column 36 (char 35)); fix or remove it", bad=SUB01),
    Case("non-numeric timing string",
         lambda r, t: sidecar(r, {"RepetitionTime": "2.5s", "EchoTime": 0.003, "FlipAngle": 8}),
         65, f"{SUB01}: unusable sidecar value: RepetitionTime must be a number, got '2.5s'",
         bad=SUB01),
    Case("TE > TR", lambda r, t: sidecar(r, {"RepetitionTime": 0.5, "EchoTime": 0.8}), 65,
         f"{SUB01}: unusable sidecar value: EchoTime 0.8 s is longer than RepetitionTime 0.5 s; "
         "BIDS wants seconds: check the sidecar's units", bad=SUB01),
    Case("TE in ms (field case 1)",
         lambda r, t: sidecar(r, {"RepetitionTime": 2.3, "EchoTime": 2.98}), 65,
         f"{SUB01}: unusable sidecar value: EchoTime 2.98 s is longer than RepetitionTime 2.3 s; "
         "BIDS wants seconds: was 2.98 ms meant (0.00298)?", bad=SUB01),
    Case("TR in ms", lambda r, t: sidecar(r, {"RepetitionTime": 2300, "EchoTime": 0.003}), 65,
         f"{SUB01}: unusable sidecar value: RepetitionTime 2300 s is longer than any plausible "
         "RepetitionTime", bad=SUB01),
    Case("negative flip angle",
         lambda r, t: sidecar(r, {"RepetitionTime": 2.5, "EchoTime": 0.003, "FlipAngle": -8}),
         65, f"{SUB01}: cannot build the prompt: FlipAngle must not be negative, got -8.0 degrees",
         bad=SUB01),
    Case("age n/a", _age("n/a"), 0, "Age: None; Gender: F", scope="ok", bad=SUB01),
    Case("age empty", _age(""), 0, "Age: None; Gender: F", scope="ok", bad=SUB01),
    Case("ages in months, units inherited (field case 2)", _ages_in_months, 0,
         "Age: 0.8; Gender: None", scope="ok"),
    Case("MP2RAGE without RepetitionTime (field case 4)", _mp2rage, 0,
         f"Modality: T1w; Voxel size: (1.0, 1.2, 1.5); {P}(5000.0, 2.9, 700.0, 4.0)",
         scope="ok", bad=SUB01),
    Case("prompt too long", _long_manufacturer, 65,
         f"{SUB01}: the target prompt needs 91 tokens, more than the text encoder's 90: "
         "'Age: 34; Gender: F; Scanner: None Vendor Vendor", bad=SUB01),
    # selection and the output folder
    Case("participant label with ../", _option("--participant-label", "../sub-01"), 64,
         "--participant-label '../sub-01' is not a BIDS label", scope="run"),
    Case("session label that does not exist", _option("--session-label", "9"), 66,
         "session label(s) not found", scope="run"),
    Case("output dir that is a file", _output_is_a_file, 73, "is a file, not a folder",
         scope="run"),
    Case("existing output from another dataset", _output_of_another_dataset, 73,
         "holds outputs of the input dataset file://", scope="run"),
    Case("existing output of another program", _output_of_another_program, 73,
         "exists and was not written by tumsyn-bids; choose an empty or a tumsyn-bids output "
         "folder", scope="run"),
    # weights (checked once before the workflow is built: a real run, refused at once)
    Case("pickle checkpoint that tries to run code", _weights("pickle-runs-code"), 65,
         "synthesis.pth: it holds objects that would run code when loaded; refused (Trying to "
         "load unsupported GLOBAL posix.system", scope="run", dry=False),
    Case("checkpoint of the wrong stage", _weights("wrong-stage"), 65,
         "not a TUMSyn synthesis checkpoint (no model_G.sd_G) (this looks like a text-encoder "
         "checkpoint); it is the text encoder: give checkpoint.pth as --checkpoint",
         scope="run", dry=False),
    Case("truncated checkpoint", _weights("truncated"), 65,
         "synthesis.pth: an incomplete zip archive (a truncated copy or download?); the file is "
         "truncated, corrupt, or not a torch checkpoint of weights only; download it again",
         scope="run", dry=False),
    Case("--text-heads that does not divide the width", _weights("heads-option"), 64,
         "the text encoder's width 32 is not divisible by 3 attention heads (given with "
         "--text-heads); pass --text-heads N", scope="run", dry=False),
    Case("recorded head count that does not divide the width", _weights("heads-recorded"), 65,
         "the text encoder's width 32 is not divisible by 5 attention heads (recorded in the "
         "file); pass --text-heads N with the head count it was trained with, a divisor of 32 "
         "(1, 2, 4, 8, 16, 32)", scope="run", dry=False),
]  # fmt: skip


# ------------------------------------------------------------------------------ checks


def partial_files(out: Path) -> list[str]:
    """What an interrupted or failed write would leave: temporary files (hidden names with
    ``.tmp``), derivative images without their sidecar (or the reverse), empty files."""
    found = []
    if not out.is_dir():
        return found
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or ".locks" in path.parts:
            continue
        if re.search(r"(^|/)\.[^/]*\.tmp", rel):
            found.append(f"temporary file {rel}")
        elif path.stat().st_size == 0:
            found.append(f"empty file {rel}")
        elif "_desc-tumsynFrom" in path.name and re.search(r"\.(nii\.gz|nii|json)$", path.name):
            stem = re.sub(r"\.(nii\.gz|nii|json)$", "", path.name)
            partner = ".json" if not path.name.endswith(".json") else ".nii.gz"
            if not path.with_name(stem + partner).is_file():
                found.append(f"{rel} without its {partner}")
    return found


def _argv(bids: Path, tmp: Path, extra: list[str], dry: bool) -> list[str]:
    argv = [str(bids), str(tmp / "out"), "participant", "--skip-bids-validation",
            "--target", "T2w", "-w", str(tmp / "w")]  # fmt: skip
    if dry:
        argv.append("--dry-run")
    if not any(a == "--checkpoint" for a in extra) and not dry:
        argv += model_args()
    return argv + extra


def _code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys):
    bids = dataset(tmp_path / "bids")
    extra = case.build(bids, tmp_path) or []
    before = tree_digest(bids)
    out_before = tree_digest(tmp_path / "out") if (tmp_path / "out").is_dir() else None

    code = _code(_argv(bids, tmp_path, extra, case.dry))
    captured = capsys.readouterr()
    err, text = captured.err, captured.out + captured.err

    assert code == case.code, text[-3000:]
    assert "Traceback" not in text
    assert tree_digest(bids) == before, "the input dataset was written to"
    assert partial_files(tmp_path / "out") == []
    if case.scope == "run":
        assert case.message in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("tumsyn: error: ")
        # refused before anything ran: no run record, no derivative, nothing else written
        if (tmp_path / "out").is_dir():
            assert not list_runs(tmp_path / "out")
            assert tree_digest(tmp_path / "out") == (out_before or {})
        assert not (tmp_path / "code-ran").exists()  # weights never run code
        return
    plan = read_run_plans(tmp_path / "out")
    rows = plan[plan["source"] == case.bad]
    others = plan[plan["source"] != case.bad]
    # the other participant still finishes: planned, with its prompts
    assert list(others["status"]) == ["planned"], others.to_string()
    assert others["target_prompt"].str.contains("Modality: T2w").all()
    if case.scope == "ok":
        assert list(rows["status"]) == ["planned"], rows.to_string()
        assert case.message in text
        return
    # one image refused: the run's last line, the same text in prompts.tsv
    assert set(rows["status"]) == {"error"}
    (message,) = set(rows["message"])
    assert message.startswith(case.message), message
    assert err.strip().splitlines()[-1].strip() == message
    assert "(exit 65)" in err.strip().splitlines()[-2]


def test_catalogue_is_at_least_thirty_inputs():
    assert len(CASES) + len(UNPRIVILEGED) + len(SYNTH_CASES) >= 30


def test_error_rows_carry_the_source_prompt(tmp_path, capsys):
    """Item 9: a refused image's row shows every sidecar value that can be written (the bad
    one as None), not n/a or a prompt of Nones."""
    bids = dataset(tmp_path / "bids")
    sidecar(bids, {"RepetitionTime": 2.3, "EchoTime": 2.98, "InversionTime": 0.9, "FlipAngle": 9,
                   "MagneticFieldStrength": 3, "Manufacturer": "GE"})  # fmt: skip
    assert _code(_argv(bids, tmp_path, [], dry=True)) == 65
    plan = read_run_plans(tmp_path / "out")
    row = plan[plan["source"] == SUB01].iloc[0]
    assert row["source_prompt"] == (
        "Age: 34; Gender: F; Scanner: 3.0 GE; Modality: T1w; Voxel size: (1.0, 1.2, 1.5); "
        f"{P}(2300.0, None, 900.0, 9.0)"
    )
    # a non-numeric value: the others are still shown
    sidecar(bids, {"RepetitionTime": "2.5 s", "EchoTime": 0.003, "FlipAngle": 8,
                   "MagneticFieldStrength": 1.5, "Manufacturer": "Philips"})  # fmt: skip
    assert _code(_argv(bids, tmp_path, ["--overwrite"], dry=True)) == 65
    plan = read_run_plans(tmp_path / "out")
    row = plan[plan["source"] == SUB01].iloc[-1]
    assert row["source_prompt"].endswith(f"Scanner: 1.5 Philips; Modality: T1w; Voxel size: "
                                         f"(1.0, 1.2, 1.5); {P}(None, 3.0, None, 8.0)")  # fmt: skip
    capsys.readouterr()


def test_dry_run_exits_as_the_real_run_would(tmp_path):
    """Item 9: a dry run can gate a batch job: 0 when everything can run, 65 otherwise."""
    bids = dataset(tmp_path / "bids")
    assert _code(_argv(bids, tmp_path, [], dry=True)) == 0
    _nonfinite("inside", np.nan)(bids, tmp_path)
    assert _code(_argv(bids, tmp_path, [], dry=True)) == 65


# ------------------------------------------------------------------------------ unprivileged


#: Capabilities that let root ignore file permissions; without them root is checked like any
#: other owner (mode 000: no read, mode 555: no write), see capabilities(7).
_DAC_CAPABILITIES = "-dac_override,-dac_read_search"


def _unprivileged(argv: list[str], home: Path) -> subprocess.CompletedProcess:
    """Run ``tumsyn`` without the privilege of ignoring file permissions. As root (CI here),
    util-linux's ``setpriv`` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the child's
    bounding set, so permission bits apply to it as to the files' owner; as any other user the
    child runs directly."""
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", *argv]
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home / "mpl")}
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without util-linux setpriv: cannot drop privileges")
        cmd = [setpriv, f"--bounding-set={_DAC_CAPABILITIES}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_dropped_capabilities_really_apply_permissions(tmp_path):
    """The mechanism the permission cases rely on: a mode-000 file cannot be read."""
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o000)
    home = tmp_path / "home"
    home.mkdir()
    res = _unprivileged(["--version"], home)  # the child itself starts fine
    assert res.returncode == 0, res.stderr
    probe = [sys.executable, "-c", f"open({str(secret)!r}).read()"]
    if os.geteuid() == 0:
        probe = [shutil.which("setpriv"), f"--bounding-set={_DAC_CAPABILITIES}", *probe]
    assert subprocess.run(probe, capture_output=True).returncode != 0


def _mode_000_image(bids: Path, tmp: Path) -> None:
    (bids / SUB02).chmod(0o000)


def _read_only_output(bids: Path, tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out").chmod(0o555)


UNPRIVILEGED = [
    Case("unreadable (mode 000) image", _mode_000_image, 65,
         f"{SUB02}: permission denied: this user cannot read the image (make it readable, e.g. "
         "chmod a+r)"),
    Case("read-only output dir", _read_only_output, 73, "cannot write to ", scope="run"),
]  # fmt: skip


@pytest.mark.parametrize("case", UNPRIVILEGED, ids=[c.name for c in UNPRIVILEGED])
def test_permission_cases_as_an_unprivileged_user(case: Case, tmp_path: Path):
    shared_tmp = tmp_path
    bids = dataset(shared_tmp / "bids")
    home = shared_tmp / "home"
    home.mkdir()
    case.build(bids, shared_tmp)
    before = tree_digest_as_root(bids)
    res = _unprivileged(_argv(bids, shared_tmp, [], dry=True), home)
    assert res.returncode == case.code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert tree_digest_as_root(bids) == before
    last = res.stderr.strip().splitlines()[-1].strip()
    if case.scope == "run":
        assert case.message in last
        return
    assert last.startswith(case.message), last
    plan = read_run_plans(shared_tmp / "out")
    assert list(plan.loc[plan["source"] == SUB01, "status"]) == ["planned"]
    assert partial_files(shared_tmp / "out") == []
    for path in (bids / SUB02, shared_tmp / "out"):  # let pytest clean up
        if path.exists():
            path.chmod(0o755 if path.is_dir() else 0o644)


def tree_digest_as_root(root: Path) -> dict[str, str]:
    """:func:`tree_digest`, reading a mode-000 file as well (we are its owner)."""
    modes = {p: p.stat().st_mode for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    for path in modes:
        path.chmod(0o644)
    try:
        return tree_digest(root)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


# ------------------------------------------------------------------------------ tumsyn-synth


def _synth(tmp: Path, prompt_args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.synth",
           str(SMALL / "input_T1w.nii.gz"), str(tmp / "out.nii.gz"), *prompt_args,
           "--checkpoint", str(SMALL / "synthesis.pth"), "--text-encoder",
           str(SMALL / "text_encoder.pt"), "--text-heads", "2", "--patch-size", "20"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


SYNTH_CASES = [
    ("empty prompt file", 64, "holds 0 non-empty lines; tumsyn-synth takes one prompt"),
    ("too-long prompt", 65, "shorten the prompt"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,code,message", SYNTH_CASES, ids=[c[0] for c in SYNTH_CASES])
def test_synth_prompt_cases(name, code, message, tmp_path):
    if name == "empty prompt file":
        (tmp_path / "prompt.txt").write_text("\n\n")
        args = ["--prompt-file", str(tmp_path / "prompt.txt")]
    else:
        long = "Age: 30; Gender: F; Scanner: 3.0 " + "Siemens " * 80 + "; Modality: T2w; ..."
        args = ["--prompt", long.replace("  ", " ")]
    res = _synth(tmp_path, args)
    assert res.returncode == code, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*out*"))  # no partial output


# ------------------------------------------------------------------------------ real runs


def _run(bids: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tumsyn_bids.cli.run", str(bids), str(tmp / "out"),
           "participant", "-w", str(tmp / "w"), "--skip-bids-validation", *model_args(),
           "--target", "T2w", "--nprocs", "1", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "build,message",
    [
        (_nonfinite("inside", np.nan), f"{SUB02}: 39 NaN or infinite voxel(s) inside the head"),
        (_truncated_gz, f"{SUB02}: the image data cannot be read (Compressed file ended"),
    ],
    ids=["NaN inside", "truncated .nii.gz"],
)
def test_data_error_in_the_check_node_is_one_line_and_exit_65(build, message, tmp_path):
    """Item 8, found by the workflow's CheckImage node (the header reads fine): exit 65, no
    traceback on the terminal, the run's last line is the job's message, the same text in
    prompts.tsv, jobs.tsv and the participant's report; the other participant finishes."""
    bids = dataset(tmp_path / "bids")
    build(bids, tmp_path)
    before = tree_digest(bids)
    res = _run(bids, tmp_path)
    out = tmp_path / "out"
    assert res.returncode == 65, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1].strip()
    assert last.startswith(message), last
    plan = read_run_plans(out)
    assert plan.loc[plan["source"] == SUB02, "message"].iloc[-1] == last
    assert plan.loc[plan["source"] == SUB02, "status"].iloc[-1] == "error"
    jobs = pd.read_csv(out / "sub-02/log/jobs.tsv", sep="\t", keep_default_na=False)
    assert list(jobs["message"]) == [last] and list(jobs["status"]) == ["error"]
    import html

    assert html.escape(last) in (out / "sub-02.html").read_text()
    assert (out / SUB01_T2W).is_file()
    assert tree_digest(bids) == before
    assert partial_files(out) == []


@pytest.mark.slow
def test_nan_background_oblique_and_left_handed_images_are_synthesized(tmp_path):
    """NaN background (sub-02), an oblique sub-01 and then a left-handed one: all exit 0, on
    the source's own grid, every output voxel finite; the NaN count is in the job's record."""
    bids = dataset(tmp_path / "bids")
    _nonfinite("background", np.nan)(bids, tmp_path)  # sub-02
    data = phantom()[0]
    a = np.deg2rad(20)
    oblique = np.eye(4)
    oblique[:3, :3] = np.array(
        [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
    ) @ np.diag([1.0, 1.2, 1.5])
    save(bids, SUB01, data, oblique)
    res = _run(bids, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    for rel, src in ((SUB01_T2W, SUB01), (SUB02_T2W, SUB02)):
        img, source = nib.load(out / rel), nib.load(bids / src)
        np.testing.assert_allclose(img.affine, source.affine, atol=1e-5)
        assert np.isfinite(np.asarray(img.dataobj)).all()
    jobs = pd.read_csv(out / "sub-02/log/jobs.tsv", sep="\t", keep_default_na=False)
    assert jobs["message"].iloc[0] == (
        f"{SUB02}: 8456 NaN or infinite background voxel(s) (outside the head) are treated as 0"
    )
    # left-handed (LAS) into the same output folder, the NaN-background image kept
    left = np.diag([-1.0, 1.2, 1.5, 1.0])
    save(bids, SUB01, data, left)
    res = _run(bids, tmp_path, "--overwrite", "--participant-label", "01")
    assert res.returncode == 0, res.stderr[-3000:]
    img = nib.load(out / SUB01_T2W)
    np.testing.assert_allclose(img.affine, left, atol=1e-6)
    assert np.linalg.det(img.affine[:3, :3]) < 0
    assert partial_files(out) == []
