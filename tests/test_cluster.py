"""A real Ray cluster on loopback: `ray start --head`, then `ray job submit -- rlprune run ...`.

The head node gets its own temp dir and free ports (a second Ray instance on the machine, e.g. another
test's, keeps the default ones), and token authentication with a token made for this test. It is stopped by
signalling exactly the processes of its temp dir: `ray stop` would kill every Ray instance on the machine.
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

import pytest

from rlprune.io import load_pruned

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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


@pytest.fixture
def head_node(rlprune_cache):
    """(dashboard URL, env for Ray CLI calls, temp dir) of a fresh head node; stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rlp", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash, *agent = free_ports(7)
    env = dict(os.environ, PYTHONPATH=str(ROOT), RLPRUNE_CACHE=str(rlprune_cache), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(16))
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--include-dashboard=true", f"--dashboard-agent-listen-port={agent[0]}",
           f"--dashboard-agent-grpc-port={agent[1]}", f"--metrics-export-port={agent[2]}",
           f"--runtime-env-agent-port={agent[3]}", f"--ray-client-server-port={agent[4]}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}", env, Path(temp_dir)
    finally:
        stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not processes_of(temp_dir), "the head node's processes outlived the test"


def submit(address: str, env: dict, entrypoint: list[str], runtime_env: dict) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the freshly started dashboard agent is not serving yet."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--runtime-env-json", json.dumps(runtime_env),
           "--", *entrypoint]
    for _ in range(12):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if "No available agent" not in r.stdout + r.stderr:
            return r
        time.sleep(5)
    return r


def test_job_submit_runs_the_pipeline_on_a_head_node(head_node, tmp_path, digits_task):
    address, env, temp_dir = head_node
    out = tmp_path / "cluster_run"
    entry = [sys.executable, "-m", "rlprune.cli", "run", "--task", "digits", "--target-macs", "0.5",
             "--preset", "tiny", "--out", str(out), "--json"]
    r = submit(address, env, entry, {"env_vars": {"RLPRUNE_CACHE": env["RLPRUNE_CACHE"], "PYTHONPATH": str(ROOT)}})
    logs = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in logs, logs[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"].values()] == ["ran"] * 6
    assert any(m["method"].startswith("rl") for m in summary["methods"])
    model, manifest = load_pruned(out / "pruned_model.pt")
    assert manifest["method"] == summary["winner"]
    # The stages ran as Tune experiments on that head node, not on a local Ray the job started itself:
    # Tune keeps its driver artifacts in the session dir of the cluster it ran on.
    for name in ("sample-", "reward_sweep-", "validate-"):
        assert list(temp_dir.glob(f"session_*/artifacts/*/{name}*")), name
