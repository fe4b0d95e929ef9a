"""Reports end to end: a participant run writes them, --reports-only rebuilds them without the
model, the group level summarises, and a real headless browser renders the figures.

One participant run (example dataset, small reference checkpoints, T2w only) is shared by every
test here. Its sub-02 ses-2 image is blanked so that the check node refuses it (a data error with
its message, and nipype's crash file to link), and participants.tsv lists a sub-03 without images
(a participant without outputs).
"""

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.cli.test_run import run_app
from tests.datasets import tree_digest
from tumsyn_bids.cli.run import main
from tumsyn_bids.data.example import write_example_dataset

FIGURES = {
    "01": ["sub-01/figures/sub-01_desc-tumsynFromT1w_T2w_compare.png"],
    "02": ["sub-02/figures/sub-02_ses-1_desc-tumsynFromT1w_T2w_compare.png"],
}
FAILED = "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_desc-tumsynFromT1w_T2w.nii.gz"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reports")
    bids = write_example_dataset(base / "bids")
    blank = bids / "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T1w.nii.gz"
    img = nib.load(blank)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), blank)
    with open(bids / "participants.tsv", "a") as handle:
        handle.write("sub-03\t40\tM\n")
    res = run_app(bids, base / "out", base / "work", "--target", "T2w", "--nprocs", 2)
    return bids, base / "out", res


def _links(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"#]+)', page)


@pytest.mark.slow
def test_participant_run_writes_subject_reports(run):
    bids, out, res = run
    assert res.returncode == 65, res.stderr[-2000:]  # the blanked image cannot be used
    for subject, figures in FIGURES.items():
        page = (out / f"sub-{subject}.html").read_text()
        for figure in figures:
            assert (out / figure).stat().st_size > 10_000
            assert f'src="{figure}"' in page
        # self-contained: no network resources, every relative link resolves
        assert "<script" not in page and "<link" not in page
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page)
        for link in _links(page):
            assert (out / link).exists(), link
    page = (out / "sub-01.html").read_text()
    side = (out / "sub-01/anat/sub-01_desc-tumsynFromT1w_T2w.json").read_text()
    assert "Age: 34; Gender: F" in page and "Modality: T2w" in page
    assert re.search(r"sha256 <code>[0-9a-f]{64}</code>", page)
    assert "PatchSize = [20, 20, 20]" in page and "EchoTime = 0.563" in page
    assert re.search(r"Run time</th><td>\d+\.\d s", page)
    assert '"SHA256"' in side
    jobs = pd.read_csv(out / "sub-02/log/jobs.tsv", sep="\t", keep_default_na=False)
    assert set(jobs["status"]) == {"done", "error"}
    message = jobs.loc[jobs["status"] == "error", "message"].iloc[0]
    assert message.startswith("sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T1w.nii.gz: every voxel")
    page = (out / "sub-02.html").read_text()
    assert "Session 1" in page and "Session 2" in page
    assert f"<b>error</b>: <code>{FAILED}</code> {html.escape(message)}" in page
    assert res.stderr.strip().splitlines()[-1].strip() == message  # the run's last line
    crashes = [link for link in _links(page) if link.startswith("sub-02/log/crash-")]
    assert crashes and "every voxel is zero" in (out / crashes[0]).read_text()


@pytest.mark.slow
def test_reports_only_rebuilds_without_the_model(run, monkeypatch):
    bids, out, _ = run
    shutil.rmtree(out / "sub-01" / "figures")
    (out / "sub-01.html").unlink()
    before = tree_digest(out / "logs")

    def no_model(*args, **kwargs):
        raise AssertionError("--reports-only must not touch the model")

    monkeypatch.setattr("tumsyn_bids.cli.resolve._weights", no_model)
    monkeypatch.setattr("tumsyn_bids.cli.run.run_plan", no_model)
    code = main([str(bids), str(out), "participant", "--reports-only", "--skip-bids-validation",
                 "--participant-label", "01", "--target", "T2w",
                 "--checkpoint", "/nonexistent.pth", "-w", str(out.parent / "work")])  # fmt: skip
    assert code == 0
    assert (out / FIGURES["01"][0]).is_file()
    assert "Modality: T2w" in (out / "sub-01.html").read_text()
    assert tree_digest(out / "logs") == before  # no run record is added or changed


@pytest.mark.slow
def test_group_level(run, caplog):
    bids, out, _ = run
    code = main([str(bids), str(out), "group"])
    assert code == 0
    table = pd.read_csv(out / "group_synthesis.tsv", sep="\t")
    assert len(table) == 3
    columns = ["subject", "session", "source", "target_suffix", "status", "seconds"]
    columns += ["source_prompt", "target_prompt", "mean", "median", "p99", "outlier"]
    assert set(columns) <= set(table.columns)
    done = table[table["status"] == "done"]
    assert len(done) == 2 and done["mean"].notna().all() and (done["mask_voxels"] > 0).all()
    assert done["seconds"].notna().all()
    assert table.loc[table["status"] == "error", "output"].tolist() == [FAILED]
    assert table["outlier"].isna().all()  # "n/a": two finished T2w images are too few
    page = (out / "group.html").read_text()
    assert "sub-03" in page and "without outputs" in page
    assert 'href="sub-01.html' in page and 'href="sub-02.html' in page
    for link in _links(page):
        assert (out / link).exists(), link
    assert any(f in page for f in FIGURES["01"])
    # reports, figures, crash files and jobs.tsv are .bidsignore'd: still a valid derivative
    from tumsyn_bids.bids.validation import validate_bids

    result = validate_bids(out)
    assert result.ok, result.errors


@pytest.mark.slow
def test_group_level_without_outputs_exits_66(run, tmp_path):
    bids, _, _ = run
    assert main([str(bids), str(tmp_path / "empty"), "group"]) == 66


def _figure_area(png: Path) -> tuple[float, int]:
    """(pixel std inside the largest dark block, its height in rows) of a screenshot.

    Figures have a black background with grey slices on it; a white page, or a page with a
    broken-image icon, has no large dark block.
    """
    from matplotlib.image import imread

    grey = imread(png)[..., :3].mean(axis=2)
    dark_rows = np.flatnonzero((grey < 0.08).sum(axis=1) > 200)
    if dark_rows.size == 0:
        return 0.0, 0
    block = grey[dark_rows.min() : dark_rows.max() + 1]
    cols = np.flatnonzero((block < 0.08).sum(axis=0) > 0.5 * len(block))
    block = block[:, cols.min() : cols.max() + 1] if cols.size else block
    return float(block.std()), int(dark_rows.size)


def _screenshot(page: Path, png: Path, profile: Path) -> None:
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,2000",
           page.resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install chromium): browser test skipped",
)
def test_report_renders_in_a_browser(run, tmp_path):
    _, out, _ = run
    png = tmp_path / "report.png"
    _screenshot(out / "sub-01.html", png, tmp_path / "profile1")
    if os.environ.get("TUMSYN_REPORT_SCREENSHOT"):
        shutil.copy(png, os.environ["TUMSYN_REPORT_SCREENSHOT"])
    spread, rows = _figure_area(png)
    assert rows > 300 and spread > 0.05, (spread, rows)
    # the same page with its figure missing must fail the check (a broken reference)
    broken = tmp_path / "broken"
    shutil.copy(out / "sub-01.html", broken.with_suffix(".html"))
    _screenshot(broken.with_suffix(".html"), tmp_path / "broken.png", tmp_path / "profile2")
    spread, rows = _figure_area(tmp_path / "broken.png")
    assert rows < 300 or spread < 0.05, (spread, rows)
