"""Fashion-MNIST from its four IDX files: locate, read, check, split. Torch and numpy only (no Ray).

Fashion-MNIST (Xiao et al. 2017, https://github.com/zalandoresearch/fashion-mnist) is 28x28 grayscale
clothing, 10 classes, 60,000 training and 10,000 test images, shipped as four IDX files, gzipped or not::

    fashion-mnist/
        train-images-idx3-ubyte.gz   magic 0x00000803, dims (60000, 28, 28), uint8 pixels
        train-labels-idx1-ubyte.gz   magic 0x00000801, dims (60000,), uint8 labels 0..9
        t10k-images-idx3-ubyte.gz    the same for the 10,000 test images
        t10k-labels-idx1-ubyte.gz

Nothing is downloaded. On Debian ``apt-get install dataset-fashion-mnist`` puts the files in
``/usr/share/datasets/fashion-mnist``. Splits: train / calibration / validation are disjoint, class-balanced,
seeded index sets into the train file (50,000 / 5,000 / 5,000); test is the t10k file.

Every file is checked in full (magic, dims, payload length, gzip integrity, label range, counts) before
anything is returned, so a caller that caches the arrays never caches a bad file; this module caches nothing.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rlprune.errors import ConfigError, DataError

FOLDER = "fashion-mnist"
DEBIAN_FOLDER = Path("/usr/share/datasets") / FOLDER
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""Role -> file name without ``.gz`` (the gzipped name is preferred when both exist)."""
SPLIT_SIZES = (50000, 5000, 5000)
"""Train, calibration and validation images drawn from the 60,000-image train file."""
NUM_CLASSES = 10
IMAGE_SIZE = 28
# Measured on the Debian files (all 60,000 train images, pixels / 255, float64): mean 0.286041,
# std 0.353024 (population std over all 47M pixels). The test file is never used for normalisation.
MEAN = 0.2860
"""Mean pixel of the Fashion-MNIST train images in [0, 1]."""
STD = 0.3530
"""Standard deviation of the Fashion-MNIST train pixels in [0, 1]."""

_MAGIC = {0x00000801: "labels (idx1, uint8)", 0x00000803: "images (idx3, uint8)"}
_HOW_TO_GET = (
    "install it with `apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist), "
    "or download the four IDX files from https://github.com/zalandoresearch/fashion-mnist and pass "
    "--data-dir DIR or set RLPRUNE_DATA=DIR (a folder holding fashion-mnist/)"
)


def _locate(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_folder(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate the folder holding the four Fashion-MNIST IDX files.

    Args:
        data_dir: the folder itself or its parent (holding ``fashion-mnist/``). When None:
            ``$RLPRUNE_DATA/fashion-mnist`` if ``$RLPRUNE_DATA`` is set, else the Debian location
            ``/usr/share/datasets/fashion-mnist``.

    Returns:
        The folder; every one of the four files is there, gzipped or not.

    Raises:
        DataError: if the folder or one of its files is missing.
    """
    if data_dir is None:
        env = os.environ.get("RLPRUNE_DATA")
        data_dir = Path(env) / FOLDER if env else DEBIAN_FOLDER
    root = Path(data_dir).expanduser()
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    if not folder.is_dir():
        raise DataError(f"no Fashion-MNIST folder at {folder}; {_HOW_TO_GET}")
    missing = [stem + "[.gz]" for stem in FILES.values() if _locate(folder, stem) is None]
    if missing:
        raise DataError(f"Fashion-MNIST files missing in {folder}: {', '.join(missing)}; {_HOW_TO_GET}")
    return folder


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one uint8 IDX file (labels or images), gzipped or raw, and check it in full.

    Args:
        path: an IDX file; it is treated as gzip when it starts with the gzip magic bytes.

    Returns:
        A writable uint8 array shaped by the file's dims, e.g. ``(60000, 28, 28)`` or ``(60000,)``.

    Raises:
        DataError: if the file is missing, a corrupt or truncated gzip, has an unknown magic number, or its
            payload is shorter or longer than its dims say.
    """
    path = Path(path)
    fix = f"replace {path.name} with an intact copy: {_HOW_TO_GET}"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); {fix}") from e
    # Sniff the content rather than trust the name: a renamed raw file still reads, a renamed gz too.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({type(e).__name__}: {e}); {fix}") from e
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: {len(raw)} bytes, expected at least a 4-byte header; {fix}")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _MAGIC:
        expected = " or ".join(f"0x{m:08x} ({what})" for m, what in _MAGIC.items())
        raise DataError(f"{path} has IDX magic number 0x{magic:08x}, expected {expected}; {fix}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header; {fix}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_bytes = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_bytes:
        problem = "truncated" if len(raw) < expected_bytes else "too long"
        raise DataError(
            f"{path} is {problem}: dims {dims} need {expected_bytes} bytes, got {len(raw)}; {fix}"
        )
    # Copy out of the immutable bytes so torch.from_numpy gets a writable array.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _locate(folder, FILES[f"{split}_images"])
    labels_path = _locate(folder, FILES[f"{split}_labels"])
    if images_path is None or labels_path is None:  # removed since find_fashion_folder looked
        raise DataError(f"Fashion-MNIST {split} files missing in {folder}; {_HOW_TO_GET}")
    images, labels = read_idx(images_path), read_idx(labels_path)
    fix = f"re-install or re-download the data: {_HOW_TO_GET}"
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images_path} holds arrays of shape {images.shape}, expected (N, 28, 28) images; {fix}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds arrays of shape {labels.shape}, expected (N,) labels; {fix}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels "
            f"in {folder}; {fix}"
        )
    if len(labels) == 0:
        raise DataError(f"{images_path} holds no images; {fix}")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path} has label {labels.max()}, expected 0..{NUM_CLASSES - 1}; {fix}")
    return images, labels.astype(np.int64)


