"""The commands set OMP_WAIT_POLICY=PASSIVE before torch loads, unless the user set it."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "import tumsyn_bids.cli.synth, os, sys; sys.stdout.write(os.environ['OMP_WAIT_POLICY'])"


def _policy(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    res = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_commands_wait_passively_unless_told_otherwise():
    assert _policy(None) == "PASSIVE"
    assert _policy("ACTIVE") == "ACTIVE"
    # the package is imported before any command module, so before torch
    code = "import tumsyn_bids.cli, sys; sys.stdout.write(str('torch' in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout == "False", res.stderr
