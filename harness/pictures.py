"""Pictures of attacked models (a task's `render`: denoising's clean, noised and denoised test images and samples),
as the leaderboard page shows them.

The runner stores them with each attack cell as `picture-<name>.png` artifacts (docs/tasks.md); this module
reads them back, hash-checked, without recomputing anything: only what the store holds is shown. `image_grid`
helps a task's render lay a batch of images out as one picture.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.registry import ConfigError
from harness.store import DB_NAME

PREFIX = "picture-"  # artifact file name: picture-<name>.png
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what a task's render may call a picture (it becomes a file name)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_grid(images: np.ndarray, *, low: float, high: float, columns: int = 8, pad: int = 1) -> np.ndarray:
    """N×C×H×W images with values in [low, high] (C = 1 or 3) as one H×W×3 uint8 grid, `columns` wide, on white."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected N×C×H×W images with C = 1 or 3, got shape {images.shape}")
    count, _, height, width = images.shape
    scaled = np.rint(np.clip((images - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for index, image in enumerate(scaled):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[top:top + height, left:left + width] = image.transpose(1, 2, 0)  # a grey channel fills all three
    return grid


@dataclass
class Picture:
    """One stored picture of an attack cell."""

    key: str
    name: str
    png: bytes

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").replace("-", " ")


def stored_pictures(results_dir: str | Path, keys: list[str]) -> dict[str, list[Picture]]:
    """The pictures the given cells stored, per key in the order they were written; each file is checked
    against the hash the store recorded."""
    root = Path(results_dir)
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    with closing(sqlite3.connect(root / DB_NAME)) as db:
        rows = db.execute(f"SELECT key, path, sha256 FROM artifacts WHERE key IN ({', '.join('?' * len(wanted))}) "
                          "ORDER BY rowid", wanted).fetchall()
    found: dict[str, list[Picture]] = {}
    for key, relative, sha256 in rows:
        path = Path(relative)
        if not (path.name.startswith(PREFIX) and path.suffix == ".png"):
            continue
        file = root / path
        data = file.read_bytes() if file.is_file() else b""
        if hashlib.sha256(data).hexdigest() != sha256 or not data.startswith(PNG_SIGNATURE):
            raise ConfigError(f"picture missing or altered since cell {key[:12]} stored it", where=str(file))
        found.setdefault(key, []).append(Picture(key, path.stem[len(PREFIX):], data))
    return found


def shown_pictures(results_dir: str | Path, cells) -> dict[tuple, tuple[int, list[Picture]]]:
    """Per (scenario, suite, attack label, start): the lowest seed whose cell stored pictures, and its pictures.
    `cells` is `Curves.cells` (one row per attack cell and suite membership)."""
    stored = stored_pictures(results_dir, list(cells.key))
    having = cells[cells.key.isin(stored)].sort_values("seed", kind="stable")
    first = having.drop_duplicates(["scenario", "suite", "attack", "start"])
    return {(r.scenario, r.suite, r.attack, r.start): (int(r.seed), stored[r.key]) for r in first.itertuples()}


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
