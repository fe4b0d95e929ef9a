"""Template files through ``templateflow.api.get`` only, offline, with one clear error."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import run_python

TPL = "MNI152NLin2009aSym"
PACKAGE = Path(__file__).resolve().parents[2] / "tumsyn_bids"


def network_unshare_prefix() -> tuple[str, ...]:
    """``unshare -n`` (a new, empty network namespace) when this user may create one."""
    try:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed: cannot cut the network")
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here: {probe.stderr.decode().strip()}")
    return ("unshare", "-n")


@pytest.mark.slow
def test_init_and_get_with_the_network_unshared(tmp_path):
    prefix = network_unshare_prefix()
    home = tmp_path / "tf"
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('pypi.org', 443), timeout=5)\n"
        "    raise SystemExit('the network is reachable: the test proves nothing')\n"
        "except OSError:\n"
        "    pass\n"
        "from tumsyn_bids.cli.templates import main\n"
        f"assert main(['init', {str(home)!r}]) == 0\n"
        "from tumsyn_bids.templates import get_template\n"
        "from tumsyn_bids.templates.references import brain_reference, reference_grid\n"
        f"print(get_template('{TPL}', 1, 'T1w', desc='brain'))\n"
        f"print(get_template('{TPL}', 1, 'probseg', label='WM'))\n"
        f"print(brain_reference('{TPL}').skull_stripped)\n"
        f"print(reference_grid('{TPL}', 2).shape)\n"
        "import templateflow.conf as c\n"
        "print(c.TF_AUTOUPDATE)\n"
    )
    got = run_python(code, home, prefix=prefix)
    assert got.returncode == 0, got.stdout + got.stderr
    lines = got.stdout.splitlines()[-5:]
    assert lines[0] == str(home / f"tpl-{TPL}" / f"tpl-{TPL}_res-1_desc-brain_T1w.nii.gz")
    assert lines[1].endswith(f"tpl-{TPL}_res-1_label-WM_probseg.nii.gz")
    assert lines[2:] == ["True", "(97, 115, 97)", "False"]


def test_missing_home_gives_one_line_naming_home_and_fix(tmp_path):
    home = tmp_path / "nothing-here"
    code = (
        "from tumsyn_bids.templates import get_template, TemplateNotFoundError\n"
        "try:\n"
        f"    get_template('{TPL}', 1, 'mask', desc='brain')\n"
        "except TemplateNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    got = run_python(code, home)
    assert got.returncode == 0, got.stderr
    message = got.stdout.strip()
    assert len(message.splitlines()) == 1
    assert str(home) in message and f"tumsyn-templates init {home}" in message
    assert not home.exists()  # the client did not create a skeleton there


@pytest.mark.slow
def test_placeholder_is_refused_without_download(tmp_path):
    # The client's own skeleton: every file of every template is a zero-byte placeholder
    # that templateflow.api.get would try to download.
    home = tmp_path / "tf"
    code = (
        "import templateflow.api\n"
        "from tumsyn_bids.templates import get_template, TemplateNotFoundError\n"
        "try:\n"
        "    get_template('MNI152NLin2009cAsym', 1, 'T1w')\n"
        "except TemplateNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    got = run_python(code, home)
    assert got.returncode == 0, got.stderr
    assert "placeholder (0 bytes)" in got.stdout and str(home) in got.stdout
    assert "Downloading" not in got.stderr
    placeholder = home / "tpl-MNI152NLin2009cAsym" / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
    assert placeholder.stat().st_size == 0


def test_grids_of_the_packaged_template(packaged_home):
    code = (
        "from tumsyn_bids.templates.references import reference_grid\n"
        f"for r in (1, 2, 3):\n"
        f"    g = reference_grid('{TPL}', r)\n"
        "    print(g.shape, g.affine.ravel().tolist(), g.zooms)\n"
    )
    got = run_python(code, packaged_home)
    assert got.returncode == 0, got.stderr
    rows = got.stdout.strip().splitlines()
    expected = {
        # res-1: TemplateFlow's declared grid; res-r: r mm voxels, voxel 0 centred on the
        # middle of res-1 voxels 0..r-1 (first res-1 centre -96, -132, -78 mm)
        1: ((193, 229, 193), (-96.0, -132.0, -78.0)),
        2: ((97, 115, 97), (-95.5, -131.5, -77.5)),
        3: ((65, 77, 65), (-95.0, -131.0, -77.0)),
    }
    for r, row in zip((1, 2, 3), rows, strict=True):
        shape, origin = expected[r]
        assert row.startswith(str(shape))
        aff = np.array(eval(row[row.index("[") : row.index("]") + 1])).reshape(4, 4)  # noqa: S307
        assert np.allclose(aff[:3, :3], np.eye(3) * r)
        assert np.allclose(aff[:3, 3], origin)


def test_only_the_flow_module_finds_template_files():
    """``templateflow.api.get`` (in templates/flow.py) is the only way the package finds a
    template file: no other module imports the client, reads TEMPLATEFLOW_HOME, or builds
    ``tpl-`` paths, except the writer of the packaged template (and the writer never reads)."""
    flow = PACKAGE / "templates" / "flow.py"
    writer = PACKAGE / "templates" / "packaged.py"
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path != flow:
            assert not re.search(r"^\s*(from|import)\s+templateflow", text, re.M), path
            # the variable is read (os.environ / getenv with the quoted name) in flow.py only
            assert not re.search(r"""["']TEMPLATEFLOW_HOME["']""", text), path
        if path not in (writer,):
            assert not re.search(r"""["']tpl-|f["']tpl-""", text), path
    calls = re.findall(r"\bapi\.(\w+)\(", flow.read_text())
    assert "get" in calls and set(calls) <= {"get", "ls", "templates", "get_metadata"}
