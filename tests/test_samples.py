"""The sample store: round trip, dedup, corrupt shards, bad rows, foreign schemas, space records."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from rlprune.errors import SampleStoreError
from rlprune.measure.spec import MeasureSpec
from rlprune.models import digits_resnet
from rlprune.samples.spaces import read_spaces, space_record, write_space
from rlprune.samples.store import SAMPLE_COLUMNS, SCHEMA_VERSION, append_samples, now_iso, read_samples, sample_id
from rlprune.space.pruning import FEATURE_NAMES, PruningSpace

SPEC = MeasureSpec()


def make_row(i: int, fp: str = "f" * 16, task: str = "digits", spec: MeasureSpec = SPEC, **over) -> dict:
    ratios = [0.1 * (i % 9), 0.05 * (i % 7), 0.3]
    row = {
        "sample_id": sample_id(task, fp, spec.label_id(), ratios),
        "ratios": ratios,
        "requested_ratios": [r + 0.001 for r in ratios],
        "params_ratio": 0.5,
        "macs_ratio": 0.4,
        "acc": 90.0 - i,
        "acc_drop": 9.0 + i,
        "loss": 0.3,
        "latency_ms": 1.5,
        "eval_s": 0.2,
        "task": task,
        "model_fingerprint": fp,
        "measure_id": spec.label_id(),
        "measure": spec.label_json(),
        "sampler": "uniform",
        "worker": "w0",
        "created_at": now_iso(),
    }
    row.update(over)
    return row


def shards(store):
    return sorted((store / "shards").glob("*.parquet"))


def test_round_trip(tmp_path):
    store = tmp_path / "s"
    rows = [make_row(i) for i in range(5)]
    assert append_samples(store, rows) == 5
    assert json.loads((store / "manifest.json").read_text()) == {"schema_version": SCHEMA_VERSION,
                                                                "columns": list(SAMPLE_COLUMNS)}
    df = read_samples(store)
    assert list(df.columns) == list(SAMPLE_COLUMNS)
    assert len(df) == 5
    assert df["sample_id"].tolist() == [r["sample_id"] for r in rows]
    np.testing.assert_allclose(np.stack(df["ratios"]), np.array([r["ratios"] for r in rows]))
    np.testing.assert_allclose(df["acc"], [r["acc"] for r in rows])
    assert set(df["measure_id"]) == {SPEC.label_id()} and json.loads(df.loc[0, "measure"]) == SPEC.label()
    assert df.loc[2, "task"] == "digits" and df.loc[2, "worker"] == "w0"


def test_dedup_within_and_across_appends(tmp_path):
    store = tmp_path / "s"
    assert append_samples(store, [make_row(0), make_row(1), make_row(1)]) == 2
    assert append_samples(store, [make_row(1), make_row(2)]) == 1
    assert append_samples(store, [make_row(2)]) == 0  # nothing new: no shard written
    assert len(shards(store)) == 2
    assert read_samples(store)["sample_id"].is_unique
    assert len(read_samples(store)) == 3


def test_sample_id_uses_achieved_ratios_rounded_and_settings():
    mid = SPEC.label_id()
    base = sample_id("digits", "fp", mid, [0.25, 0.5])
    assert len(base) == 16
    assert sample_id("digits", "fp", mid, np.array([0.25 + 1e-9, 0.5])) == base
    others = [MeasureSpec(importance="l2"), MeasureSpec(recalibrate=False), MeasureSpec(bn_batches=8),
              MeasureSpec(eval_batches=2), MeasureSpec(round_to=4)]
    for other in (sample_id("cifar10", "fp", mid, [0.25, 0.5]),
                  sample_id("digits", "fq", mid, [0.25, 0.5]),
                  sample_id("digits", "fp", mid, [0.25, 0.51]),
                  *(sample_id("digits", "fp", s.label_id(), [0.25, 0.5]) for s in others)):
        assert other != base
    # Settings that only change validation (fine-tune, latency) do not make a label a different sample.
    assert MeasureSpec(finetune_steps=7, finetune_lr=0.1, latency_runs=3, max_ratio=0.8).label_id() == mid


def test_rows_of_another_spec_are_set_aside_with_a_reason(tmp_path):
    other = MeasureSpec(importance="l2", eval_batches=2)
    append_samples(tmp_path, [make_row(i) for i in range(3)] + [make_row(i, spec=other) for i in range(2)])
    assert len(read_samples(tmp_path)) == 5  # no spec asked: everything, as stored
    with pytest.warns(RuntimeWarning, match=r"2 sample\(s\) measured under other specs.*l2.*only the 3"):
        df = read_samples(tmp_path, measure=SPEC)
    assert len(df) == 3 and set(df["measure_id"]) == {SPEC.label_id()}
    with pytest.warns(RuntimeWarning, match="3 sample"):
        assert len(read_samples(tmp_path, measure=other)) == 2


def test_filters_by_fingerprint_and_task(tmp_path):
    append_samples(tmp_path, [make_row(i, fp="a" * 16) for i in range(3)]
                   + [make_row(i, fp="b" * 16, task="cifar10") for i in range(2)])
    assert len(read_samples(tmp_path)) == 5
    assert len(read_samples(tmp_path, fingerprint="a" * 16)) == 3
    assert len(read_samples(tmp_path, task="cifar10")) == 2
    assert len(read_samples(tmp_path, fingerprint="a" * 16, task="cifar10")) == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_shard_is_skipped_with_a_warning_and_kept(tmp_path, damage):
    append_samples(tmp_path, [make_row(0), make_row(1)])
    append_samples(tmp_path, [make_row(2), make_row(3)])
    bad = shards(tmp_path)[1]
    data = bad.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not parquet" * 10, "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match=bad.name):
        df = read_samples(tmp_path)
    assert sorted(df["acc"]) == [89.0, 90.0]
    assert bad.exists()
    # appending still works next to the damaged shard, and it is still not deleted
    with pytest.warns(RuntimeWarning, match=bad.name):
        assert append_samples(tmp_path, [make_row(4)]) == 1
    assert bad.exists()


def test_temp_files_of_a_killed_writer_are_ignored(tmp_path):
    append_samples(tmp_path, [make_row(0)])
    (tmp_path / "shards" / ".x.parquet.abc.tmp").write_bytes(b"half a shard")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_samples(tmp_path)) == 1


@pytest.mark.parametrize("bad, match", [
    ({"acc": math.nan}, "acc"),
    ({"acc": None}, "acc"),
    ({"ratios": [0.1, math.inf, 0.3]}, "ratios"),
    ({"requested_ratios": [0.1]}, "ratios"),
    ({"extra": 1}, "unknown columns"),
])
def test_bad_rows_are_rejected_and_nothing_is_written(tmp_path, bad, match):
    append_samples(tmp_path, [make_row(0)])
    before = shards(tmp_path)
    with pytest.raises(SampleStoreError, match=match):
        append_samples(tmp_path, [make_row(1), make_row(2, **bad)])
    assert shards(tmp_path) == before
    assert len(read_samples(tmp_path)) == 1


def test_missing_column_is_rejected(tmp_path):
    row = make_row(0)
    del row["latency_ms"]
    with pytest.raises(SampleStoreError, match="latency_ms"):
        append_samples(tmp_path / "s", [row])
    assert not (tmp_path / "s" / "shards").exists() or not shards(tmp_path / "s")


def test_empty_store_reads_as_empty_frame(tmp_path):
    assert append_samples(tmp_path, []) == 0
    df = read_samples(tmp_path)
    assert len(df) == 0 and list(df.columns) == list(SAMPLE_COLUMNS)


def test_other_schema_and_non_stores_are_rejected_untouched(tmp_path):
    foreign = tmp_path / "old"
    foreign.mkdir()
    manifest = json.dumps({"schema_version": 99, "columns": ["x"]})
    (foreign / "manifest.json").write_text(manifest)
    for call in (lambda: read_samples(foreign), lambda: append_samples(foreign, [make_row(0)])):
        with pytest.raises(SampleStoreError, match="schema version 99.*new --out"):
            call()
    assert (foreign / "manifest.json").read_text() == manifest
    assert not (foreign / "shards").exists()

    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    with pytest.raises(SampleStoreError, match="not a sample store"):
        append_samples(other, [make_row(0)])
    assert sorted(p.name for p in other.iterdir()) == ["readme.txt"]

    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    with pytest.raises(SampleStoreError, match="is a file"):
        read_samples(a_file)
    with pytest.raises(SampleStoreError, match="no sample store"):
        read_samples(tmp_path / "missing")
    assert a_file.read_text() == "keep me"


def test_space_records_round_trip(tmp_path):
    space = PruningSpace.from_model(digits_resnet(), torch.zeros(1, 1, 32, 32))
    spec = MeasureSpec(importance="l2")
    rec = space_record("digits", space, 99.0, 0.05, "c" * 16, spec)
    assert rec["n_groups"] == space.n_groups == len(rec["features"]) == len(rec["group_ids"])
    assert rec["feature_names"] == list(FEATURE_NAMES)
    path = write_space(tmp_path, rec)
    mtime = path.stat().st_mtime_ns
    write_space(tmp_path, json.loads(json.dumps(rec)))  # identical: not rewritten
    assert path.stat().st_mtime_ns == mtime
    got = read_spaces(tmp_path)
    assert list(got) == ["c" * 16]
    assert got["c" * 16]["measure"]["importance"] == "l2" and got["c" * 16]["base_acc"] == 99.0
    assert path.name == f"{'c' * 16}-{spec.label_id()}.json"
    assert list(read_spaces(tmp_path, measure=spec)) == ["c" * 16]
    assert read_spaces(tmp_path, measure=MeasureSpec()) == {}  # recorded under another spec only
    from rlprune.space.costmodel import CostModel

    cm = CostModel.from_dict(got["c" * 16]["cost_model"])
    R = np.full((1, space.n_groups), 0.3)
    np.testing.assert_allclose(cm.cost_batch(R), space.cost_model.cost_batch(R))
    (tmp_path / "spaces" / "broken.json").write_text("{")
    with pytest.warns(RuntimeWarning, match="broken.json"):
        assert list(read_spaces(tmp_path)) == ["c" * 16]


def test_labels_carry_the_measuring_code_version(tmp_path):
    from rlprune.measure.spec import MEASURE_CODE, source_hash

    assert SPEC.label()["code"] == source_hash(*MEASURE_CODE) and len(SPEC.label()["code"]) == 12
    for name, text in (("a", "x = 1\n"), ("b", "x = 1\n"), ("c", "x = 2\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.py").write_text(text)
    assert source_hash(tmp_path / "a") == source_hash(tmp_path / "b") != source_hash(tmp_path / "c")



# ---------------------------------------------------------------------------------------- fidelities
def _other_code(spec: MeasureSpec) -> dict:
    """The spec's row fields as if its label had been measured by other code (another ``code`` hash)."""
    label = {**spec.label(), "code": "0" * 12}
    text = json.dumps(label, sort_keys=True)
    mid = "c0de" * 3
    return {"measure_id": mid, "measure": text}


