"""The world-model actor under a real Ray instance: serving, online fine-tuning, versions, crash recovery."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
import pytest

from rlprune.errors import ConfigError
from rlprune.samples.spaces import read_spaces
from rlprune.samples.store import read_samples
from rlprune.spn.predictor import save_spn
from rlprune.spn.train import FitConfig, fit
from rlprune.spn.world_model import connect, start_world_model
from tests.spn_helpers import real_samples_store


@pytest.fixture(scope="module")
def setup(digits_task, tmp_path_factory):
    """(initial checkpoint trained on 60 real samples, store, 40 rows it never saw as dicts, fingerprint)."""
    store = real_samples_store(digits_task)
    df = read_samples(store, task="digits").sample(frac=1.0, random_state=1).reset_index(drop=True)
    spn = fit("transformer", df.iloc[:60], read_spaces(store), FitConfig(max_steps=60, eval_every=20))
    ckpt = save_spn(spn, tmp_path_factory.mktemp("wm") / "spn.pt")
    return ckpt, store, df.iloc[60:100].to_dict("records"), df["model_fingerprint"].iloc[0]


def _start(setup, tmp_path, **kw):
    ckpt, store, _, _ = setup
    return start_world_model(ckpt, store, tmp_path / "wm", name=f"wm-{uuid.uuid4().hex[:8]}", **kw)


def test_predict_finetune_version_round_trip(ray_cluster, setup, tmp_path):
    ray = ray_cluster
    _, _, new_rows, fp = setup
    wm = _start(setup, tmp_path)
    R = np.stack([r["ratios"] for r in new_rows])
    assert ray.get(wm.version.remote()) == 0
    mean0, std0 = ray.get(wm.predict.remote(R, fp))
    assert mean0.shape == std0.shape == (len(R),)
    local = connect(wm, check_every_s=3600)
    np.testing.assert_allclose(local.predict(R, fp)[0], mean0, rtol=1e-6)

    assert ray.get(wm.add_samples.remote(new_rows)) == len(new_rows)
    assert ray.get(wm.add_samples.remote(new_rows[:5])) == 0  # queued already
    report = ray.get(wm.finetune.remote(100))
    assert report["changed"] and report["version"] == 1 and report["n_new"] == len(new_rows)
    assert report["n_replay"] > 0 and report["mae_after"] < report["mae_before"]
    assert ray.get(wm.version.remote()) == 1
    mean1, _ = ray.get(wm.predict.remote(R, fp))
    assert not np.allclose(mean1, mean0)
    assert ray.get(wm.finetune.remote(100))["changed"] is False  # nothing new: same version
    assert ray.get(wm.version.remote()) == 1

    assert local.version == 0 and local.maybe_sync(force=True) and local.version == 1
    np.testing.assert_allclose(local.predict(R, fp)[0], mean1, rtol=1e-6)
    weights = ray.get(wm.get_weights.remote())
    assert weights["version"] == 1 and ray.get(wm.weights_since.remote(1)) is None
    assert (tmp_path / "wm" / "world_model.pt").is_file()
    ray.kill(wm)


def test_killed_actor_comes_back_with_weights_version_and_queue(ray_cluster, setup, tmp_path):
    ray = ray_cluster
    _, _, new_rows, fp = setup
    wm = _start(setup, tmp_path, max_restarts=2)
    R = np.stack([r["ratios"] for r in new_rows])
    ray.get(wm.add_samples.remote(new_rows[:30]))
    assert ray.get(wm.finetune.remote(50))["version"] == 1
    assert ray.get(wm.add_samples.remote(new_rows[30:])) == len(new_rows) - 30  # queued, not yet trained
    before, _ = ray.get(wm.predict.remote(R, fp))

    ray.kill(wm, no_restart=False)
    stats = _stats_after_restart(ray, wm)
    assert stats["restored"] and stats["version"] == 1 and stats["n_pending"] == len(new_rows) - 30, stats
    assert len(stats["history"]) == 1
    after, _ = ray.get(wm.predict.remote(R, fp))
    np.testing.assert_array_equal(after, before)
    assert ray.get(wm.finetune.remote(20))["version"] == 2
    ray.kill(wm)


def _stats_after_restart(ray, wm, timeout_s: float = 60.0) -> dict:
    """The restarted actor's stats: ray.kill is asynchronous, so a call made right after it may still be
    answered by the old process (or fail over to the new one through max_task_retries)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = ray.get(wm.stats.remote())
        if stats["restored"] or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def test_start_without_a_checkpoint_is_a_clear_error(ray_cluster, tmp_path):
    with pytest.raises(ConfigError, match="no SPN checkpoint"):
        start_world_model(tmp_path / "none.pt", tmp_path / "store", tmp_path / "wm")


def test_multi_fidelity_world_model_replays_its_spec_at_every_fidelity(tmp_path):
    """A plain (actor-less) world model holding a multi-fidelity SPN: online rows of the cheap fidelity are
    learnt with replayed rows of both fidelities of their spec, never rows of another spec."""
    from rlprune.measure.spec import MeasureSpec
    from rlprune.spn.world_model import WorldModel
    from tests.fidelity_helpers import FP, HIGH, LOW, SPACES, draw, store_rows, truth, write_store

    store, R = tmp_path / "samples", draw(50, 1)
    l2 = MeasureSpec(importance="l2")
    write_store(store, [store_rows(R, LOW, truth(R, LOW)), store_rows(R[:15], HIGH, truth(R[:15], HIGH)),
                        store_rows(R[:10], LOW, truth(R[:10], LOW) + 5, spec=l2)])
    with pytest.warns(RuntimeWarning, match="set aside"):
        df = read_samples(store, measure=MeasureSpec(), across_fidelities=True)
    spn = fit("transformer", df, SPACES, FitConfig(max_steps=40, eval_every=20), multi_fidelity=True)
    wm = WorldModel(save_spn(spn, tmp_path / "spn.pt"), store, tmp_path / "wm")
    new_R = draw(8, 2)
    assert wm.add_samples(store_rows(new_R, LOW, truth(new_R, LOW))) == 8
    replay = wm._replay(pd.DataFrame(wm.pending))
    family = {MeasureSpec(label_steps=k).label_id() for k in (LOW, HIGH)}
    assert len(replay) == 65 and set(replay["measure_id"]) == family  # a plain measure_id match would give 50
    report = wm.finetune(20)
    assert report["n_replay"] == 65 and wm.spn.fidelities == [LOW, HIGH]
    low, high = wm.predict(new_R, FP, fidelity=LOW)[0], wm.predict(new_R, FP)[0]
    assert not np.allclose(low, high)
