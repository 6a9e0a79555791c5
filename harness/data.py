"""What a dataset plugin returns: raw arrays, checked here once so every reader is held to one contract.

Readers stay numpy-only; resizing, channel conversion and normalisation are scenario settings applied by
the engine (harness.engine.data), so the same reader serves every scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DatasetError(ValueError):
    """A dataset could not be read: the message names the file or folder and what was expected."""


@dataclass
class RawDataset:
    """Images as uint8 arrays (N, H, W) or (N, H, W, C), labels as int64 0..num_classes-1.

    Labels may be None on both splits (with num_classes 0) for data of tasks that need none (denoising).

    `mean`/`std` are the dataset's reference normalisation (per channel, on [0, 1] pixels) or None to
    compute them from the training images.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def labelled(self) -> bool:
        return self.train_y is not None

    def __post_init__(self):
        if (self.train_y is None) != (self.test_y is None):
            raise DatasetError("labels must be given for both splits or for neither")
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != np.uint8 or x.ndim not in (3, 4):
                raise DatasetError(f"{split} images must be uint8 (N,H,W) or (N,H,W,C), got {x.dtype} {x.shape}")
            if y is None:
                continue
            if len(x) != len(y):
                raise DatasetError(f"{split}: {len(x)} images but {len(y)} labels")
            setattr(self, f"{split}_y", np.asarray(y, dtype=np.int64))
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise DatasetError(f"{split} labels must lie in 0..{self.num_classes - 1}")
