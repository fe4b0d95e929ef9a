"""A real single-node SLURM cluster on loopback, for tests: munge, slurmctld and slurmd.

Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` packages (SLURM 22.05 on
Debian 12) are started by hand, as root, with every file (key, sockets, state, logs, PID files)
under one temporary folder and two free TCP ports, so that several test sessions on one machine
do not meet. The node gets the machine's CPU count and half its memory. The daemons are stopped
by the PIDs in their PID files. The recipe is ``../shared/notes/slurm-and-torchrun-local.md``.

:func:`start_cluster` returns a :class:`LocalSlurm` or raises :class:`SlurmUnavailable` with the
reason (not root, no apt-get, the packages cannot be installed): the fixture turns that into a
skip. A daemon that does not start when everything is installed is a :class:`RuntimeError`
(a failed test, not a skip). munged wants every folder above its socket to be searchable by
all, so the cluster lives in a folder made with :func:`tempfile.mkdtemp` (not pytest's private
temporary folders) and is removed by :meth:`LocalSlurm.stop`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
#: Job states after which a job never runs again (squeue/scontrol spelling).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
     "DEADLINE", "PREEMPTED"}
)  # fmt: skip


class SlurmUnavailable(RuntimeError):
    """No SLURM cluster can be started here; the message says why."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    """Half of MemTotal in MB (slurmd drains a node that claims more than it has)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(512, int(line.split()[1]) // 1024 // 2)
    return 2048


def ensure_installed(timeout: float = 600) -> None:
    """Install the Debian packages with apt-get when a binary is missing (root only)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("SLURM is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:  # another process may hold the dpkg lock for a while
        update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode == 0 and all(shutil.which(b) for b in BINARIES):
            return
        last = (res.stderr or update.stderr).strip().splitlines()[-1:] or ["?"]
        last = last[0]
        time.sleep(10)
    raise SlurmUnavailable(f"apt-get could not install {' '.join(PACKAGES)}: {last}")


@dataclass
class LocalSlurm:
    """A running cluster: ``env`` holds ``SLURM_CONF`` for the client commands."""

    root: Path
    conf: Path
    cpus: int
    memory_mb: int
    pid_files: dict[str, Path] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, capture_output=True, text=True, env=self.env, **kwargs)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}")
        return res

    def sbatch(self, *args: str, cwd: str | Path | None = None) -> str:
        """Submit with ``sbatch --parsable``; returns the job id."""
        res = self.run("sbatch", "--parsable", *args, cwd=cwd)
        return res.stdout.strip().split(";")[0]

    def jobs(self, job_id: str = "") -> list[dict[str, str]]:
        """The fields of ``scontrol show job`` (every job the controller remembers, or the
        tasks of ``job_id``), one dict per job."""
        args = ["scontrol", "-o", "show", "job"] + ([job_id] if job_id else [])
        res = self.run(*args, check=False)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in res.stdout.splitlines()]

    def job_states(self, job_id: str) -> dict[str, tuple[str, str]]:
        """``{job or array task id: (state, exit code)}`` from ``scontrol show job``."""
        states = {}
        for fields in self.jobs(job_id):
            key = fields.get("JobId", "")
            if fields.get("ArrayTaskId"):
                key = f"{fields.get('ArrayJobId')}_{fields['ArrayTaskId']}"
            states[key] = (fields.get("JobState", "?"), fields.get("ExitCode", "?"))
        return states

    def wait(self, job_id: str, timeout: float = 900, poll: float = 2) -> dict:
        """Wait until every task of ``job_id`` is in a final state; returns :meth:`job_states`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.job_states(job_id)
            pending = [s for s, _ in states.values() if s not in FINAL_STATES]
            if states and not pending:
                return states
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not finished after {timeout:g} s: {states}")

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()

    def stop(self) -> None:
        """Cancel what is left, then stop slurmd, slurmctld and munged by their PIDs."""
        self.run("scancel", "--full", "-u", "root", check=False, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            path = self.pid_files.get(name)
            try:
                pid = int(path.read_text().split()[0]) if path else 0
            except (OSError, ValueError, IndexError):
                continue
            _terminate(pid)
        shutil.rmtree(self.root, ignore_errors=True)


def _terminate(pid: int, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


SLURM_CONF = """\
ClusterName=tumsyntest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=sched_interval=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(timeout: float = 90) -> LocalSlurm:
    """Start munged, slurmctld and slurmd in a new temporary folder; wait until the node is
    idle. Raises :class:`SlurmUnavailable` (skip) or :class:`RuntimeError` (failure)."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting the SLURM daemons needs root")
    ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="tumsyn-slurm-"))
    for sub in ("munge/run", "state", "spool", "run", "log", "etc"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "munge").chmod(0o755)
    (root / "munge" / "run").chmod(0o755)  # munged refuses a socket folder it deems private
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    socket_path = root / "munge" / "run" / "munge.socket.2"
    cpus = os.cpu_count() or 1
    cluster = LocalSlurm(
        root=root,
        conf=root / "etc" / "slurm.conf",
        cpus=cpus,
        memory_mb=_memory_mb(),
        pid_files={
            "munged": root / "munge" / "run" / "munged.pid",
            "slurmctld": root / "run" / "slurmctld.pid",
            "slurmd": root / "run" / "slurmd.pid",
        },
    )
    cluster.conf.write_text(
        SLURM_CONF.format(
            root=root,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            munge_socket=socket_path,
            cpus=cpus,
            memory=cluster.memory_mb,
        )
    )
    started = []
    try:
        started.append("munged")
        _start(
            [
                "munged",
                f"--key-file={key}",
                "-S",
                str(socket_path),
                f"--pid-file={cluster.pid_files['munged']}",
                f"--log-file={root / 'log' / 'munged.log'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
            ],
            cluster,
        )
        started.append("slurmctld")
        _start(["slurmctld", "-f", str(cluster.conf), "-i"], cluster)
        started.append("slurmd")
        _start(["slurmd", "-f", str(cluster.conf), "-N", "localhost"], cluster)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = cluster.node_state()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise SlurmUnavailable(f"the SLURM node is {state or 'not reported'} after {timeout} s")
    except BaseException as exc:
        logs = "; ".join(
            f"{p.name}: {p.read_text(errors='replace').strip().splitlines()[-1:]}"
            for p in sorted((root / "log").glob("*.log"))
        )
        cluster.stop()
        if isinstance(exc, OSError | subprocess.SubprocessError | SlurmUnavailable):
            raise RuntimeError(f"{exc} (started: {', '.join(started)}; {logs})") from exc
        raise


def _start(cmd: list[str], cluster: LocalSlurm) -> None:
    """Run a daemon's start command (it forks into the background) with SLURM_CONF set."""
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=cluster.env, timeout=60)
