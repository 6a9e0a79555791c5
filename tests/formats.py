"""Writers for tiny datasets in the real on-disk formats, so tests exercise the real readers offline.

Each writer takes images as uint8 (N, H, W) or (N, H, W, C) and labels 0..C-1, the way the readers return
them, and stores them the way the original distribution does.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def synthetic_images(n: int, shape: tuple[int, ...], num_classes: int = 10, seed: int = 0):
    """(images, labels) a small model can learn: noise plus a bright band whose position encodes the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.integers(0, 64, size=(n, *shape), dtype=np.uint8)
    band = max(1, shape[0] // num_classes)
    for i, label in enumerate(labels):
        start = (label * shape[0]) // num_classes
        images[i, start:start + band] = 200
    return images, labels.astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An unsigned-byte IDX file (magic 0x08 type, then ndim), gzipped when the name ends in .gz."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_mnist(folder: Path, train: tuple, test: tuple, gz: bool = True) -> Path:
    """The four MNIST / Fashion-MNIST files (train-images-idx3-ubyte[.gz], ...) in `folder`."""
    for split, (images, labels) in (("train", train), ("test", test)):
        image_name, label_name = MNIST_NAMES[split]
        write_idx(folder / (image_name + ".gz" * gz), images)
        write_idx(folder / (label_name + ".gz" * gz), np.asarray(labels, np.uint8))
    return folder


def write_cifar_batch(path: Path, images: np.ndarray, labels, label_key: str = "labels") -> Path:
    """A CIFAR python batch: a dict with bytes keys holding a (N, 3072) channel-planar uint8 array.

    Written with protocol 2 and numpy's historical module name, like the Python 2 pickles of the real files.
    """
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
    batch = {b"batch_label": b"testing batch", label_key.encode(): [int(v) for v in labels], b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def write_svhn_mat(path: Path, images: np.ndarray, labels) -> Path:
    """SVHN's cropped-digit .mat: X is (32, 32, 3, N), y is (N, 1) with digit 0 stored as 10."""
    from scipy.io import savemat

    labels = np.asarray(labels).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": np.where(labels == 0, 10, labels).astype(np.uint8)})
    return path


def write_stl10_split(folder: Path, split: str, images: np.ndarray, labels) -> Path:
    """STL-10's {split}_X.bin (column-major 3x96x96 uint8 per image) and {split}_y.bin (labels 1..10)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())
    (folder / f"{split}_y.bin").write_bytes((np.asarray(labels) + 1).astype(np.uint8).tobytes())
    return folder


def write_png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
