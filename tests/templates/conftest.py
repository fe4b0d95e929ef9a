"""Helpers for the template tests: run Python in a child process with its own TEMPLATEFLOW_HOME.

The TemplateFlow client fixes its home when first imported, so every test that points the
client at a fresh home does so in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_python(code: str, home: Path, *, prefix: tuple[str, ...] = (), timeout: int = 300):
    """Run ``code`` in a new interpreter with ``TEMPLATEFLOW_HOME=home``; returns the
    CompletedProcess (text output captured)."""
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(home))
    env.pop("TEMPLATEFLOW_AUTOUPDATE", None)
    return subprocess.run(
        [*prefix, sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def packaged_home(templateflow_home) -> Path:
    """A TemplateFlow home holding only what ``tumsyn-templates init`` writes (made once)."""
    return templateflow_home
