"""containers/tumsyn-docker: host paths become container mounts."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "containers" / "tumsyn-docker"


def wrapper(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=30
    )


def test_print_maps_paths(tmp_path):
    bids, out, work, weights = (tmp_path / n for n in ("bids", "out", "work", "weights"))
    proc = wrapper(
        "--print", "--gpus", "all", "--image", "tumsyn-bids:test",
        str(bids), str(out), "participant", "--participant-label", "01", "02",
        "-w", str(work), "--checkpoint", str(weights / "checkpoint.pth"),
        f"--text-encoder={weights / 'checkpoint_CLIP.pt'}", "--nprocs", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert cmd[:3] == ["docker", "run", "--rm"]
    assert "--gpus" in cmd and cmd[cmd.index("--gpus") + 1] == "all"
    mounts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-v"]
    assert f"{bids}:/data:ro" in mounts and f"{out}:/out" in mounts and f"{work}:/work" in mounts
    assert f"{weights}:/mnt/checkpoint:ro" in mounts
    assert cmd[cmd.index("tumsyn-bids:test") + 1 :] == [
        "/data", "/out", "participant", "--participant-label", "01", "02", "-w", "/work",
        "--checkpoint", "/mnt/checkpoint/checkpoint.pth",
        "--text-encoder", "/mnt/text-encoder/checkpoint_CLIP.pt", "--nprocs", "2",
    ]  # fmt: skip
    assert not out.exists()  # --print creates nothing


def test_runs_the_engine(tmp_path):
    log = tmp_path / "argv.json"
    engine = tmp_path / "fake-docker"
    engine.write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
    )
    engine.chmod(0o755)
    out = tmp_path / "out"
    proc = wrapper("--engine", str(engine), "--gpus", "none", str(tmp_path), str(out), "group")
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(log.read_text())
    assert "--gpus" not in argv and argv[-4:] == ["tumsyn-bids:latest", "/data", "/out", "group"]
    assert out.is_dir()  # made by the wrapper, as the user


def test_usage_errors(tmp_path):
    assert wrapper("--participant-label", "01").returncode == 64
    assert wrapper("--gpus", "some", "a", "b", "participant").returncode == 64
    assert wrapper("--help").returncode == 0
