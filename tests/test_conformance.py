"""Every built-in plugin passes the conformance check of its kind (harness.testing.check_plugin), exactly as a
third-party plugin is asked to. The parameters come from the registry, so a new built-in is checked as soon as
it is registered; a dataset also needs a writer of tiny files in its real format below."""

from __future__ import annotations

import numpy as np
import pytest

from harness.plugins import Registry
from harness.testing import CHECKED_KINDS, check_plugin
from tests.formats import synthetic_images, write_cifar_batch, write_mnist, write_png, write_stl10_split, write_svhn_mat
from tests.leaderboard_fixtures import build_query_store, build_store

BUILT_INS = Registry(strict=True, allow=None).load_entry_points()


def built_in(kind: str) -> list[str]:
    return [spec.name for spec in BUILT_INS.all(kind) if spec.distribution == "untunable"]


def _idx(folder: str):
    def write(root):
        write_mnist(root / folder, synthetic_images(40, (28, 28)), synthetic_images(20, (28, 28), seed=1))
        return {}
    return write


def _cifar(folder: str, train: list[str], test: str, label_key: str, num_classes: int):
    def write(root):
        images, labels = synthetic_images(10 * (len(train) + 1), (32, 32, 3), num_classes=num_classes)
        for i, name in enumerate([*train, test]):
            write_cifar_batch(root / folder / name, images[i * 10:(i + 1) * 10], labels[i * 10:(i + 1) * 10], label_key)
        return {}
    return write


def _svhn(root):
    images, labels = synthetic_images(30, (32, 32, 3))
    write_svhn_mat(root / "train_32x32.mat", images[:20], labels[:20])
    write_svhn_mat(root / "test_32x32.mat", images[20:], labels[20:])
    return {}


def _stl10(root):
    images, labels = synthetic_images(20, (96, 96, 3))
    write_stl10_split(root / "stl10_binary", "train", images[:10], labels[:10])
    write_stl10_split(root / "stl10_binary", "test", images[10:], labels[10:])
    return {}


def _image_folder(root):
    images, labels = synthetic_images(12, (12, 12, 3), num_classes=2)
    for i, (image, label) in enumerate(zip(images, labels)):
        write_png(root / "tiny" / ("train" if i < 8 else "val") / f"class{label}" / f"{i}.png", image)
    return {"path": "tiny"}


# Tiny files in each built-in dataset's real format: write them under `root`, return the params to read them.
TINY_FILES = {
    "fashion-mnist": _idx("."), "mnist": _idx("MNIST/raw"), "digits": lambda root: {},
    "cifar10": _cifar("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels", 10),
    "cifar100": _cifar("cifar-100-python", ["train"], "test", "fine_labels", 100),
    "svhn": _svhn, "stl10": _stl10, "image-folder": _image_folder,
    "transformed": lambda root: {"dataset": "fashion-mnist", "params": _idx(".")(root), "transform": "rotate:90+invert"},
}


def test_every_kind_with_plugins_is_checked():
    kinds = {spec.kind for spec in BUILT_INS.all()} - {"suite", "executor", "reporter"}
    assert kinds <= set(CHECKED_KINDS)


@pytest.mark.parametrize("kind, name", [(k, n) for k in ("defense", "attack") for n in built_in(k)])
def test_defenses_and_attacks_conform(kind, name):
    assert check_plugin(kind, name, registry=BUILT_INS) == []


@pytest.mark.parametrize("name", built_in("dataset"))
def test_datasets_conform(name, tmp_path):
    assert name in TINY_FILES, f"dataset {name!r}: add a writer of tiny files in its format to TINY_FILES"
    params = TINY_FILES[name](tmp_path)
    assert check_plugin("dataset", name, params, registry=BUILT_INS, data_root=tmp_path) == []


@pytest.mark.parametrize("name", built_in("architecture"))
def test_architectures_conform(name):
    assert check_plugin("architecture", name, registry=BUILT_INS) == []


@pytest.mark.parametrize("name", built_in("task"))
def test_tasks_conform(name):
    assert check_plugin("task", name, registry=BUILT_INS) == []


@pytest.fixture(scope="module")
def constructed_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.mark.parametrize("name", built_in("metric"))
def test_metrics_conform(name, constructed_store, tmp_path):
    results = build_query_store(tmp_path) if name == "queries" else constructed_store  # it reads query ladders
    assert check_plugin("metric", name, registry=BUILT_INS, results=results) == []


def test_the_checks_find_what_is_broken(constructed_store):
    """Each kind's check reports a broken plugin instead of passing it."""
    import types

    from harness import hookimpl

    def unseeded_reader(params, *, data_root, image_size):
        from harness.data import RawDataset

        rng = np.random.default_rng()
        images = rng.integers(0, 255, (4, 8, 8), dtype=np.uint8)
        return RawDataset(images, np.arange(4) % 2, images, np.arange(4) % 2, num_classes=2)

    def headless(params, *, in_channels, image_size, num_classes):
        import torch

        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size ** 2, num_classes))

    def no_columns(curves):
        import pandas as pd

        return pd.DataFrame({"value": [1.0]})

    reg = Registry(strict=True, allow=["classification"]).load_entry_points()
    reg.add(types.SimpleNamespace(
        register_datasets=hookimpl(lambda register: register("random", factory=unseeded_reader)),
        register_architectures=hookimpl(lambda register: register("headless", factory=headless)),
        register_metrics=hookimpl(lambda register: register("bare", factory=no_columns))), name="broken")
    assert "reading the same files twice gave different arrays" in check_plugin("dataset", "random", registry=reg)[0]
    assert "breaks the classification model contract" in check_plugin("architecture", "headless", registry=reg)[0]
    assert "returned no column(s)" in check_plugin("metric", "bare", registry=reg, results=constructed_store)[0]
