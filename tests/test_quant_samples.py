"""The bits sample store and bits samples measured on Ray Tune: durable, deduplicated, resumable, and equal to
the same measurements made in one process."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rlprune.errors import SampleStoreError
from rlprune.quant.samples import BITS_COLUMNS, append_bits, bits_sample_id, open_bits_store, read_bits


def _row(bits, fp="m1", acc=90.0, worker="w"):
    return {"sample_id": bits_sample_id(fp, "calibration", None, bits), "bits": list(bits), "size_ratio": 0.2,
            "acc": acc, "ref_acc": 95.0, "acc_drop": 95.0 - acc, "model_fingerprint": fp, "split": "calibration",
            "max_batches": -1, "worker": worker, "created_at": "2026-12-01T00:00:00.000+00:00"}


def test_rows_are_stored_once_and_read_back_per_model(tmp_path):
    store = tmp_path / "bits"
    assert append_bits(store, [_row([4, 4, 8]), _row([2, 8, 8]), _row([4, 4, 8])]) == 2
    assert append_bits(store, [_row([4, 4, 8]), _row([3, 3, 3], fp="m2")]) == 1
    df = read_bits(store)
    assert list(df.columns) == list(BITS_COLUMNS) and len(df) == 3 and df["sample_id"].is_unique
    one = read_bits(store, fingerprint="m1")
    assert [b.tolist() for b in one["bits"]] == [[4, 4, 8], [2, 8, 8]] and one["bits"][0].dtype == np.int64
    assert one["acc_drop"].tolist() == [5.0, 5.0]
    # The id names the model, the images and the vector, nothing else.
    assert bits_sample_id("m1", "calibration", None, [4, 4, 8]) == bits_sample_id("m1", "calibration", -1, (4, 4, 8))
    assert bits_sample_id("m1", "calibration", 2, [4, 4, 8]) != bits_sample_id("m1", "calibration", None, [4, 4, 8])


def test_bad_rows_write_nothing_and_name_the_fix(tmp_path):
    store = tmp_path / "bits"
    append_bits(store, [_row([4, 4, 8])])
    before = sorted((store / "shards").iterdir())
    with pytest.raises(SampleStoreError, match="non-finite accuracy"):
        append_bits(store, [_row([2, 2, 2]), _row([3, 3, 3], acc=float("nan"))])
    with pytest.raises(SampleStoreError, match="rows need exactly"):
        append_bits(store, [{k: v for k, v in _row([2, 2, 2]).items() if k != "ref_acc"}])
    assert sorted((store / "shards").iterdir()) == before and len(read_bits(store)) == 1


def test_a_corrupt_shard_is_skipped_with_a_warning_and_left_in_place(tmp_path):
    store = tmp_path / "bits"
    append_bits(store, [_row([4, 4, 8])])
    append_bits(store, [_row([2, 2, 2])])
    torn = sorted((store / "shards").iterdir())[-1]
    torn.write_bytes(torn.read_bytes()[:40])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_bits(store)
    assert len(df) == 1 and any(torn.name in str(w.message) for w in caught)
    assert torn.exists()
    assert append_bits(store, [_row([2, 2, 2])]) == 1  # measured again, into a new shard


def test_folders_that_are_not_bits_stores_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SampleStoreError, match="is a file"):
        open_bits_store(tmp_path / "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SampleStoreError, match="not empty"):
        append_bits(tmp_path / "other", [_row([4, 4, 8])])
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]
    (tmp_path / "prune").mkdir()
    (tmp_path / "prune" / "manifest.json").write_text('{"schema_version": 2, "columns": []}')
    with pytest.raises(SampleStoreError, match="not a version-1 bits sample store"):
        read_bits(tmp_path / "prune")
    with pytest.raises(SampleStoreError, match="no bits sample store"):
        read_bits(tmp_path / "missing")


@pytest.mark.slow
def test_tune_measures_what_one_process_measures_and_a_rerun_only_what_is_missing(digits_task, ray_cluster,
                                                                                    tmp_path):
    from rlprune.quant.size import QuantSpace
    from rlprune.quant.tune_samples import measure_on_tune
    from rlprune.quant.worldmodel import measure_drops, random_bits

    model = digits_task.base_model()
    B = random_bits(QuantSpace.from_model(model), 10, seed=4)
    local = measure_drops(digits_task, model, B)
    store = tmp_path / "bits"
    first = measure_on_tune("digits", {"seed": 0}, None, B[:6], store, workers=2, flush_every=2, progress=False)
    assert first["n_new"] == 6 and first["placement"]["trials"] == 2
    assert np.array_equal(first["drops"], local[:6])
    df = read_bits(store)
    assert len(df) == 6 and df["worker"].nunique() == 2 and (df["split"] == "calibration").all()
    assert len(list((store / "shards").glob("*.parquet"))) >= 3  # flushed every 2 rows, not at the end
    again = measure_on_tune("digits", {"seed": 0}, None, B, store, workers=2, progress=False)
    assert again["n_new"] == 4 and again["n_total"] == 10
    assert np.array_equal(again["drops"], local)  # in B's order, the stored six read back
    none = measure_on_tune("digits", {"seed": 0}, None, B, store, workers=2, progress=False)
    assert none["n_new"] == 0 and none["placement"] is None
