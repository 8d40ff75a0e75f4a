"""A real one-machine Slurm (Debian's slurmctld, slurmd and munge) in a temporary folder.

    with SlurmCluster(tmp_dir, nodes=2) as cluster:
        env = cluster.env          # SLURM_CONF for the client commands (sbatch, squeue, ...)

It writes slurm.conf (this machine's real hostname, CPUs=2, proctrack/linuxproc, task/none, no
accounting, free high ports, its own state and spool folders, SlurmUser=root), creates a munge
key, starts munged on its own socket, then slurmctld and one slurmd per node, and stops them all
(by pid) on exit. `nodes=2` runs two slurmd on this one host, under its hostname and an alias
(HOST-n2), each with its own port (`slurmd -N NAME`; Debian's 22.05 allows it), so a job can span
two "nodes". Root only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not installed, not root, a daemon did not come up)."""


def missing_reason() -> str | None:
    """Why a real Slurm cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "the test Slurm runs as root (SlurmUser=root); not root"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    missing += [c for c in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(c) is None]
    if missing:
        return ("Slurm is not installed (missing " + ", ".join(missing)
                + "); make test installs slurmctld, slurmd, slurm-client and munge (tests/install_tools.sh)")
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    def __init__(self, folder: Path, nodes: int = 1, cpus: int = 2) -> None:
        self.dir = Path(folder)
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host] + [f"{self.host}-n{i}" for i in range(2, nodes + 1)]
        self.cpus = cpus
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "SlurmCluster":
        why = missing_reason()
        if why:
            raise SlurmUnavailable(why)
        try:
            self._write_files()
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_files(self) -> None:
        for sub in ("state", "munge"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            (self.dir / "spool" / node).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        d = self.dir
        lines = [
            "ClusterName=rltuitest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_ports[0]}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits (default 120 s; 5 s at least)
            f"AuthInfo=socket={d}/munge/munge.socket,cred_expire=10",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.%n.pid",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdLogFile={d}/slurmd.%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "SwitchType=switch/none",
            "SchedulerType=sched/builtin", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "ReturnToService=2",
            "KillWait=5", "MinJobAge=600", "SchedulerParameters=sched_interval=1",
            "MessageTimeout=10", "SlurmdTimeout=60", "InactiveLimit=0", "BatchStartTimeout=20",
        ]
        for node, port in zip(self.nodes, node_ports):
            addr = "" if len(self.nodes) == 1 else f" NodeHostname={self.host} NodeAddr=127.0.0.1 Port={port}"
            lines.append(f"NodeName={node}{addr} CPUs={self.cpus} State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                             stdout=open(self.dir / f"{Path(argv[0]).name}.{len(self.procs)}.out", "wb"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def _start(self) -> None:
        m = self.dir / "munge"
        self._spawn([_daemon("munged"), "-F", "-f", f"--socket={m}/munge.socket",
                     f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                     f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.socket").exists(), "munged did not create its socket", m / "munged.log")
        self._spawn([_daemon("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(self._ctld_up, "slurmctld did not answer", self.dir / "slurmctld.log")
        for node in self.nodes:
            self._spawn([_daemon("slurmd"), "-D", "-f", str(self.conf), "-N", node])
        self._wait(self._nodes_idle, "slurmd did not register its node(s)", self.dir / f"slurmd.{self.nodes[0]}.log")

    def _ctld_up(self) -> bool:
        return self.run(["scontrol", "ping"], check=False).returncode == 0

    def _nodes_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout
        states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        return len(states) == len(self.nodes) and all(s.rstrip("*") in ("idle", "mix", "alloc") for s in states.values())

    def _wait(self, ready, what: str, log: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for p in self.procs:
                if p.poll() is not None:
                    break
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise SlurmUnavailable(f"{what} within {timeout:g}s; log {log}:\n{tail}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    # ------------------------------------------------------------ client commands

    def run(self, argv: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)
