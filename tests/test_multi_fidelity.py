"""Multi-fidelity SPNs: the fidelity input, learning the top fidelity from cheap rows, checkpoints old and new,
and ``rlprune spn train --multi-fidelity`` (CPU, real SPN training on synthetic rows of the store's format)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from rlprune.cli import main
from rlprune.errors import ConfigError
from rlprune.samples.store import read_samples
from rlprune.space.pruning import FEATURE_NAMES
from rlprune.spn.frames import metrics, predict_frame
from rlprune.spn.predictor import SPN, SPNConfig, load_spn, save_spn
from rlprune.spn.train import FitConfig, finetune, fit
from tests.fidelity_helpers import FEATURES, FP, HIGH, LOW, SPACES, G, draw, frame, store_rows, truth, write_store


def untrained(arch: str, fidelities=(LOW, 25, HIGH)) -> SPN:
    norm = {"feat_mean": FEATURES.mean(0), "feat_std": np.maximum(FEATURES.std(0), 0.2),
            "target_mean": np.array([20.0, 1.0]), "target_std": np.array([10.0, 0.5])}
    cfg = SPNConfig(arch=arch, n_groups=0 if arch == "transformer" else G, fidelity_input=len(fidelities) > 1)
    return SPN(cfg, FEATURE_NAMES, norm, features={FP: FEATURES}, fidelities=fidelities, seed=1)


# ---------------------------------------------------------------------------------------- the input
@pytest.mark.parametrize("arch", ["transformer", "mlp", "linear"])
def test_fidelity_input_changes_predictions_and_is_range_checked(arch):
    if arch == "linear":  # closed form: fitted on rows of two fidelities whose levels differ by 10 points
        R = draw(40, 5)
        spn = fit("linear", pd.concat([frame(R, LOW, truth(R, LOW), "a"), frame(R, HIGH, truth(R, HIGH), "b")]),
                  SPACES, multi_fidelity=True)
        assert spn.fidelities == [LOW, HIGH] and spn.config.fidelity_input
    else:
        spn = untrained(arch)
    R = draw(8, 6)
    low, high = spn.predict(R, FP, fidelity=LOW)[0], spn.predict(R, FP, fidelity=HIGH)[0]
    assert np.abs(low - high).min() > 1e-3  # the input reaches every prediction
    np.testing.assert_array_equal(spn.predict(R, FP)[0], high)  # the default is the highest fidelity
    mixed = spn.predict(R, FP, fidelity=[LOW, HIGH] * 4)[0]
    np.testing.assert_allclose(mixed[::2], low[::2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[1::2], high[1::2], rtol=1e-5, atol=1e-5)
    assert np.isfinite(spn.predict(R, FP, fidelity=50)[0]).all()  # between trained fidelities: interpolated
    for outside in (HIGH + 1, -1):
        with pytest.raises(ConfigError, match="refuses to extrapolate"):
            spn.predict(R, FP, fidelity=outside)
    if arch == "transformer":
        np.testing.assert_allclose(spn.predict_mixed(list(R), [FP] * 8, fidelity=LOW)[0], low, rtol=1e-4, atol=1e-4)


def test_a_single_fidelity_spn_predicts_its_own_fidelity_only():
    spn = untrained("transformer", fidelities=(25,))
    R = draw(4, 7)
    np.testing.assert_array_equal(spn.predict(R, FP)[0], spn.predict(R, FP, fidelity=25)[0])
    with pytest.raises(ConfigError, match="label_steps=25 only.*--multi-fidelity"):
        spn.predict(R, FP, fidelity=0)
    with pytest.raises(ConfigError, match="fidelity_input=True"):
        SPN(SPNConfig(), FEATURE_NAMES, spn.norm, fidelities=(0, 25))


# ---------------------------------------------------------------------------------------- learning
def test_many_cheap_rows_teach_the_top_fidelity_better_than_its_few_rows_alone():
    # 240 noisy cheap labels plus 12 top-fidelity ones (no loss, as a final), scored on 200 fresh vectors
    # against the top-fidelity truth. A fidelity-blind SPN on the same rows (every row filed as one fidelity)
    # ranks well but misses the top fidelity's level: it shows that the fidelity input is what the win needs.
    fc = FitConfig(max_steps=600, seed=0)
    R_low, R_high, R_test = draw(240, 1), draw(12, 2), draw(200, 3)
    cheap = frame(R_low, LOW, truth(R_low, LOW, noise_seed=4), "lo", loss=truth(R_low, LOW) / 20)
    top = frame(R_high, HIGH, truth(R_high, HIGH), "hi")
    y_test = truth(R_test, HIGH)
    test = frame(R_test, HIGH, y_test, "te")

    multi = fit("transformer", pd.concat([cheap, top], ignore_index=True), SPACES, fc, multi_fidelity=True)
    alone = fit("transformer", top, SPACES, fc)
    blind = fit("transformer", pd.concat([cheap, top.assign(measure_id=cheap["measure_id"][0],
                                                            measure=cheap["measure"][0])], ignore_index=True),
                SPACES, fc)
    assert multi.fidelities == [LOW, HIGH] and alone.fidelities == [HIGH] and blind.fidelities == [LOW]
    assert multi.meta["rows_per_fidelity"] == {"0": 240, "100": 12}
    m_multi = metrics(y_test, predict_frame(multi, test)[0])
    m_alone = metrics(y_test, predict_frame(alone, test)[0])
    m_blind = metrics(y_test, predict_frame(blind, test.drop(columns=["measure"]))[0])
    # When this was written: MAE 1.2 / 3.8 / 7.0 points, Spearman 0.99 / 0.90 / 1.00.
    assert m_multi["mae"] < 0.6 * m_alone["mae"], (m_multi, m_alone)
    assert m_multi["spearman"] > m_alone["spearman"] + 0.04, (m_multi, m_alone)
    assert m_blind["mae"] > 2 * m_multi["mae"], (m_blind, m_multi)
    # The cheap fidelity is still predicted at its own level.
    assert metrics(truth(R_test, LOW), predict_frame(multi, test, fidelity=LOW)[0])["mae"] < 2.0

    with pytest.raises(ConfigError, match="multi_fidelity=True"):
        fit("transformer", pd.concat([cheap, top], ignore_index=True), SPACES, fc)
    # Fine-tuning keeps to the trained fidelities: new cheap rows are learnt, an unseen fidelity is refused.
    R_new = draw(16, 8)
    tuned = finetune(multi, frame(R_new, LOW, truth(R_new, LOW), "new"), cheap.iloc[:32], steps=20)
    assert tuned.fidelities == [LOW, HIGH] and tuned.meta["finetunes"][-1]["n_new"] == 16
    with pytest.raises(ConfigError, match="refuses to extrapolate"):
        finetune(multi, frame(R_new, 200, truth(R_new, HIGH), "far"), steps=5)


# ---------------------------------------------------------------------------------------- checkpoints
def test_old_single_fidelity_checkpoints_load_and_predict_the_same(tmp_path):
    R = draw(40, 9)
    spn = fit("transformer", frame(R, LOW, truth(R, LOW), "a", loss=truth(R, LOW) / 20), SPACES,
              FitConfig(max_steps=30, eval_every=10))
    assert spn.fidelities == [LOW] and not spn.config.fidelity_input
    state = spn.state()
    assert state["format_version"] == 1  # a single-fidelity SPN is still written as format 1
    # What rlprune wrote before fidelities existed: no ``fidelities``, no ``fidelity_input`` in the config.
    del state["fidelities"]
    del state["config"]["fidelity_input"]
    buf = io.BytesIO()
    torch.save(state, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    old = load_spn(tmp_path / "old.pt")
    assert old.fidelities == [0] and old.config == spn.config
    for a, b in zip(old.predict(R, FP), spn.predict(R, FP), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(old.predict(R, FP, fidelity=0)[0], spn.predict(R, FP)[0])


def test_multi_fidelity_checkpoint_round_trip(tmp_path):
    spn = untrained("transformer")
    path = save_spn(spn, tmp_path / "mf.pt")
    back = load_spn(path)
    assert back.fidelities == [LOW, 25, HIGH] and back.config.fidelity_input
    assert torch.load(path, weights_only=True)["format_version"] == 2  # older rlprune refuses it by name
    R = draw(5, 10)
    for k in (LOW, 10, HIGH):
        np.testing.assert_array_equal(back.predict(R, FP, fidelity=k)[0], spn.predict(R, FP, fidelity=k)[0])


# ---------------------------------------------------------------------------------------- CLI
def test_cli_train_multi_fidelity(tmp_path, capsys):
    store = tmp_path / "samples"
    R = draw(60, 11)
    # 60 vectors with a cheap label, 20 of them also with a top one (the store of a real multi-fidelity run).
    write_store(store, [store_rows(R, LOW, truth(R, LOW)), store_rows(R[:20], HIGH, truth(R[:20], HIGH))])
    out = tmp_path / "mf.pt"
    argv = ["spn", "train", "--samples", str(store), "--out", str(out), "--max-steps", "60", "--json"]
    assert main(argv) == 2  # two fidelities, no flag: refused, and the error names the flag
    assert "--multi-fidelity" in capsys.readouterr().err
    assert main([*argv, "--multi-fidelity"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fidelities"] == [LOW, HIGH] and res["predicts_at"] == HIGH
    assert set(res["by_fidelity"]) == {"0", "100"} and set(res["baselines"]) == {"mlp", "linear"}
    assert "mae" in res["baselines"]["linear"]
    # The split holds out whole vectors: no held-out label shares its vector with a training one.
    spn = load_spn(out)
    vector = {r["sample_id"]: tuple(r["ratios"]) for r in read_samples(store).to_dict("records")}
    assert spn.fidelity == HIGH and {vector[i] for i in spn.meta["test_ids"]}.isdisjoint(
        {vector[i] for i in spn.meta["train_ids"]})
    assert res["by_fidelity"]["0"]["n"] + res["n_train"] >= 60
    assert main(["spn", "eval", "--spn", str(out), "--samples", str(store), "--multi-fidelity", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_test"] == res["n_test"]
    with pytest.raises(SystemExit):
        main(["spn", "train", "--help"])
    assert "--multi-fidelity" in capsys.readouterr().out
