"""Fashion-MNIST IDX reader, folder lookup, checks and splits: tiny folders written here, plus the real files."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune.errors import ConfigError, DataError
from rlprune.tasks.fashion_data import (
    DEBIAN_FOLDER,
    FILES,
    MEAN,
    STD,
    fashion_splits,
    find_fashion_folder,
    images_to_tensor,
    load_fashion_mnist,
    read_idx,
)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as IDX: 0x00 0x00, type 0x08 (uint8), ndim, big-endian uint32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.tobytes()


def write_folder(folder: Path, n_train: int = 100, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    """Write a tiny Fashion-MNIST folder (labels cycle through the 10 classes); return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, stem in FILES.items():
        data = idx_bytes(arrays[role])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_tiny_folder_gz_and_raw(tmp_path: Path, gz: bool) -> None:
    arrays = write_folder(tmp_path / "fashion-mnist", gz=gz)
    train_x, train_y, test_x, test_y = load_fashion_mnist(tmp_path / "fashion-mnist")
    assert train_x.dtype == np.uint8 and train_x.shape == (100, 28, 28)
    np.testing.assert_array_equal(train_x, arrays["train_images"])
    np.testing.assert_array_equal(test_x, arrays["test_images"])
    assert train_y.dtype == np.int64 and train_y.tolist() == arrays["train_labels"].tolist()
    assert test_y.shape == (20,)
    assert train_x.flags.writeable  # torch.from_numpy must not warn about read-only memory


def test_read_idx_sniffs_gzip_not_the_name(tmp_path: Path) -> None:
    labels = np.arange(7, dtype=np.uint8)
    (tmp_path / "a.gz").write_bytes(idx_bytes(labels))  # raw bytes behind a .gz name
    (tmp_path / "b").write_bytes(gzip.compress(idx_bytes(labels)))  # gzip without the suffix
    assert read_idx(tmp_path / "a.gz").tolist() == read_idx(tmp_path / "b").tolist() == labels.tolist()


def test_folder_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("RLPRUNE_DATA", str(tmp_path / "data"))
    assert find_fashion_folder() == tmp_path / "data" / "fashion-mnist"
    # data_dir wins over $RLPRUNE_DATA, and may name the folder itself or its parent.
    write_folder(tmp_path / "other")
    assert find_fashion_folder(tmp_path / "other") == tmp_path / "other"
    assert find_fashion_folder(tmp_path / "data") == tmp_path / "data" / "fashion-mnist"
    # Without either, the Debian location; where it is absent, the error says how to install it.
    monkeypatch.delenv("RLPRUNE_DATA")
    if DEBIAN_FOLDER.is_dir():
        assert find_fashion_folder() == DEBIAN_FOLDER
    else:
        with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
            find_fashion_folder()


def test_missing_folder_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no Fashion-MNIST folder at .*nowhere; .*apt-get install dataset-fashion"):
        find_fashion_folder(tmp_path / "nowhere")
    write_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing in .*t10k-labels-idx1-ubyte\[\.gz\].*--data-dir.*RLPRUNE_DATA"):
        load_fashion_mnist(tmp_path)
    assert isinstance(DataError("x"), FileNotFoundError)


def test_bad_magic(tmp_path: Path) -> None:
    write_folder(tmp_path)
    bad = idx_bytes(np.zeros(100, dtype=np.uint8), magic=0x00000901)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bad))
    expected = r"train-labels-idx1-ubyte\.gz has IDX magic number 0x00000901, expected 0x00000801 \(labels"
    with pytest.raises(DataError, match=expected):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_and_too_long_payload(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    path = tmp_path / ("x.gz" if gz else "x")
    for payload, what in ((data[:-10], "truncated"), (data + b"\0", "too long"), (data[:10], "truncated")):
        path.write_bytes(gzip.compress(payload) if gz else payload)
        with pytest.raises(DataError, match=rf"x(\.gz)? is {what}.*replace x(\.gz)? with an intact copy"):
            read_idx(path)
    path.write_bytes(b"\0\0")
    with pytest.raises(DataError, match="4-byte header"):
        read_idx(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8)))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    for bad in (data[: len(data) // 2], data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:]):
        path.write_bytes(bad)
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is a corrupt or truncated gzip"):
            read_idx(path)


def test_count_mismatch_shape_and_label_range(tmp_path: Path) -> None:
    write_folder(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(99, dtype=np.uint8))))
    with pytest.raises(DataError, match="has 100 images but train-labels-idx1-ubyte.gz has 99 labels"):
        load_fashion_mnist(tmp_path)
    labels.write_bytes(gzip.compress(idx_bytes(np.full(100, 10, dtype=np.uint8))))
    with pytest.raises(DataError, match=r"label 10, expected 0\.\.9"):
        load_fashion_mnist(tmp_path)
    write_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((20, 32, 32)))))
    with pytest.raises(DataError, match=r"shape \(20, 32, 32\), expected \(N, 28, 28\)"):
        load_fashion_mnist(tmp_path)


