"""State predictor networks on real digits samples: padding, fidelity against the linear floor,
checkpoints, fine-tuning, the env-side copy and the ``rlprune spn`` verb (CPU, about a minute)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from rlprune.cli import main
from rlprune.errors import CheckpointError, ConfigError
from rlprune.models import vgg_small
from rlprune.samples.spaces import read_spaces
from rlprune.samples.store import read_samples
from rlprune.space.pruning import FEATURE_NAMES, PruningSpace
from rlprune.spn.frames import evaluate, metrics, predict_frame, split_samples
from rlprune.spn.local import LocalSPN
from rlprune.spn.predictor import SPN, SPNConfig, load_spn, save_spn
from rlprune.spn.train import FitConfig, finetune, fit
from tests.spn_helpers import N_SAMPLES, real_samples_store

QUICK = FitConfig(max_steps=60, eval_every=20)


@pytest.fixture(scope="module")
def samples(digits_task):
    """(samples frame in a fixed shuffled order, space records, store path) of 160 real digits samples."""
    store = real_samples_store(digits_task)
    df = read_samples(store, task="digits").sample(frac=1.0, random_state=0).reset_index(drop=True)
    return df, read_spaces(store), store


@pytest.fixture(scope="module")
def small_spn(samples):
    df, spaces, _ = samples
    return fit("transformer", df.iloc[:60], spaces, QUICK)


def _two_model_spn(digits_task) -> tuple[SPN, dict[str, np.ndarray]]:
    """An untrained transformer SPN that knows the digits ResNet (6 groups) and a small VGG (7 groups)."""
    feats = {
        "resnet": PruningSpace.from_model(digits_task.base_model(), digits_task.example_input()).features(),
        "vgg": PruningSpace.from_model(vgg_small(in_channels=1).eval(), torch.zeros(1, 1, 32, 32)).features(),
    }
    assert feats["resnet"].shape[0] != feats["vgg"].shape[0]
    both = np.concatenate(list(feats.values()))
    norm = {"feat_mean": both.mean(0), "feat_std": np.maximum(both.std(0), 0.2),
            "target_mean": np.array([20.0, 1.0]), "target_std": np.array([10.0, 0.5])}
    return SPN(SPNConfig(), FEATURE_NAMES, norm, features=feats, seed=3), feats


# ---------------------------------------------------------------------------------------- models
def test_padded_batch_of_two_models_matches_each_alone(digits_task):
    spn, feats = _two_model_spn(digits_task)
    rng = np.random.default_rng(0)
    rows = [("resnet" if i % 3 else "vgg") for i in range(12)]
    ratios = [rng.uniform(0, 0.9, feats[fp].shape[0]) for fp in rows]
    mean, std = spn.predict_mixed(ratios, rows)
    for fp in feats:
        idx = [i for i, r in enumerate(rows) if r == fp]
        alone_mean, alone_std = spn.predict(np.stack([ratios[i] for i in idx]), fp)
        np.testing.assert_allclose(mean[idx], alone_mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(std[idx], alone_std, rtol=1e-4, atol=1e-4)
    assert np.ptp(mean) > 0  # the ratios and the models really change the prediction


def test_predict_checks_its_input(digits_task):
    spn, feats = _two_model_spn(digits_task)
    with pytest.raises(ConfigError, match="knows no model"):
        spn.predict(np.zeros((2, 6)), "nope")
    with pytest.raises(ConfigError, match="6 groups"):
        spn.predict(np.zeros((2, 7)), "resnet")
    with pytest.raises(ConfigError, match="target"):
        spn.predict(np.zeros((2, 6)), "resnet", target="latency")
    mlp = SPN(SPNConfig(arch="mlp", n_groups=6), FEATURE_NAMES, spn.norm, features={"resnet": feats["resnet"]})
    with pytest.raises(ConfigError, match="exactly 6 groups"):
        mlp.add_model("vgg", feats["vgg"])
    with pytest.raises(ConfigError, match="n_heads"):
        SPNConfig(d_model=16, n_heads=3)


# ---------------------------------------------------------------------------------------- fidelity
def _cross_validated(arch, df, spaces, k=4) -> dict:
    """Metrics of out-of-fold predictions: every sample is scored by a model that did not train on it."""
    folds = np.arange(len(df)) % k
    pred = np.zeros(len(df))
    for f in range(k):
        spn = fit(arch, df[folds != f], spaces, FitConfig(seed=f))
        pred[folds == f] = predict_frame(spn, df[folds == f])[0]
    return metrics(df["acc_drop"], pred)


def test_transformer_beats_linear_on_held_out_real_samples(samples):
    # 4-fold cross-validation over 160 samples, scored on every sample's out-of-fold prediction. When this
    # was written, single 25-row test splits of 100 samples picked the wrong winner about one time in three
    # and 100-sample CV tied once on one base model; 160-sample CV won 10/10 subsets of two base models'
    # samples by 1.2-2.8 points of MAE.
    df, spaces, _ = samples
    tf = _cross_validated("transformer", df, spaces)
    lin = _cross_validated("linear", df, spaces)
    assert tf["mae"] < lin["mae"], (tf, lin)
    assert tf["spearman"] > 0.9, tf


def test_ensemble_gives_a_spread(small_spn, samples):
    df, _, _ = samples
    mean, std = predict_frame(small_spn, df.iloc[60:])
    assert np.isfinite(mean).all() and (std > 0).all()


def test_finetune_fits_new_rows_and_leaves_the_original(small_spn, samples):
    df, _, _ = samples
    new, replay = df.iloc[60:90], df.iloc[:60]
    before = evaluate(small_spn, new)["mae"]
    reference = small_spn.predict(np.stack(new["ratios"]), new["model_fingerprint"].iloc[0])[0]
    tuned = finetune(small_spn, new, replay, steps=150, lr=3e-3)
    assert evaluate(tuned, new)["mae"] < before
    np.testing.assert_array_equal(small_spn.predict(np.stack(new["ratios"]), new["model_fingerprint"].iloc[0])[0],
                                  reference)
    assert tuned.meta["finetunes"][-1] == {"n_new": 30, "n_replay": 60, "steps": 150}


# ---------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("arch", ["transformer", "mlp", "linear"])
def test_checkpoint_round_trip(arch, samples, tmp_path):
    df, spaces, _ = samples
    spn = fit(arch, df.iloc[:60], spaces, QUICK)
    path = save_spn(spn, tmp_path / "spn.pt")
    back = load_spn(path)
    R = np.stack(df["ratios"].iloc[60:])
    fp = df["model_fingerprint"].iloc[0]
    for a, b in zip(spn.predict(R, fp), back.predict(R, fp), strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.config == spn.config and back.fingerprints == spn.fingerprints == [fp]
    assert back.meta["train_ids"] == spn.meta["train_ids"]
    np.testing.assert_array_equal(back.norm["target_std"], spn.norm["target_std"])


def test_bad_checkpoints_raise_checkpoint_error(small_spn, tmp_path):
    good = save_spn(small_spn, tmp_path / "good.pt").read_bytes()
    cases = {
        "missing.pt": None,
        "truncated.pt": good[: len(good) // 2],
        "garbage.pt": b"not a checkpoint at all",
    }
    buf = io.BytesIO()
    torch.save({"weights": {}}, buf)
    cases["foreign.pt"] = buf.getvalue()
    state = small_spn.state()
    state["weights"] = {k: v[..., :1] for k, v in state["weights"].items()}  # wrong shapes
    buf = io.BytesIO()
    torch.save(state, buf)
    cases["incompatible.pt"] = buf.getvalue()
    state = small_spn.state()
    state["format_version"] = 99
    buf = io.BytesIO()
    torch.save(state, buf)
    cases["newer.pt"] = buf.getvalue()
    expected = {"missing.pt": "no SPN checkpoint", "truncated.pt": "corrupt or truncated",
                "garbage.pt": "corrupt or truncated", "foreign.pt": "not an rlprune SPN checkpoint",
                "incompatible.pt": "incompatible", "newer.pt": "format 99"}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=expected[name]):
            load_spn(tmp_path / name)


# ---------------------------------------------------------------------------------------- env copy
def test_local_spn_follows_new_versions(small_spn, samples):
    df, _, _ = samples
    newer = finetune(small_spn, df.iloc[60:], df.iloc[:60], steps=30)
    calls = []

    def fetch(version):  # what rlprune.spn.world_model.actor_fetch does, minus the Ray round trip
        calls.append(version)
        return (1, newer.state()) if version < 1 else None

    local = LocalSPN(small_spn, version=0, fetch=fetch, check_every_s=3600)
    R, fp = np.stack(df["ratios"].iloc[60:]), df["model_fingerprint"].iloc[0]
    np.testing.assert_array_equal(local.predict(R, fp)[0], small_spn.predict(R, fp)[0])
    assert calls == []  # rate-limited: no round trip per prediction
    assert local.maybe_sync(force=True) and local.version == 1 and calls == [0]
    np.testing.assert_array_equal(local.predict(R, fp)[0], newer.predict(R, fp)[0])
    assert not local.set_weights(small_spn.state(), 1)  # not newer: ignored


# ---------------------------------------------------------------------------------------- CLI
def _run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_train_eval_finetune(samples, tmp_path, capsys):
    _, _, store = samples
    ckpt = tmp_path / "spn.pt"
    res = _run_json(capsys, ["spn", "train", "--samples", str(store), "--task", "digits", "--out", str(ckpt),
                             "--max-steps", "100", "--json"])
    assert res["arch"] == "transformer" and res["n_train"] + res["n_test"] >= N_SAMPLES
    assert {"mae", "rmse", "spearman", "r2"} <= set(res) and set(res["baselines"]) == {"mlp", "linear"}
    assert {"mae", "rmse", "spearman", "r2"} <= set(res["baselines"]["linear"])
    ev = _run_json(capsys, ["spn", "eval", "--spn", str(ckpt), "--samples", str(store), "--json"])
    assert ev["n_test"] == res["n_test"] and ev["mae"] == pytest.approx(res["mae"], rel=1e-5)
    ft = _run_json(capsys, ["spn", "finetune", "--spn", str(ckpt), "--samples", str(store), "--n", "10",
                            "--steps", "20", "--out", str(tmp_path / "spn2.pt"), "--json"])
    assert ft["n_finetune"] == 10 and ft["n_test"] == res["n_test"] - 10
    assert {"mae", "spearman"} <= set(ft["zero_shot"]) and {"mae", "spearman"} <= set(ft["few_shot"])
    assert load_spn(tmp_path / "spn2.pt").meta["finetunes"][-1]["n_new"] == 10


def test_cli_errors_are_one_line(samples, tmp_path, capsys):
    _, _, store = samples
    assert main(["spn", "eval", "--spn", str(tmp_path / "none.pt"), "--samples", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no SPN checkpoint" in err and len(err.splitlines()) == 1
    assert main(["spn", "train", "--samples", str(store), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["spn", "train", "--samples", str(store), "--task", "cifar10", "--out", str(tmp_path / "x.pt")]) == 2
    assert "no samples for task cifar10" in capsys.readouterr().err


def test_split_is_per_model_and_disjoint(samples):
    df, _, _ = samples
    train, test = split_samples(df, 0.2, seed=1)
    assert len(test) == round(len(df) * 0.2) and not set(train["sample_id"]) & set(test["sample_id"])


def test_linear_net_fit_is_weighted_ridge_with_a_free_intercept():
    from rlprune.spn.nets import LinearNet

    g = torch.Generator().manual_seed(0)
    R, Y = torch.rand(40, 3, generator=g) * 0.9, torch.randn(40, 2, generator=g)
    w = torch.from_numpy(np.random.default_rng(0).poisson(1.0, size=(3, 40)).astype(np.float32))
    w[2] = 0  # a bootstrap member that drew no row
    net = LinearNet(SPNConfig(arch="linear", n_groups=3, members=3))
    net.fit(R, Y, w, ridge=1e-2)
    # The normal equations of the weighted, centred problem (the hand-written solve Ridge replaced).
    X, Yd, sw = LinearNet.design(R).double(), Y.double(), w[0].double() / w[0].sum()
    mx, my = sw @ X, sw @ Yd
    A = (X - mx).T @ ((X - mx) * sw[:, None]) + 1e-2 * torch.eye(6, dtype=torch.float64)
    beta = torch.linalg.solve(A, (X - mx).T @ ((Yd - my) * sw[:, None]))
    assert torch.allclose(net.weight[0].double(), beta, atol=1e-5)
    assert torch.allclose(net.bias[0, 0].double(), my - mx @ beta, atol=1e-5)
    # Integer weights are repeated rows, and scaling every weight leaves the fit alone (penalty per unit weight).
    rows = torch.repeat_interleave(torch.arange(40), w[1].long())
    dup = LinearNet(SPNConfig(arch="linear", n_groups=3, members=1))
    dup.fit(R[rows], Y[rows], torch.ones(1, len(rows)), ridge=1e-2)
    assert torch.allclose(dup.weight[0], net.weight[1], atol=1e-5)
    scaled = LinearNet(SPNConfig(arch="linear", n_groups=3, members=3))
    scaled.fit(R, Y, 7 * w, ridge=1e-2)
    assert torch.allclose(scaled.weight, net.weight, atol=1e-5)
    assert not net.weight[2].any() and not net.bias[2].any()  # the empty member predicts the mean target