def load_fashion_mnist(
    folder: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and check all four Fashion-MNIST files.

    Args:
        folder: passed to :func:`find_fashion_folder` (the folder, its parent, or None for the defaults).

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``;
        60,000 and 10,000 images for the real data set.

    Raises:
        DataError: if a file is missing or bad (see :func:`read_idx`), images are not 28x28, labels fall
            outside 0..9, or a labels file does not count as many entries as its images file.
    """
    folder = find_fashion_folder(folder)
    train_x, train_y = _read_pair(folder, "train")
    test_x, test_y = _read_pair(folder, "test")
    return train_x, train_y, test_x, test_y


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder, ties to lower index)."""
    # Integer arithmetic: float remainders would break ties (e.g. 83.33 vs 8.33) by rounding noise.
    weights = np.asarray(weights, dtype=np.int64)
    out, remainder = np.divmod(total * weights, weights.sum())
    order = np.argsort(-remainder, kind="stable")
    out[order[: total - out.sum()]] += 1
    return out


def fashion_splits(
    labels: np.ndarray, seed: int = 0, sizes: Sequence[int] = SPLIT_SIZES
) -> dict[str, np.ndarray]:
    """Class-balanced, seeded, disjoint train / calibration / validation indices into the train file.

    Each class contributes to each split in proportion to its share of ``labels`` (exactly 5,000 / 500 /
    500 per class on the real data). When the file holds fewer images than ``sum(sizes)`` (tiny test
    files), the sizes shrink in proportion to fit it; images beyond ``sum(sizes)`` are left unused.

    Args:
        labels: integer class labels of the train file, ``(N,)``.
        seed: seeds the per-class shuffles; the same labels and seed always give the same splits.
        sizes: ``(train, calibration, validation)`` sizes, positive integers.

    Returns:
        ``{"train", "calibration", "validation"}`` -> sorted int64 index arrays.

    Raises:
        ConfigError: if ``sizes`` is not three positive integers.
        DataError: if ``labels`` is too small to give every split at least one image.
    """
    sizes = tuple(sizes)
    if len(sizes) != 3 or any(not isinstance(s, int | np.integer) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ConfigError(f"sizes must be three positive integers (train, calibration, validation), got {sizes!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise DataError(f"labels must be a 1-D array of non-negative integers, got {labels.dtype} {labels.shape}")
    n = len(labels)
    want = np.asarray(sizes, dtype=np.int64)
    if want.sum() > n:
        want = _apportion(n, want)
    if (want < 1).any():
        raise DataError(
            f"the Fashion-MNIST train file holds only {n} images, too few for train/calibration/validation "
            f"splits of {sizes} (scaled to {tuple(int(w) for w in want)}); {_HOW_TO_GET}"
        )
    # A fourth, unused part takes the leftover images, so every class's parts sum to its count. Splits are
    # carved in order, each proportional to what every class has left: the rounding never overdraws a class.
    parts = np.append(want, n - want.sum())
    classes, counts = np.unique(labels, return_counts=True)
    left = counts.copy()
    table = np.zeros((len(classes), len(parts)), dtype=np.int64)
    for k, size in enumerate(parts):
        table[:, k] = _apportion(int(size), left) if size else 0
        left -= table[:, k]
    rng = np.random.default_rng(seed)
    chunks: list[list[np.ndarray]] = [[] for _ in parts]
    for c, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum(table[c])
        for k, piece in enumerate(np.split(idx, bounds[:-1])):
            chunks[k].append(piece)
    names = ("train", "calibration", "validation")
    return {name: np.sort(np.concatenate(chunks[k])).astype(np.int64) for k, name in enumerate(names)}


def images_to_tensor(images: np.ndarray | torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Turn uint8 images into the float input of the models: ``(N, 1, 28, 28)``.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, 1, H, W)``, numpy or torch.
        normalize: subtract :data:`MEAN` and divide by :data:`STD` after scaling to [0, 1].

    Returns:
        A float32 tensor ``(N, 1, H, W)``.

    Raises:
        ValueError: if the images are not uint8 or not 3-D / single-channel 4-D.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 pixels, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    x = x.float().div_(255.0)
    return x.sub_(MEAN).div_(STD) if normalize else x


__all__ = [
    "DEBIAN_FOLDER",
    "FILES",
    "MEAN",
    "SPLIT_SIZES",
    "STD",
    "find_fashion_folder",
    "fashion_splits",
    "images_to_tensor",
    "load_fashion_mnist",
    "read_idx",
]