def test_across_fidelities_reads_only_labels_that_differ_in_their_fine_tune(tmp_path):
    k0, k10, k25 = SPEC, MeasureSpec(label_steps=10), MeasureSpec(label_steps=25)
    fast_lr = MeasureSpec(label_steps=10, finetune_lr=0.05)  # another label fine-tune rate: another label
    l2 = MeasureSpec(importance="l2", label_steps=10)
    bn = MeasureSpec(bn_batches=2)
    rows = [make_row(i, spec=s) for s in (k0, k10, k25) for i in range(3)]
    rows += [make_row(i, spec=s) for s in (fast_lr, l2, bn) for i in range(2)]
    rows += [make_row(i, sample_id=f"code{i}", **_other_code(k10)) for i in range(2)]
    append_samples(tmp_path, rows)
    assert len({r["measure_id"] for r in rows}) == 7

    with pytest.warns(RuntimeWarning, match=r"14 sample\(s\) measured under other specs"):
        df = read_samples(tmp_path, measure=SPEC)  # the default: one label only
    assert set(df["measure_id"]) == {k0.label_id()}

    for measure in (SPEC, k25, k10.label_id(), k25.label_id()):  # any fidelity of the spec names the family
        with pytest.warns(RuntimeWarning, match=r"8 sample\(s\) measured under other specs.*only the 9"):
            df = read_samples(tmp_path, measure=measure, across_fidelities=True)
        assert set(df["measure_id"]) == {k0.label_id(), k10.label_id(), k25.label_id()}, measure
        assert sorted(json.loads(m).get("label_steps", 0) for m in df["measure"]) == [0] * 3 + [10] * 3 + [25] * 3
    with pytest.warns(RuntimeWarning):  # the other rate's family member is its own 10-step label
        df = read_samples(tmp_path, measure=MeasureSpec(finetune_lr=0.05), across_fidelities=True)
    assert set(df["measure_id"]) == {k0.label_id(), fast_lr.label_id()}
    # The id of a 0-step label names no rate, and two 10-step labels of the family then compete.
    with pytest.raises(SampleStoreError, match="2 labels of label_steps=10"):
        read_samples(tmp_path, measure=k0.label_id(), across_fidelities=True)
    with pytest.warns(RuntimeWarning):  # other importance: its own family, never the l1 labels
        assert set(read_samples(tmp_path, measure=l2, across_fidelities=True)["measure_id"]) == {l2.label_id()}
    with pytest.warns(RuntimeWarning):  # other code: its own family too
        assert set(read_samples(tmp_path, measure="c0de" * 3, across_fidelities=True)["measure_id"]) == {"c0de" * 3}
