"""Real Ray clusters on loopback (``tests.ray_nodes``): `ray job submit` and `ray submit`-style drivers.

First a head node alone runs `ray job submit -- rlprune run --preset tiny`. Then a head and a worker node
(2 CPUs each, a custom resource each, token auth, their own temp dirs and ports) run the pipeline with its
trials spread over both, lose the worker node mid-run, and finish on what is left; the world-model actor
comes back with its weights after its node dies; and `tune_configs/full.py` joins the cluster from a head
node the way `ray submit cluster.yaml tune_configs/full.py` runs it. Nodes are stopped by signalling
exactly their own processes, also when a test fails.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rlprune.io import load_pruned
from rlprune.samples.store import read_samples
from tests.ray_nodes import FAST_FAILURE_DETECTION, ROOT, LoopbackCluster, stop_processes_of, submit

pytestmark = pytest.mark.slow


def runtime_env(cluster: LoopbackCluster) -> dict:
    return {"env_vars": {"RLPRUNE_CACHE": cluster.env["RLPRUNE_CACHE"], "PYTHONPATH": str(ROOT)}}


@pytest.fixture(scope="module")
def one_node_run(rlprune_cache, digits_task, tmp_path_factory):
    """(job output, out folder, head temp dir) of `rlprune run --preset tiny` submitted to a lone head node."""
    cluster = LoopbackCluster(rlprune_cache)
    out = tmp_path_factory.mktemp("one_node") / "run"
    try:
        cluster.start_head()
        entry = [sys.executable, "-m", "rlprune.cli", "run", "--task", "digits", "--target-macs", "0.5",
                 "--preset", "tiny", "--out", str(out), "--json"]
        r = submit(cluster.address, cluster.env, entry, runtime_env(cluster))
    finally:
        for temp_dir in cluster.temp_dirs.values():  # stopped now; the session dir is read below
            stop_processes_of(temp_dir)
    assert not cluster.leftovers(), "the head node's processes outlived the run"
    yield r.stdout + r.stderr, r.returncode, out, Path(cluster.temp_dirs["head"])
    cluster.stop()


def test_job_submit_runs_the_pipeline_on_a_head_node(one_node_run):
    logs, rc, out, temp_dir = one_node_run
    assert rc == 0 and "succeeded" in logs, logs[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"].values()] == ["ran"] * 6
    assert any(m["method"].startswith("rl") for m in summary["methods"])
    model, manifest = load_pruned(out / "pruned_model.pt")
    assert manifest["method"] == summary["winner"]
    # The stages ran as Tune experiments on that head node, not on a local Ray the job started itself:
    # Tune keeps its driver artifacts in the session dir of the cluster it ran on.
    for name in ("sample-", "reward_sweep-", "validate-"):
        assert list(temp_dir.glob(f"session_*/artifacts/*/{name}*")), name
    assert all(len(p["nodes"]) == 1 and p["retries"] == 0 for p in summary["placement"].values())


# ====================================================================== cluster.yaml
def test_cluster_yaml_passes_rays_schema_and_needs_only_what_a_node_has():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs before touching a node
    bad = copy.deepcopy(cfg) | {"max_wrokers": 2}
    with pytest.raises(Exception, match="max_wrokers"):
        validate_config(prepare_config(bad))
    # Setup installs the torch this project pins (not whatever a node happens to have), from the CPU index,
    # then the checkout that file_mounts copies; nothing names a path of this machine.
    pinned = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    setup = "\n".join(cfg["setup_commands"])
    assert f"torch=={pinned}" in setup and "-e ~/rlprune" in setup
    assert cfg["file_mounts"] == {"~/rlprune": "."}
    text = json.dumps(cfg)
    assert not re.search(r"/work/|/root/|\.venv/bin|/tmp/", text), text


# ====================================================================== two nodes
@pytest.fixture(scope="module")
def cluster(rlprune_cache, digits_task):
    """A head and a worker node; GCS health checks tuned so a dead node is noticed in ~3 s."""
    c = LoopbackCluster(rlprune_cache, cpus=2, env=FAST_FAILURE_DETECTION)
    try:
        c.start_head()
        c.add_worker("worker1")
        ips = {v["name"]: v["ip"] for v in c.node_names().values()}
        assert ips == {"head": "127.0.0.2", "worker1": "127.0.0.3"}, ips  # loopback, one address per node
        yield c
    finally:
        c.stop()
    assert not c.leftovers(), "a node's processes outlived the tests"


@pytest.fixture
def nodes(cluster):
    """The cluster with a live worker node (a test before may have killed the last one)."""
    cluster.live_worker()
    return cluster


def _names(cluster: LoopbackCluster, known: dict) -> dict:
    known.update({k: v["name"] for k, v in cluster.node_names().items() if v["name"]})
    return known


def test_world_model_comes_back_with_its_weights_when_its_node_dies(nodes, digits_task, tmp_path):
    from rlprune.samples.spaces import read_spaces
    from rlprune.spn.predictor import save_spn
    from rlprune.spn.train import FitConfig, fit
    from tests.spn_helpers import real_samples_store

    store = real_samples_store(digits_task)
    df = read_samples(store, task="digits")
    spn = save_spn(fit("transformer", df.iloc[40:100], read_spaces(store), FitConfig(max_steps=40)),
                   tmp_path / "spn.pt")
    worker = nodes.live_worker()
    names = _names(nodes, {})
    node = next(k for k, v in names.items() if v == worker)
    r = subprocess.run([sys.executable, "-m", "tests.wm_node_driver", "--spn", str(spn), "--store", str(store),
                        "--workdir", str(tmp_path / "wm"), "--node", node, "--raylet-pid",
                        str(nodes.raylet_pid(worker))], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(nodes.env, RAY_ADDRESS=nodes.gcs_address))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert got["node_before"] == node and names.get(got["node_after"]) == "head", got
    assert got["stats"] == {"restored": True, "version": got["version_before"], "n_pending": got["pending_before"]}
    assert got["version_before"] == 1 and got["pending_before"] == 10 and got["same_predictions"], got
    nodes.kill(worker)


#: Tiny, with two sweep points (wall and penalty: one sweep trial per node) and four sampling/validation trials (one CPU
#: each: four fill both nodes), 40 samples so that a sampling trial has a shard in flight when its node dies.
TWO_NODE_CONFIG = {"preset": "tiny", "task": "digits", "target": 0.5, "budget": "macs", "workers": 4,
                   "sample": {"n": 40}, "sweep": {"enforce": ["wall", "penalty"]}}


def test_trials_spread_over_two_nodes_and_a_lost_node_costs_only_its_trials_in_flight(nodes, one_node_run,
                                                                                      tmp_path):
    worker = nodes.live_worker()
    names = _names(nodes, {})
    cfg, out = tmp_path / "two_nodes.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump({**TWO_NODE_CONFIG, "out": str(out)}))
    entry = [sys.executable, "-m", "rlprune.cli", "tune", str(cfg), "--json"]
    job: dict = {}
    thread = threading.Thread(target=lambda: job.update(r=submit(nodes.address, nodes.env, entry,
                                                                 runtime_env(nodes))))
    thread.start()
    try:
        # Kill the worker node once one of its sampling trials has stored a shard (it has more in flight),
        # as seen in the results the Tune driver writes live into the head's session dir.
        node = next(k for k, v in names.items() if v == worker)
        live = Path(nodes.temp_dirs["head"])
        deadline = time.monotonic() + 240
        while not any(node in p.read_text() for p in live.glob("session_*/artifacts/*/sample-*/**/result.json")):
            assert time.monotonic() < deadline and thread.is_alive(), "no sampling trial reported from the worker"
            time.sleep(0.2)
        nodes.kill(worker)
        # A replacement node joins once sampling is over, so the sweep and validation have two nodes again.
        while not (out / "stages" / "samples.json").is_file() and thread.is_alive():
            time.sleep(0.5)
        replacement = nodes.live_worker()
    finally:
        thread.join(timeout=600)
    r = job["r"]
    logs = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in logs, logs[-4000:]
    names = _names(nodes, names)
    summary = json.loads((out / "summary.json").read_text())
    where = {stage: sorted(names.get(n, n) for n in p["nodes"]) for stage, p in summary["placement"].items()}
    # Sampling ran on both nodes, lost the worker's trials, and Tune restarted them (the summary says so).
    assert where["samples"] == sorted({"head", worker}) and summary["placement"]["samples"]["retries"] >= 1, where
    assert where["sweep"] == where["validate"] == sorted({"head", replacement}), where
    # The store: whole shards only, no sample twice; sampling stored exactly the 40 asked for, each of its
    # four trials exactly its share (a restarted trial counts what it had stored and never redoes it). The
    # other rows are the searches' online real evaluations.
    shards = sorted((out / "samples" / "shards").glob("*.parquet"))
    rows = [r for s in shards for r in pq.read_table(s).to_pylist()]
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)), len(ids)
    sampled = [r["worker"] for r in rows if re.fullmatch(r"\d{8}-\d{6}-\d+-r0/w\d", r["worker"])]
    assert sorted(Counter(sampled).values()) == [10] * 4, Counter(r["worker"] for r in rows)
    # The same outputs, in form, as the one-node run.
    _, rc, one, _ = one_node_run
    assert rc == 0
    assert _form(out) == _form(one)
    one_summary = json.loads((one / "summary.json").read_text())
    assert summary.keys() == one_summary.keys()
    assert [m.keys() for m in summary["methods"]][:1] == [m.keys() for m in one_summary["methods"]][:1]


def _form(out: Path) -> set[str]:
    """The run's files (Tune's and the store's aside), stage keys and RL trial tags replaced by ``*``."""
    paths = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    return {re.sub(r"rl-[^/]*?(?=\.json$|\.pt$|/|$)", "rl-*", re.sub(r"^(sweep|validate)/[0-9a-f]+/", r"\1/*/", p))
            for p in paths if not p.startswith(("tune/", "samples/"))}


