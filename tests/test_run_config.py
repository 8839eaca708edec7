"""Run configs: presets, the YAML experiments in tune_configs/, and one clear error per bad value."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rlprune.errors import ConfigError
from rlprune.pipeline.config import PRESETS, STAGES, RunConfig, from_mapping, load_yaml
from rlprune.pipeline.report.figures import pareto_front
from rlprune.pipeline.sections import SweepStage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_a_valid_config(preset):
    cfg = RunConfig.preset_config(preset, out="runs/x")
    assert cfg.preset == preset and cfg.stages() == STAGES[:-1] and STAGES[-1] == "quantize"
    assert cfg.sweep.grid(), "a sweep needs at least one trial"
    both = RunConfig.preset_config(preset, out="runs/x", quantize={"target_size": 0.125})
    assert both.stages() == STAGES and both.quantize.target_size == 0.125
    assert RunConfig.preset_config(preset, out="x", until="report", quantize={"target_size": 0.2}).stages() == \
        STAGES[:-1]


@pytest.mark.parametrize("section, match", [
    ({"quantize": {"target_size": 0}}, "quantize.target_size=0 is invalid"),
    ({"quantize": {"target_size": float("nan")}}, "quantize.target_size=nan is invalid"),
    ({"quantize": {"target_size": 0.2, "samples": 4}}, "quantize.samples=4 is invalid"),
    ({"quantize": {"target_size": 0.2, "online_top": -1}}, "quantize.online_top=-1 is invalid"),
    ({"quantize": {"target_size": 0.2}, "target": [0.3, 0.5]}, "rlprune quantize --pruned"),
    ({"quantize": {"bits": 4}}, "unknown key(s) bits in section 'quantize'"),
])
def test_bad_second_stage_settings_name_the_value_and_the_fix(section, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        RunConfig.preset_config("tiny", out="x", **section)


def test_presets_grow_from_tiny_to_full():
    sizes = [RunConfig.preset_config(p, out="o") for p in ("tiny", "quick", "standard", "full")]
    assert [c.sample.n for c in sizes] == sorted(c.sample.n for c in sizes)
    assert [len(c.sweep.grid()) for c in sizes] == sorted(len(c.sweep.grid()) for c in sizes)
    assert sizes[0].sample.n < sizes[-1].sample.n


@pytest.mark.parametrize("name", ["sample", "reward_sweep", "validate", "full"])
def test_tune_configs_map_onto_the_dataclasses(name):
    cfg = load_yaml(ROOT / "tune_configs" / f"{name}.yaml")
    assert isinstance(cfg, RunConfig)
    assert cfg.until == {"sample": "samples", "reward_sweep": "sweep", "validate": "validate", "full": "report"}[name]


def test_extends_merges_sections_key_by_key():
    sweep = load_yaml(ROOT / "tune_configs" / "reward_sweep.yaml")
    validate = load_yaml(ROOT / "tune_configs" / "validate.yaml")
    sample = load_yaml(ROOT / "tune_configs" / "sample.yaml")
    # validate.yaml inherits the sweep and the samples, so it reuses their outputs in the same folder.
    assert validate.sweep == sweep.sweep and validate.sample == sample.sample == sweep.sample
    assert validate.out == sweep.out == sample.out
    assert validate.key("task", "task_kwargs", "seed", "sample", "samples", "spn", "sweep", "target", "budget") == \
        sweep.key("task", "task_kwargs", "seed", "sample", "samples", "spn", "sweep", "target", "budget")
    assert len(sweep.sweep.grid()) == 8


def test_yaml_overrides_and_scalar_axes(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("task: digits\nsweep:\n  w_cost: 7\n  mode: sequential\n")
    cfg = load_yaml(f, out=str(tmp_path / "o"), task=None)
    assert cfg.sweep.w_cost == (7.0,) and cfg.sweep.mode == ("sequential",)
    assert cfg.out == str(tmp_path / "o")
    assert [g["tag"] for g in cfg.sweep.grid()] == ["rl-seq-wall-wacc1-wcost7"]


@pytest.mark.parametrize("data, words", [
    ({"out": "o", "target": 1.5}, ["run.target=1.5", "(0, 1]"]),
    ({"out": "o", "target": float("nan")}, ["run.target=nan"]),
    ({"out": "o", "budget": "flops"}, ["run.budget='flops'", "macs or params"]),
    ({"out": "o", "preset": "huge"}, ["preset 'huge'", "tiny"]),
    ({"out": "o", "stages": ["samples"]}, ["unknown run config key(s) stages", "until"]),
    ({"out": "o", "sweep": {"w_cost": [5, -1]}}, ["sweep.w_cost", ">= 0"]),
    ({"out": "o", "sweep": {"mode": ["async"]}}, ["sweep.mode", "simultaneous"]),
    ({"out": "o", "sweep": {"lr": 1}}, ["unknown key(s) lr in section 'sweep'", "iters"]),
    ({"out": "o", "validate": {"baselines": ["amc"]}}, ["validate.baselines=['amc']", "global_l1"]),
    ({"out": "o", "sample": {"n": 2}}, ["sample.n=2", "at least 8"]),
    ({"out": "o", "sample": "many"}, ["section 'sample' must be a mapping"]),
    ({"out": "o", "spn": {"arch": "lstm"}}, ["spn.arch='lstm'", "transformer"]),
    ({"out": "o", "until": "deploy"}, ["run.until='deploy'", "report"]),
    ({"out": "o", "workers": 0}, ["run.workers=0", ">= 1"]),
])
def test_bad_values_name_the_value_and_the_fix(data, words):
    with pytest.raises(ConfigError) as e:
        from_mapping(data)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\nout: o\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_yaml(loop)
    noout = tmp_path / "noout.yaml"
    noout.write_text("task: digits\n")
    with pytest.raises(ConfigError, match="no `out` folder"):
        load_yaml(noout)


def test_keys_change_only_with_the_settings_they_hash():
    a = RunConfig.preset_config("quick", out="o")
    b = RunConfig.preset_config("quick", out="o", target=0.3)
    assert a.key("sample", "spn") == b.key("sample", "spn")
    assert a.key("sweep", "target") != b.key("sweep", "target")


def test_sweep_grid_is_the_cross_product_with_one_weight_under_the_wall():
    s = SweepStage(w_cost=(5.0, 10.0), mode=("simultaneous", "sequential"), enforce=("wall", "penalty"))
    grid = s.grid()
    # Under the wall the cost term is flat (nothing is paid past the target), so w_cost cannot matter there.
    assert len(grid) == 6 and len({g["tag"] for g in grid}) == 6
    assert sorted(g["w_cost"] for g in grid if g["enforce"] == "wall") == [5.0, 5.0]
    assert sorted(g["w_cost"] for g in grid if g["enforce"] == "penalty") == [5.0, 5.0, 10.0, 10.0]


def test_pareto_front_keeps_only_undominated_points():
    pts = np.array([[0.5, 90.0], [0.5, 95.0], [0.3, 80.0], [0.7, 94.0], [1.0, 99.0], [0.6, 96.0]])
    front = set(pareto_front(pts).tolist())
    assert front == {1, 2, 4, 5}


# ---------------------------------------------------------------------------------------- several targets
def test_a_list_of_targets_is_a_tuple_and_a_single_one_keeps_its_key():
    cfg = from_mapping({"out": "o", "target": [0.3, 0.5, 0.7]})
    assert cfg.target == (0.3, 0.5, 0.7) and cfg.multi_target and cfg.targets == (0.3, 0.5, 0.7)
    one = RunConfig.preset_config("quick", out="o", target=0.5)
    assert not one.multi_target and one.targets == (0.5,) and one.target == 0.5
    # A single float hashes exactly as before lists existed, so existing runs resume unchanged.
    import hashlib
    import json

    want = hashlib.sha256(json.dumps({"target": 0.5}, sort_keys=True).encode()).hexdigest()[:12]
    assert one.key("target") == want
    assert cfg.key("sweep", "target") != one.key("sweep", "target")


def test_a_yaml_list_of_targets_maps_onto_the_config(tmp_path):
    f = tmp_path / "multi.yaml"
    f.write_text(f"extends: {ROOT / 'tune_configs' / 'full.yaml'}\ntarget: [0.3, 0.5, 0.7]\n")
    cfg = load_yaml(f, out=str(tmp_path / "o"))
    assert cfg.target == (0.3, 0.5, 0.7) and cfg.preset == "full"


@pytest.mark.parametrize("target, words", [
    ([0.5], ["run.target=(0.5,)", "at least 2 targets", "one plain number"]),
    ([0.5, 0.3], ["run.target=(0.5, 0.3)", "increasing order"]),
    ([0.3, 0.3], ["run.target=(0.3, 0.3)", "distinct"]),
    ([0.3, 1.5], ["run.target=(0.3, 1.5)", "(0, 1]", "1.5 is not one"]),
    ([0.3, "x"], ["run.target=(0.3, 'x')", "'x' is not one"]),
    ([0.3, float("nan")], ["run.target=(0.3, nan)", "(0, 1]"]),
    ([0.3, True], ["True is not one"]),
])
def test_bad_target_lists_give_one_clear_error(target, words):
    with pytest.raises(ConfigError) as e:
        from_mapping({"out": "o", "target": target})
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