def test_a_fixed_file_reads_again(tmp_path: Path) -> None:
    # Nothing is cached from a bad file: once it is replaced, the next read sees the good one.
    arrays = write_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    path.write_bytes(good[:100])
    with pytest.raises(DataError):
        load_fashion_mnist(tmp_path)
    path.write_bytes(good)
    np.testing.assert_array_equal(load_fashion_mnist(tmp_path)[0], arrays["train_images"])


def test_splits_are_balanced_disjoint_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 600)  # 6,000 images, 600 per class
    splits = fashion_splits(labels, seed=3, sizes=(5000, 500, 500))
    assert [len(splits[k]) for k in ("train", "calibration", "validation")] == [5000, 500, 500]
    for name, per_class in (("train", 500), ("calibration", 50), ("validation", 50)):
        assert np.bincount(labels[splits[name]], minlength=10).tolist() == [per_class] * 10
    everything = np.concatenate(list(splits.values()))
    assert len(np.unique(everything)) == len(everything) == 6000
    again = fashion_splits(labels, seed=3, sizes=(5000, 500, 500))
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    other = fashion_splits(labels, seed=4, sizes=(5000, 500, 500))
    assert not np.array_equal(splits["validation"], other["validation"])


def test_splits_of_unbalanced_and_small_files() -> None:
    # Unequal classes: each split takes every class in proportion, and the totals are exact.
    labels = np.repeat(np.arange(3), [500, 300, 200])
    splits = fashion_splits(labels, sizes=(800, 100, 100))
    assert np.bincount(labels[splits["validation"]]).tolist() == [50, 30, 20]
    assert np.bincount(labels[splits["train"]]).tolist() == [400, 240, 160]
    # Fewer images than requested: the default 50,000/5,000/5,000 shrink in proportion.
    small = fashion_splits(np.arange(100) % 10)
    assert [len(small[k]) for k in ("train", "calibration", "validation")] == [84, 8, 8]
    assert len(np.unique(np.concatenate(list(small.values())))) == 100
    with pytest.raises(DataError, match="holds only 5 images"):
        fashion_splits(np.arange(5))
    with pytest.raises(ConfigError, match="three positive integers"):
        fashion_splits(np.arange(100), sizes=(10, 0, 5))


def test_images_to_tensor() -> None:
    images = np.array([[[0, 255]] * 2], dtype=np.uint8)  # (1, 2, 2)
    x = images_to_tensor(images)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == pytest.approx(-MEAN / STD)
    assert images_to_tensor(torch.from_numpy(images), normalize=False).max().item() == 1.0
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        images_to_tensor(np.zeros((1, 3, 2, 2), dtype=np.uint8))


@pytest.mark.skipif(
    not DEBIAN_FOLDER.is_dir(),
    reason=f"{DEBIAN_FOLDER} is missing (apt-get install dataset-fashion-mnist; .ci/run installs it as root)",
)
def test_real_debian_files() -> None:
    start = time.perf_counter()
    train_x, train_y, test_x, test_y = load_fashion_mnist(DEBIAN_FOLDER)
    seconds = time.perf_counter() - start
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist() == [6000] * 10 and np.bincount(test_y).tolist() == [1000] * 10
    splits = fashion_splits(train_y)
    assert {k: len(v) for k, v in splits.items()} == {"train": 50000, "calibration": 5000, "validation": 5000}
    assert np.bincount(train_y[splits["validation"]]).tolist() == [500] * 10
    # The constants are the train pixels' own statistics, computed exactly from a 256-bin histogram.
    counts = np.bincount(train_x.ravel(), minlength=256)
    values = np.arange(256) / 255
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    assert mean == pytest.approx(MEAN, abs=1e-4) and std == pytest.approx(STD, abs=1e-4)
    assert seconds < 30  # ~0.3 s on an idle 2-core machine; generous for a loaded CI box
