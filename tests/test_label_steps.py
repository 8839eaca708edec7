"""Labels at a chosen fidelity: ``MeasureSpec.label_steps``, its label id, its real fine-tune, its errors."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from pathlib import Path

import pytest

from rlprune.cli.common import add_measure_args, add_task_args, measure_spec
from rlprune.errors import ConfigError
from rlprune.measure.recipe import evaluate_ratios, measure_baseline, prune_and_score
from rlprune.measure.spec import LABEL_FIELDS, TASK_LABEL_STEPS, MeasureSpec
from rlprune.pipeline.config import from_mapping
from rlprune.search.rl import _evaluate
from rlprune.spn.nets import one_thread

ROOT = Path(__file__).resolve().parents[1]

FAST = MeasureSpec(eval_batches=1, bn_batches=2)


def test_label_steps_are_part_of_the_label_id():
    """Samples of another fidelity are filed under another id; the validation fine-tune never changes it."""
    assert "label_steps" in LABEL_FIELDS
    ids = {MeasureSpec(label_steps=k).label_id() for k in (0, 10, 25)}
    assert len(ids) == 3
    assert json.loads(MeasureSpec(label_steps=10).label_json())["label_steps"] == 10
    # The label fine-tune's rate is the spec's finetune_lr: part of the label only while there are steps.
    assert MeasureSpec(label_steps=10, finetune_lr=0.1).label_id() != MeasureSpec(label_steps=10).label_id()
    assert MeasureSpec(finetune_lr=0.1, finetune_steps=7).label_id() == MeasureSpec().label_id()
    assert MeasureSpec(label_steps=10, finetune_steps=7).label_id() == MeasureSpec(label_steps=10).label_id()


@pytest.fixture(scope="module")
def pruned_setup(digits_task):
    model = digits_task.base_model()
    space = FAST.space_of(model, digits_task.example_input())
    return space, measure_baseline(digits_task, model, FAST), [0.6] * space.n_groups


def test_a_label_with_steps_really_fine_tunes_and_is_deterministic(digits_task, pruned_setup):
    """k > 0 scores a fine-tuned copy (another accuracy and loss than k = 0), the same for the same seed, and
    stores its fidelity in the row."""
    space, base, ratios = pruned_setup
    tuned = dataclasses.replace(FAST, label_steps=15)
    with one_thread():
        plain = evaluate_ratios(digits_task, space, ratios, base, FAST)
        first = evaluate_ratios(digits_task, space, ratios, base, tuned)
        again = evaluate_ratios(digits_task, space, ratios, base, tuned)
    assert first["loss"] < plain["loss"]  # 15 SGD steps on a model pruned by 60% lower its loss
    assert (first["acc"], first["loss"]) != (plain["acc"], plain["loss"])
    assert (again["acc"], again["loss"]) == (first["acc"], first["loss"])
    assert json.loads(first["measure"])["label_steps"] == 15 and first["measure_id"] == tuned.label_id()
    assert first["sample_id"] != plain["sample_id"] and first["ratios"] == plain["ratios"]


def test_online_workers_measure_the_label_the_spec_names(digits_task, pruned_setup):
    """An online round's (and the AMC-style reward's) real evaluation gets the spec's label fine-tune: the
    spec survives the trip to a worker as a dict."""
    space, base, ratios = pruned_setup
    tuned = dataclasses.replace(FAST, label_steps=5)
    with one_thread():
        [row] = _evaluate("digits", {"seed": 0}, [ratios], base.to_dict(), tuned.to_dict(), "w-0")
        direct = evaluate_ratios(digits_task, space, ratios, base, tuned)
    assert (row["acc"], row["loss"], row["measure_id"]) == (direct["acc"], direct["loss"], tuned.label_id())


def test_label_steps_leave_the_validation_fine_tune_alone(digits_task, pruned_setup):
    space, _, ratios = pruned_setup
    spec = dataclasses.replace(FAST, finetune_steps=5)
    with one_thread():
        scores = [prune_and_score(digits_task, space, ratios, dataclasses.replace(spec, label_steps=k),
                                  finetune=True, split="validation")[1] for k in (0, 20)]
    assert scores[0]["acc"] == scores[1]["acc"] and scores[0]["loss"] == scores[1]["loss"]
    with pytest.raises(ValueError, match="not both"):
        prune_and_score(digits_task, space, ratios, spec, finetune=True, label=True)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_bad_label_steps_is_one_clear_error(bad):
    with pytest.raises(ConfigError) as e:
        MeasureSpec(label_steps=bad)
    msg = str(e.value)
    assert msg.startswith(f"measure.label_steps={bad!r} is invalid") and "an integer >= 0" in msg


def test_label_steps_from_the_command_line_and_yaml():
    """``--label-steps`` and a YAML ``measure: {label_steps: K}`` set the field; a bad value names the flag."""
    p = argparse.ArgumentParser()
    add_measure_args(p)
    assert measure_spec(p.parse_args(["--label-steps", "25"])).label_steps == 25
    assert measure_spec(p.parse_args([])).label_steps == 0
    with pytest.raises(ConfigError, match=r"^--label-steps -3 is invalid; use an integer >= 0"):
        measure_spec(p.parse_args(["--label-steps", "-3"]))
    cfg = from_mapping({"out": "runs/x", "measure": {"label_steps": 25}})
    assert cfg.measure.label_steps == 25
    # The samples stage's key covers the label, so a run at another fidelity measures its samples again.
    assert cfg.key("measure_label") != from_mapping({"out": "runs/x"}).key("measure_label")
    with pytest.raises(ConfigError, match=r"measure\.label_steps=-1 is invalid"):
        from_mapping({"out": "runs/x", "measure": {"label_steps": -1}})


def test_a_built_in_task_starts_from_its_studied_label(monkeypatch):
    """The CLI and a run config start a studied task from its chosen label; a flag or a YAML value wins; a task
    nobody studied starts from 0 (a table value of 7 stands in for a study's choice, so 0 cannot pass by luck)."""
    monkeypatch.setitem(TASK_LABEL_STEPS, "fashion-mnist", 7)
    p = argparse.ArgumentParser()
    add_task_args(p)
    add_measure_args(p)
    assert measure_spec(p.parse_args(["--task", "fashion-mnist"])).label_steps == 7
    assert measure_spec(p.parse_args(["--task", "fashion-mnist", "--label-steps", "0"])).label_steps == 0
    assert measure_spec(p.parse_args(["--task", "cifar10"])).label_steps == 0  # not studied: adaptive BN
    assert from_mapping({"out": "runs/x", "task": "fashion-mnist"}).measure.label_steps == 7
    given = {"out": "runs/x", "task": "fashion-mnist", "measure": {"label_steps": 10}, "preset": "full"}
    assert from_mapping(given).measure.label_steps == 10
    assert from_mapping({"out": "runs/x"}).measure.label_steps == TASK_LABEL_STEPS["digits"]  # the default task
    assert "studied label, digits 0, fashion-mnist 7;" in " ".join(p.format_help().split())  # --help says so


def test_each_studied_default_is_the_label_its_study_chose(monkeypatch):
    """A default label is the one issue 15's rule picks from the task's committed study rows, not a guess, and
    every architecture a task was studied on picks the same (else the default would have to be per network).

    The study's rows (benchmarks/results/raw/label_fidelity_*) are the data the README's tables were made from;
    the SPN learns accuracy labels, so the choice is among the accuracy labels."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import label_fidelity_tables as tables

    studies = {"digits": ["label_fidelity_digits"],
               "fashion-mnist": ["label_fidelity_fashionmnist_resnet20", "label_fidelity_fashionmnist_resnet56"]}
    assert set(TASK_LABEL_STEPS) <= set(studies)  # a task gets a default only from a committed study
    for task, folder in ((t, f) for t in TASK_LABEL_STEPS for f in studies[t]):
        files = sorted((ROOT / "benchmarks/results/raw" / folder).glob("t*-v*.json"))  # one row per vector
        rows = [json.loads(f.read_text()) for f in files]
        per_target = collections.Counter(r["target"] for r in rows)
        assert len(per_target) == 3 and min(per_target.values()) >= 16, f"{folder}: the study is incomplete"
        summary = [s for s in tables.summarise(rows) if s["metric"] == "acc"]
        best = tables.cheapest(summary)
        assert best is not None and TASK_LABEL_STEPS[task] == best["k"], (folder, best)