def test_full_py_joins_the_cluster_from_its_head_node_like_ray_submit(nodes, tmp_path):
    """`ray submit cluster.yaml tune_configs/full.py -- ...` copies full.py to the head node and runs it there
    with `--address auto`: here, a copy without its YAML beside it, run on the head node's machine."""
    script = tmp_path / "full.py"
    shutil.copy(ROOT / "tune_configs" / "full.py", script)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "tiny", "task": "digits", "until": "samples", "workers": 2,
                                   "sample": {"n": 8}}))
    out, samples = tmp_path / "full", tmp_path / "shared_samples"
    # On a `ray up` head node `auto` finds the cluster in /tmp/ray; this one has its own temp dir, so the
    # address comes the other way `auto` reads it (RAY_ADDRESS), never from another Ray on this machine.
    r = subprocess.run([sys.executable, str(script), "--config", str(cfg), "--out", str(out), "--samples",
                        str(samples)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(nodes.env, RAY_ADDRESS=nodes.gcs_address))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["base", "samples"] and summary["placement"]["samples"]["trials"] == 2
    assert len(read_samples(samples)) == 8
    head = Path(nodes.temp_dirs["head"])
    assert list(head.glob("session_*/artifacts/*/sample-*")), "the sampling experiment ran elsewhere"
