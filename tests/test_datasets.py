"""The dataset readers against tiny files in the real on-disk formats (no network, no real data needed)."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from harness.data import DatasetError
from harness.plugins import Registry
from plugins import datasets
from tests.formats import (synthetic_images, write_cifar_batch, write_idx, write_mnist, write_png, write_stl10_split,
                           write_svhn_mat)

REGISTRY = Registry(strict=True)
REGISTRY.add(datasets, name="datasets")


def params(name: str, **given) -> dict:
    """The parameters a config would give the dataset: declared defaults, validated overrides."""
    return REGISTRY.get("dataset", name).resolve(given, name)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """Hide the system's Fashion-MNIST so "not found" paths are reachable."""
    monkeypatch.setattr(datasets, "debian_fashion_mnist_dirs", lambda: (tmp_path / "no-debian",))


def test_every_registered_factory_resolves():
    for spec in REGISTRY.all("dataset"):
        assert callable(spec.load()), spec.name
        spec.resolve({}, spec.name)  # every default passes its own schema
    assert {s.name for s in REGISTRY.all("dataset")} == {"fashion-mnist", "mnist", "digits", "cifar10", "cifar100",
                                                         "svhn", "stl10", "image-folder"}


# -- IDX -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subdir, gz", [(".", True), ("fashion-mnist", False), ("FashionMNIST/raw", True)])
def test_fashion_mnist_from_data_root_layouts(tmp_path, subdir, gz):
    train, test = synthetic_images(40, (28, 28)), synthetic_images(20, (28, 28), seed=1)
    write_mnist(tmp_path / subdir, train, test, gz=gz)
    raw = datasets.load_fashion_mnist(params("fashion-mnist"), data_root=tmp_path, image_size=28)
    assert raw.train_x.shape == (40, 28, 28) and raw.test_x.shape == (20, 28, 28)
    assert raw.train_x.dtype == np.uint8 and raw.train_y.dtype == np.int64
    np.testing.assert_array_equal(raw.train_x, train[0])
    np.testing.assert_array_equal(raw.test_y, test[1])
    assert raw.num_classes == 10 and raw.mean == (0.2860,)


def test_mnist_reads_torchvision_layout_and_limits_stratified(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", synthetic_images(100, (28, 28)), synthetic_images(50, (28, 28)), gz=False)
    raw = datasets.load_mnist(params("mnist", limit_train=30, limit_test=20), data_root=tmp_path, image_size=28)
    assert raw.train_x.shape == (30, 28, 28) and np.bincount(raw.train_y).tolist() == [3] * 10
    assert np.bincount(raw.test_y).tolist() == [2] * 10
    again = datasets.load_mnist(params("mnist", limit_train=30, limit_test=20), data_root=tmp_path, image_size=28)
    np.testing.assert_array_equal(raw.train_x, again.train_x)
    assert raw.mean == (0.1307,)


def test_idx_wrong_magic_names_file(tmp_path):
    write_mnist(tmp_path / "mnist", synthetic_images(10, (28, 28)), synthetic_images(10, (28, 28)))
    bad = write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((10, 28), np.uint8))  # 2 dims
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: not an IDX image file "
                                           r"\(magic 2051 expected, got 2050\)") as err:
        datasets.load_mnist(params("mnist"), data_root=tmp_path, image_size=28)
    assert str(bad) in str(err.value)


def test_idx_truncated_and_corrupt_gzip(tmp_path):
    folder = write_mnist(tmp_path / "mnist", synthetic_images(10, (28, 28)), synthetic_images(10, (28, 28)), gz=False)
    labels = folder / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(DatasetError, match=f"{labels}: IDX header promises"):
        datasets.load_mnist(params("mnist"), data_root=tmp_path, image_size=28)
    labels.unlink()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: cannot read IDX label file"):
        datasets.load_mnist(params("mnist"), data_root=tmp_path, image_size=28)


