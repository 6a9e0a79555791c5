"""The `transformed` dataset: any dataset with a fixed pixel transform or a subset of its classes, checked at
validate time."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import yaml

from harness.config import parse_experiment
from harness.data import DatasetError
from harness.plan import resolve
from harness.plugins import registry
from harness.registry import ConfigError
from plugins.transformed import apply
from tests.conftest import TINY_EXPERIMENT


def load(name: str, params: dict):
    spec = registry().get("dataset", name)
    return spec.load()(spec.resolve(params, name), data_root=None, image_size=8)


def test_rotated_inverted_digits_keep_labels_and_move_pixels():
    plain = load("digits", {})
    shifted = load("transformed", {"dataset": "digits", "transform": "rotate:90+invert"})
    assert np.array_equal(shifted.train_y, plain.train_y) and np.array_equal(shifted.test_y, plain.test_y)
    assert np.array_equal(shifted.train_x, np.rot90(255 - plain.train_x, axes=(1, 2)))
    assert not np.array_equal(shifted.test_x, plain.test_x)


def test_skip_train_leaves_out_the_first_training_images_and_refuses_to_skip_all():
    plain = load("digits", {})
    shifted = load("transformed", {"dataset": "digits", "transform": "flip", "skip_train": 100})
    assert np.array_equal(shifted.train_x, plain.train_x[100:, :, ::-1])
    assert np.array_equal(shifted.train_y, plain.train_y[100:]) and len(shifted.test_x) == len(plain.test_x)
    with pytest.raises(DatasetError, match="skip_train: .* skips all"):
        load("transformed", {"dataset": "digits", "skip_train": len(plain.train_x)})


def test_classes_keep_only_those_labels_relabelled_in_the_order_given():
    plain = load("digits", {})
    split = load("transformed", {"dataset": "digits", "transform": "none", "classes": [7, 3]})
    assert split.num_classes == 2
    for images, labels, plain_images, plain_labels in ((split.train_x, split.train_y, plain.train_x, plain.train_y),
                                                       (split.test_x, split.test_y, plain.test_x, plain.test_y)):
        assert np.array_equal(images, plain_images[(plain_labels == 7) | (plain_labels == 3)])
        assert np.array_equal(labels, np.where(plain_labels[(plain_labels == 7) | (plain_labels == 3)] == 7, 0, 1))
    with pytest.raises(DatasetError, match=r"classes: \[1, 12\]; expected .* in 0..9"):
        load("transformed", {"dataset": "digits", "transform": "none", "classes": [1, 12]})


def test_steps_apply_in_order_and_compose():
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(apply(images, "rotate:90+rotate:270"), images)
    assert np.array_equal(apply(images, "flip+flip"), images)
    assert np.array_equal(apply(images, "rotate:180"), images[:, ::-1, ::-1])
    assert np.array_equal(apply(images, "none"), images)


def validate(params: dict):
    data = yaml.safe_load(textwrap.dedent(TINY_EXPERIMENT))
    data["scenarios"][0]["restricted"] = {"dataset": "transformed", "params": params}
    return resolve(parse_experiment(data, "exp.yaml"), registry())


def test_a_valid_wrapper_resolves():
    resolved = validate({"dataset": "digits", "transform": "invert"})
    assert resolved.scenarios[0].datasets["restricted"][1]["dataset"] == "digits"


@pytest.mark.parametrize("params, message", [
    ({"dataset": "digitz"}, "did you mean 'digits'"),
    ({"dataset": "digits", "transform": "rotate:45"}, "unknown step 'rotate:45'"),
    ({"dataset": "digits", "params": {"test_fraction": 2.0}}, "test_fraction"),
    ({"dataset": "digits", "classes": [3, 3]}, "at least 2 distinct class indices"),
    ({"dataset": "digits", "classes": [-1, 2]}, "below the minimum"),
])
def test_bad_wrapper_settings_are_config_errors_at_validate(params, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate(params)
    assert "scenarios[0].restricted.params" in str(error.value)
