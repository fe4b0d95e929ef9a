"""containers/fetch-weights against a fake Zenodo API served on loopback."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "containers" / "fetch-weights"
RECORD = "13119176"
CKPT = bytes(range(256)) * 40 + b"synthesis"  # ~10 kB
CLIP = b"text encoder " * 500


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FakeZenodo:
    """Serves GET /api/records/<id> and the files, honouring Range; logs every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # what is served
        self.published: dict[str, bytes] = {}  # what the record's checksums describe
        self.truncate: dict[str, int] = {}  # name -> bytes sent before the connection drops
        self.shape = "list"
        self.requests: list[tuple[str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                fake.requests.append((self.path, self.headers.get("Range")))
                if self.path == f"/api/records/{RECORD}":
                    return self._send(200, json.dumps(fake.record()).encode(), "application/json")
                prefix = f"/api/records/{RECORD}/files/"
                name = self.path[len(prefix) : -len("/content")]
                if not self.path.startswith(prefix) or name not in fake.files:
                    return self._send(404, b"not found", "text/plain")
                data = fake.files[name]
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", "text/plain")
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = fake.truncate.pop(name, None)
                self.wfile.write(data[start:cut] if cut is not None else data[start:])
                if cut is not None:
                    self.close_connection = True

            def _send(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, name: str, data: bytes, published: bytes | None = None) -> None:
        self.files[name] = data
        self.published[name] = data if published is None else published

    def record(self) -> dict:
        entries = [
            {
                "key": name,
                "size": len(self.published[name]),
                "checksum": f"md5:{md5(self.published[name])}",
                "links": {"self": f"{self.api}/records/{RECORD}/files/{name}/content"},
            }
            for name in self.files
        ]
        if self.shape == "entries":  # InvenioRDM's own serialization
            return {
                "id": RECORD,
                "files": {"enabled": True, "entries": {e["key"]: e for e in entries}},
            }
        return {"id": int(RECORD), "files": entries}


@pytest.fixture
def zenodo():
    fake = FakeZenodo()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def fetch(zenodo: FakeZenodo, dest: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--api-url", zenodo.api, "--dest", str(dest), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_downloads_and_verifies_both_files(zenodo, tmp_path):
    zenodo.add("checkpoint.pth", CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    zenodo.add("README.md", b"other files in the record are ignored")
    proc = fetch(zenodo, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "checkpoint.pth").read_bytes() == CKPT
    assert (tmp_path / "checkpoint_CLIP.pt").read_bytes() == CLIP
    assert not (tmp_path / "README.md").exists()
    assert not list(tmp_path.glob("*.part"))
    assert proc.stdout.split() == [
        str(tmp_path / "checkpoint.pth"),
        str(tmp_path / "checkpoint_CLIP.pt"),
    ]
    assert hashlib.sha256(CKPT).hexdigest() in proc.stderr  # printed, for pinning
    assert "100.0%" in proc.stderr  # the progress bar

    # Present files are checked, not downloaded again.
    before = len(zenodo.requests)
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert len(zenodo.requests) == before + 1  # the record only
    assert "%" not in proc.stderr


def test_pt_name_and_invenio_shape(zenodo, tmp_path):
    zenodo.shape = "entries"
    zenodo.add("checkpoint.pt", CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "checkpoint.pt").read_bytes() == CKPT


def test_corrupted_file_is_refused_and_deleted(zenodo, tmp_path):
    corrupted = CKPT[:100] + b"X" + CKPT[101:]
    zenodo.add("checkpoint.pth", corrupted, published=CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 1
    assert "checkpoint.pth: checksum mismatch" in proc.stderr
    assert md5(CKPT) in proc.stderr and md5(corrupted) in proc.stderr
    assert not (tmp_path / "checkpoint.pth").exists()
    assert not (tmp_path / "checkpoint.pth.part").exists()


def test_corrupted_existing_file_is_deleted(zenodo, tmp_path):
    zenodo.add("checkpoint.pth", CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    (tmp_path / "checkpoint.pth").write_bytes(b"not the checkpoint")
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 1
    assert not (tmp_path / "checkpoint.pth").exists()
    assert fetch(zenodo, tmp_path, "--no-progress").returncode == 0  # and a rerun repairs it


def test_truncated_download_resumes(zenodo, tmp_path):
    zenodo.add("checkpoint.pth", CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    zenodo.truncate["checkpoint.pth"] = 4000  # the connection drops after 4000 bytes
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 4, proc.stderr
    assert "run again to resume" in proc.stderr
    assert (tmp_path / "checkpoint.pth.part").stat().st_size == 4000
    assert not (tmp_path / "checkpoint.pth").exists()

    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "resuming at 4000 bytes" in proc.stderr
    assert (f"/api/records/{RECORD}/files/checkpoint.pth/content", "bytes=4000-") in zenodo.requests
    assert (tmp_path / "checkpoint.pth").read_bytes() == CKPT
    assert not (tmp_path / "checkpoint.pth.part").exists()


def test_stale_part_longer_than_file_starts_over(zenodo, tmp_path):
    zenodo.add("checkpoint.pth", CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    (tmp_path / "checkpoint.pth.part").write_bytes(b"x" * (len(CKPT) + 10))
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "checkpoint.pth").read_bytes() == CKPT


def test_missing_file_and_unreachable_record(zenodo, tmp_path):
    zenodo.add("checkpoint.pth", CKPT)
    proc = fetch(zenodo, tmp_path, "--no-progress")
    assert proc.returncode == 3
    assert "checkpoint_CLIP.pt" in proc.stderr

    proc = fetch(zenodo, tmp_path, "--no-progress", "--record", "1")  # 404
    assert proc.returncode == 3
    assert "cannot read record 1" in proc.stderr


def test_usage_error():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-such-option"], capture_output=True, text=True
    )
    assert proc.returncode == 2


def test_pinned_checksum_is_enforced(zenodo, tmp_path, monkeypatch, capsys):
    loader = importlib.machinery.SourceFileLoader("fetch_weights", str(SCRIPT))
    spec = importlib.util.spec_from_loader("fetch_weights", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert module.PINNED_SHA256 == {}  # nothing pinned until the official sha256 is known

    zenodo.add("checkpoint.pth", CKPT)
    zenodo.add("checkpoint_CLIP.pt", CLIP)
    monkeypatch.setattr(module, "PINNED_SHA256", {"checkpoint.pth": "0" * 64})
    code = module.main(["--api-url", zenodo.api, "--dest", str(tmp_path), "--no-progress"])
    assert code == 1
    assert "pinned in this script" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pth").exists()

    monkeypatch.setattr(
        module, "PINNED_SHA256", {"checkpoint.pth": hashlib.sha256(CKPT).hexdigest()}
    )
    assert module.main(["--api-url", zenodo.api, "--dest", str(tmp_path), "--no-progress"]) == 0