def test_missing_files_say_where_and_how(tmp_path, no_debian):
    with pytest.raises(DatasetError) as err:
        datasets.load_fashion_mnist(params("fashion-mnist"), data_root=tmp_path, image_size=28)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "download: true" in message
    assert "\n" not in message
    with pytest.raises(DatasetError, match="no data root is set"):
        datasets.load_mnist(params("mnist"), data_root=None, image_size=28)
    with pytest.raises(DatasetError, match="needs a data root"):
        datasets.load_mnist(params("mnist", download=True), data_root=None, image_size=28)


def test_fashion_mnist_from_debian_package():
    if not datasets.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"{datasets.DEBIAN_FASHION_MNIST} missing: sudo apt-get install dataset-fashion-mnist")
    raw = datasets.load_fashion_mnist(params("fashion-mnist", limit_train=1000, limit_test=200), data_root=None,
                                      image_size=28)
    assert raw.train_x.shape == (1000, 28, 28) and raw.test_x.shape == (200, 28, 28)
    assert np.bincount(raw.train_y).tolist() == [100] * 10
    assert abs(raw.train_x.mean() / 255 - 0.286) < 0.02


# -- digits ----------------------------------------------------------------------------------------

def test_digits_stratified_deterministic_split():
    raw = datasets.load_digits(params("digits"), data_root=None, image_size=8)
    assert raw.train_x.shape[1:] == (8, 8) and len(raw.train_x) + len(raw.test_x) == 1797
    assert len(raw.test_x) == 359 and raw.num_classes == 10 and raw.train_x.max() == 255
    train_share = np.bincount(raw.train_y) / np.bincount(np.concatenate([raw.train_y, raw.test_y]))
    assert np.allclose(train_share, 0.8, atol=0.02)
    again = datasets.load_digits(params("digits"), data_root=None, image_size=8)
    np.testing.assert_array_equal(raw.test_x, again.test_x)
    assert raw.mean is None


# -- CIFAR -----------------------------------------------------------------------------------------

def test_cifar10_batches_and_pixel_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = synthetic_images(60, (32, 32, 3))
    images[0, 0, 0] = (11, 22, 33)
    for i in range(5):
        write_cifar_batch(folder / f"data_batch_{i + 1}", images[i * 10:(i + 1) * 10], labels[i * 10:(i + 1) * 10])
    write_cifar_batch(folder / "test_batch", images[50:], labels[50:])
    raw = datasets.load_cifar10(params("cifar10"), data_root=tmp_path, image_size=32)
    assert raw.train_x.shape == (50, 32, 32, 3) and raw.test_x.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(raw.train_x, images[:50])
    assert raw.train_x[0, 0, 0].tolist() == [11, 22, 33]
    np.testing.assert_array_equal(raw.test_y, labels[50:])
    assert raw.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_fine_labels(tmp_path):
    images, labels = synthetic_images(200, (32, 32, 3), num_classes=100)
    write_cifar_batch(tmp_path / "cifar-100-python" / "train", images[:150], labels[:150], label_key="fine_labels")
    write_cifar_batch(tmp_path / "cifar-100-python" / "test", images[150:], labels[150:], label_key="fine_labels")
    raw = datasets.load_cifar100(params("cifar100"), data_root=tmp_path, image_size=32)
    assert raw.num_classes == 100 and raw.train_y.max() == 99 and raw.test_x.shape == (50, 32, 32, 3)


def test_cifar_wrong_shape_names_file(tmp_path):
    batch = write_cifar_batch(tmp_path / "cifar-100-python" / "train", *synthetic_images(4, (32, 32, 3)))
    write_cifar_batch(tmp_path / "cifar-100-python" / "test", *synthetic_images(4, (32, 32, 3)),
                      label_key="fine_labels")
    with pytest.raises(DatasetError, match=f"{batch}: expected data of shape .* 'fine_labels'"):
        datasets.load_cifar100(params("cifar100"), data_root=tmp_path, image_size=32)


