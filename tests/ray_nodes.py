"""Real Ray nodes on loopback for the cluster tests: a head node, worker nodes, `ray job submit`.

Every node gets its own temp dir and free ports (a second Ray instance on the machine, e.g. another test's or
a benchmark's, keeps its own), and the cluster token authentication with a token made for the test. A node
is stopped by signalling exactly the processes of its temp dir: `ray stop` would kill every Ray instance on
the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: GCS health checks tuned down (defaults: a check every 3 s, dead after 5 misses), so a node that dies is
#: declared dead in ~4 s and its actors' owners (Tune) hear of it at once; nothing else changes.
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                          "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def processes_of(temp_dir: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if temp_dir.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def stop_processes_of(temp_dir: str) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in processes_of(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        t0 = time.monotonic()
        while processes_of(temp_dir) and time.monotonic() - t0 < wait:
            time.sleep(0.2)


def _port_flags(dashboard: bool) -> list[str]:
    agent = free_ports(7)
    flags = [f"--dashboard-agent-listen-port={agent[0]}", f"--dashboard-agent-grpc-port={agent[1]}",
             f"--metrics-export-port={agent[2]}", f"--runtime-env-agent-port={agent[3]}",
             f"--node-manager-port={agent[4]}", f"--object-manager-port={agent[5]}"]
    if dashboard:
        flags.append(f"--ray-client-server-port={agent[6]}")
    return flags


class LoopbackCluster:
    """A head node and any number of worker nodes on 127.0.0.2, .3, ...; :meth:`stop` ends exactly their processes.

    Not 127.0.0.1: Ray replaces that node IP with the machine's external one; other loopback addresses it keeps.

    Each node has ``cpus`` CPUs and a custom resource of its own name (``head``, ``worker1``, ...), so where
    something ran can be told from the node ids Ray reports (:meth:`node_names`).
    """

    def __init__(self, cache: Path, cpus: int = 2, env: dict | None = None):
        self.cpus = cpus
        self.gcs, self.dash = free_ports(2)
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), RLPRUNE_CACHE=str(cache), RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=secrets.token_hex(16), **(env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self.temp_dirs: dict[str, str] = {}
        self.address = f"http://127.0.0.1:{self.dash}"  # jobs API (dashboard)
        self.gcs_address = f"127.0.0.2:{self.gcs}"  # drivers and worker nodes

    def start_head(self) -> None:
        self._start("head", ["--head", f"--port={self.gcs}", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dash}", "--include-dashboard=true", *_port_flags(True)])

    def add_worker(self, name: str) -> None:
        self._start(name, [f"--address={self.gcs_address}", *_port_flags(False)])

    def _start(self, name: str, flags: list[str]) -> None:
        # Short: Ray's socket paths under the temp dir have a length limit.
        temp_dir = tempfile.mkdtemp(prefix=f"rlp{name[0]}", dir="/tmp")
        ip = f"127.0.0.{len(self.temp_dirs) + 2}"
        cmd = [str(BIN / "ray"), "start", *flags, f"--node-ip-address={ip}", f"--num-cpus={self.cpus}",
               f"--resources={json.dumps({name: 1})}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        self.temp_dirs[name] = temp_dir
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def kill(self, name: str) -> None:
        """The node dies hard: its raylet is SIGKILLed (its workers follow), then its other processes."""
        try:
            os.kill(self.raylet_pid(name), signal.SIGKILL)
        except (RuntimeError, ProcessLookupError):
            pass
        stop_processes_of(self.temp_dirs[name])

    def raylet_pid(self, name: str) -> int:
        for pid in processes_of(self.temp_dirs[name]):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"raylet"):
                    return pid
            except OSError:
                continue
        raise RuntimeError(f"node {name} has no raylet")

    def live_worker(self) -> str:
        """The name of a live worker node, starting a new one if the last was killed."""
        workers = [n for n in self.temp_dirs if n != "head"]
        if workers and processes_of(self.temp_dirs[workers[-1]]):
            return workers[-1]
        name = f"worker{len(workers) + 1}"
        self.add_worker(name)
        return name

    def python(self, code: str, timeout: float = 120) -> str:
        """Run ``code`` as a driver connected to this cluster; returns its stdout (raises on failure)."""
        env = dict(self.env, RAY_ADDRESS=self.gcs_address)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"driver failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout

    def node_names(self) -> dict[str, dict]:
        """``{node_id: {"name", "ip"}}`` for every node the cluster has had (a dead one's name is None)."""
        out = self.python(
            "import json, ray\nray.init(logging_level='ERROR', log_to_driver=False)\n"
            "print(json.dumps([[n['NodeID'], n['NodeManagerAddress'], list(n['Resources'])]"
            " for n in ray.nodes()]))")
        names = {}
        for node_id, ip, resources in json.loads(out.strip().splitlines()[-1]):
            names[node_id] = {"name": next((r for r in resources if r in self.temp_dirs), None), "ip": ip}
        return names

    def stop(self) -> None:
        for temp_dir in self.temp_dirs.values():
            stop_processes_of(temp_dir)
        for temp_dir in self.temp_dirs.values():
            shutil.rmtree(temp_dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        return [pid for t in self.temp_dirs.values() for pid in processes_of(t)]


def submit(address: str, env: dict, entrypoint: list[str], runtime_env: dict) -> subprocess.CompletedProcess:
    """`ray job submit` (waits for the job), retried while a fresh dashboard agent is not serving yet."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env),
           "--", *entrypoint]
    for _ in range(12):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if "No available agent" not in r.stdout + r.stderr:
            return r
        time.sleep(5)
    return r
