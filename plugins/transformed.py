"""`transformed`: any registered dataset with a fixed pixel transform, as a shifted domain.

Domain-adaptation benchmarks build a target domain from a source one (rotated or inverted MNIST): the
classes stay, the low-level statistics move, so a model pretrained on the source still helps but does not
already solve the target. Here that is a dataset plugin wrapping another: `{dataset: transformed, params:
{dataset: fashion-mnist, params: {...}, transform: rotate:90+invert}}`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness import Param, hookimpl
from harness.data import DatasetError, RawDataset

TRANSFORMS = "rotate:90 | rotate:180 | rotate:270 | flip | invert, joined with '+'"


def _steps(transform: str) -> list[str]:
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
    train_y = None if inner.train_y is None else inner.train_y[skip:]
    return RawDataset(apply(inner.train_x[skip:], params["transform"]), train_y,
                      apply(inner.test_x, params["transform"]), inner.test_y, inner.num_classes, mean, inner.std)


def check(params: dict, registry) -> str | None:
    """At validate time: the wrapped dataset exists (its parameters are checked there too) and the transform parses."""
    try:
        _steps(params["transform"])
        spec = registry.get("dataset", params["dataset"])
        spec.resolve(params["params"], "params")
    except (DatasetError, ValueError) as exc:
        return str(exc)
    return None


@hookimpl
def register_datasets(register):
    register("transformed", factory="plugins.transformed:load_transformed", version="1", check=check,
             description="Any dataset with a fixed transform (rotate, flip, invert): a shifted domain",
             params=[Param("dataset", "str", "fashion-mnist", help="the registered dataset to wrap"),
                     Param("params", "dict", {}, help="the wrapped dataset's parameters"),
                     Param("transform", "str", "rotate:90", help=TRANSFORMS),
                     Param("skip_train", "int", 0, min=0, max=10_000_000,
                           help="leave out the wrapped dataset's first n training images, so the shifted domain "
                                "shares no image with an original that reads those n")])
