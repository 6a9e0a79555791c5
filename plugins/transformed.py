"""`transformed`: any registered dataset with a fixed pixel transform and/or a subset of its classes, as a
shifted domain.

Domain-adaptation benchmarks build a target domain from a source one (rotated or inverted MNIST): the
classes stay, the low-level statistics move, so a model pretrained on the source still helps but does not
already solve the target. Transfer benchmarks split one dataset's classes instead (split MNIST): the images
look alike, the labels differ. Both are a dataset plugin wrapping another: `{dataset: transformed, params:
{dataset: fashion-mnist, params: {...}, transform: rotate:90+invert}}`, or `transform: none, classes: [5, 6]`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import Param, hookimpl
from harness.data import DatasetError, RawDataset

TRANSFORMS = "none, or rotate:90 | rotate:180 | rotate:270 | flip | invert joined with '+'"


def _steps(transform: str) -> list[str]:
    if transform == "none":
        return []
    steps = transform.split("+")
    for step in steps:
        if step not in ("rotate:90", "rotate:180", "rotate:270", "flip", "invert"):
            raise DatasetError(f"transform {transform!r}: unknown step {step!r}; expected {TRANSFORMS}")
    return steps


def apply(images: np.ndarray, transform: str) -> np.ndarray:
    """uint8 images (N, H, W[, C]) with every step applied in order."""
    for step in _steps(transform):
        if step == "invert":
            images = 255 - images
        elif step == "flip":
            images = images[:, :, ::-1]
        else:
            images = np.rot90(images, k=int(step.partition(":")[2]) // 90, axes=(1, 2))
    return np.ascontiguousarray(images)


def load_transformed(params: dict, *, data_root: Path | None, image_size: int) -> RawDataset:
    from harness.plugins import registry

    spec = registry().get("dataset", params["dataset"], where="transformed.dataset")
    inner = spec.load()(spec.resolve(params["params"], f"transformed.params ({spec.name})"), data_root=data_root,
                        image_size=image_size)
    skip = params["skip_train"]
    if skip >= len(inner.train_x):
        raise DatasetError(f"transformed.skip_train: {skip} skips all {len(inner.train_x)} training images of "
                           f"{spec.name!r}; expected fewer (raise the wrapped dataset's limit_train)")
    inverted = "invert" in _steps(params["transform"])
    mean = None if inner.mean is None else tuple(1.0 - m for m in inner.mean) if inverted else inner.mean
    train_x, train_y = inner.train_x[skip:], None if inner.train_y is None else inner.train_y[skip:]
    (train_x, train_y), (test_x, test_y), num_classes = _keep_classes(
        params["classes"], inner.num_classes, (train_x, train_y), (inner.test_x, inner.test_y))
    return RawDataset(apply(train_x, params["transform"]), train_y, apply(test_x, params["transform"]), test_y,
                      num_classes, mean, inner.std)


def _keep_classes(classes: list[int] | None, num_classes: int, *splits):
    """Each (images, labels) split with only `classes`, relabelled 0..k-1 in the order given (None keeps all)."""
    if classes is None:
        return (*splits, num_classes)
    _check_classes(classes, num_classes)
    relabel = np.full(num_classes, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    kept = []
    for images, labels in splits:
        mask = relabel[labels] >= 0
        kept.append((images[mask], relabel[labels[mask]]))
    return (*kept, len(classes))


def _check_classes(classes: list[int], num_classes: int | None = None) -> None:
    """At least 2 distinct classes, each one the wrapped dataset has (once its class count is known)."""
    if num_classes == 0:
        raise DatasetError("transformed.classes: the wrapped dataset has no labels to choose from")
    out_of_range = num_classes is not None and any(c >= num_classes for c in classes)
    if len(set(classes)) != len(classes) or len(classes) < 2 or out_of_range:
        within = "" if num_classes is None else f" in 0..{num_classes - 1}"
        raise DatasetError(f"transformed.classes: {classes!r}; expected at least 2 distinct class indices{within}")


def check(params: dict, registry) -> str | None:
    """At validate time: the wrapped dataset exists (its parameters are checked there too) and the transform parses."""
    try:
        _steps(params["transform"])
        if params["classes"] is not None:
            _check_classes(params["classes"])
        spec = registry.get("dataset", params["dataset"])
        spec.resolve(params["params"], "params")
    except (DatasetError, ValueError) as exc:
        return str(exc)
    return None


@hookimpl
def register_datasets(register):
    register("transformed", factory="plugins.transformed:load_transformed", version="1", check=check,
             description="Any dataset with a fixed transform (rotate, flip, invert) or a subset of its classes: "
                         "a shifted domain",
             params=[Param("dataset", "str", "fashion-mnist", help="the registered dataset to wrap"),
                     Param("params", "dict", {}, help="the wrapped dataset's parameters"),
                     Param("transform", "str", "rotate:90", help=TRANSFORMS),
                     Param("classes", "list", None, nullable=True, item=Param("class", "int", 0, min=0),
                           help="keep only these class indices of the wrapped dataset, relabelled 0..k-1 in this "
                                "order (null keeps every class)"),
                     Param("skip_train", "int", 0, min=0, max=10_000_000,
                           help="leave out the wrapped dataset's first n training images, so the shifted domain "
                                "shares no image with an original that reads those n")])