class _RunsCode:
    """What an attacker would pickle: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["ordered_dict", "os_system"])
def test_unpickler_refuses_classes(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj = OrderedDict(data=1) if payload == "ordered_dict" else {b"data": _RunsCode(marker)}
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DatasetError, match=f"{path}: refusing to unpickle (collections.OrderedDict|posix.system)"):
        datasets.read_cifar_batch(path)
    assert not marker.exists()


def test_unpickler_reads_modern_numpy_pickles(tmp_path):
    data = np.arange(12, dtype=np.uint8).reshape(2, 6)
    for protocol in (2, 5):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=protocol))
        batch = datasets.read_cifar_batch(path)
        np.testing.assert_array_equal(batch["data"], data)
        assert batch["labels"] == [1, 2]


def test_not_a_pickle(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match=f"{path}: not a CIFAR python batch"):
        datasets.read_cifar_batch(path)


# -- SVHN and STL-10 -------------------------------------------------------------------------------

def test_svhn_mat_label_ten_is_zero(tmp_path):
    images, labels = synthetic_images(30, (32, 32, 3))
    write_svhn_mat(tmp_path / "train_32x32.mat", images[:20], labels[:20])
    write_svhn_mat(tmp_path / "test_32x32.mat", images[20:], labels[20:])
    raw = datasets.load_svhn(params("svhn"), data_root=tmp_path, image_size=32)
    np.testing.assert_array_equal(raw.train_x, images[:20])
    np.testing.assert_array_equal(raw.train_y, labels[:20])
    assert 0 in raw.train_y and raw.mean == (0.0, 0.0, 0.0) and raw.std == (1.0, 1.0, 1.0)


def test_svhn_corrupt_mat_names_file(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage")
    write_svhn_mat(tmp_path / "test_32x32.mat", *synthetic_images(4, (32, 32, 3)))
    with pytest.raises(DatasetError, match="train_32x32.mat: not a MATLAB .mat file"):
        datasets.load_svhn(params("svhn"), data_root=tmp_path, image_size=32)


def test_stl10_column_major_and_remap(tmp_path):
    folder = tmp_path / "stl10_binary"
    images, labels = synthetic_images(20, (96, 96, 3))
    images[0, 1, 2] = (7, 8, 9)  # row 1, column 2: catches a transposed reader
    write_stl10_split(folder, "train", images[:10], labels[:10])
    write_stl10_split(folder, "test", images[10:], labels[10:])
    raw = datasets.load_stl10(params("stl10"), data_root=tmp_path, image_size=64)
    assert raw.train_x.shape == (10, 96, 96, 3) and raw.train_x[0, 1, 2].tolist() == [7, 8, 9]
    np.testing.assert_array_equal(raw.train_x, images[:10])
    np.testing.assert_array_equal(raw.train_y, np.array([0, 2, 1, 3, 4, 5, 7, 6, 8, 9])[labels[:10]])
    plain = datasets.load_stl10(params("stl10", remap_labels=False), data_root=tmp_path, image_size=64)
    np.testing.assert_array_equal(plain.test_y, labels[10:])


def test_stl10_bad_sizes_name_file(tmp_path):
    folder = write_stl10_split(tmp_path / "stl10_binary", "train", *synthetic_images(2, (96, 96, 3)))
    write_stl10_split(folder, "test", *synthetic_images(2, (96, 96, 3)))
    (folder / "test_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="test_X.bin: size 100 is not a whole number"):
        datasets.load_stl10(params("stl10"), data_root=tmp_path, image_size=64)
    (folder / "test_X.bin").write_bytes(b"\x00" * (3 * 96 * 96 * 2))
    (folder / "test_y.bin").write_bytes(bytes([0, 11]))
    with pytest.raises(DatasetError, match="test_y.bin: expected 2 labels in 1..10"):
        datasets.load_stl10(params("stl10"), data_root=tmp_path, image_size=64)


# -- image folders ---------------------------------------------------------------------------------

def _image_tree(root, split_counts: dict[str, dict[str, int]], shape=(20, 30, 3)):
    rng = np.random.default_rng(0)
    for split, classes in split_counts.items():
        for name, count in classes.items():
            for i in range(count):
                write_png(root / split / name / f"{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))


def test_image_folder_classes_resize_and_test_fallback(tmp_path):
    _image_tree(tmp_path / "nette", {"train": {"tench": 3, "church": 2, "parachute": 2}, "test": {"church": 1,
                                                                                                   "tench": 2}})
    raw = datasets.load_image_folder(params("image-folder", path="nette"), data_root=tmp_path, image_size=16)
    assert raw.train_x.shape == (7, 16, 16, 3) and raw.test_x.shape == (3, 16, 16, 3)
    assert raw.num_classes == 3  # church=0, parachute=1, tench=2 (sorted folder names)
    assert raw.train_y.tolist() == [0, 0, 1, 1, 2, 2, 2] and raw.test_y.tolist() == [0, 2, 2]
    limited = datasets.load_image_folder(params("image-folder", path=str(tmp_path / "nette"), limit_per_class=1),
                                         data_root=None, image_size=8)
    assert limited.train_y.tolist() == [0, 1, 2] and limited.mean == (0.485, 0.456, 0.406)


def test_image_folder_flat_unlabelled_is_split(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        write_png(tmp_path / "ffhq" / f"{i:05d}.png", rng.integers(0, 255, (12, 12), dtype=np.uint8))  # grey
    raw = datasets.load_image_folder(params("image-folder", path=str(tmp_path / "ffhq"), labels="none"),
                                     data_root=None, image_size=8)
    assert raw.num_classes == 1 and raw.train_x.shape == (8, 8, 8, 3) and raw.test_x.shape == (2, 8, 8, 3)
    assert set(raw.train_y.tolist()) == {0}


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="`path`.* is required"):
        datasets.load_image_folder(params("image-folder"), data_root=tmp_path, image_size=8)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'absent'}: image folder not found"):
        datasets.load_image_folder(params("image-folder", path="absent"), data_root=tmp_path, image_size=8)
    _image_tree(tmp_path / "a", {"train": {"x": 1}})
    with pytest.raises(DatasetError, match="no test folder \\('val' or 'test'\\)"):
        datasets.load_image_folder(params("image-folder", path="a"), data_root=tmp_path, image_size=8)
    _image_tree(tmp_path / "a", {"val": {"x": 1, "y": 1}})
    with pytest.raises(DatasetError, match=r"class folders \['y'\] do not exist in the training split"):
        datasets.load_image_folder(params("image-folder", path="a"), data_root=tmp_path, image_size=8)
    broken = tmp_path / "b" / "train" / "x" / "broken.png"
    _image_tree(tmp_path / "b", {"train": {"x": 1}, "val": {"x": 1}})
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=f"{broken}: cannot read image"):
        datasets.load_image_folder(params("image-folder", path="b"), data_root=tmp_path, image_size=8)
    write_png(tmp_path / "flat" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="no class sub-folders .* labels: none"):
        datasets.load_image_folder(params("image-folder", path="flat"), data_root=tmp_path, image_size=8)


def test_materialised_data_does_not_depend_on_the_thread_count():
    """Resizing and per-domain statistics round differently per thread count; the runner and a worker must see
    the same data whatever threads they have."""
    import torch

    from harness.engine.data import materialise

    spec = REGISTRY.get("dataset", "digits")
    threads = torch.get_num_threads()
    fingerprints = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            fingerprints.append(materialise(spec, spec.resolve({}, "digits"), image_size=28, channels=1,
                                            normalisation="per_domain", data_root=None, cache_dir=None).fingerprint)
    finally:
        torch.set_num_threads(threads)
    assert fingerprints[0] == fingerprints[1] and torch.get_num_threads() == threads
