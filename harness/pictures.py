"""Pictures a task renders of an attacked model (denoising: clean, noised and denoised test images, samples),
stored as PNG artifacts of the attack cell and embedded in the leaderboard page.

The cell writes them (`save_pictures(task.render(model, restricted_test, generator), artifact_dir)`, at the end
of an attack cell); the leaderboard reads them back (`stored_pictures`) without recomputing anything: only what
the store holds is shown.
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

FOLDER = "pictures"  # under the cell's artifact directory
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_grid(images: np.ndarray, *, low: float, high: float, columns: int = 8, pad: int = 1) -> np.ndarray:
    """N×C×H×W images with values in [low, high] (C = 1 or 3) as one uint8 H×W×C grid, `columns` wide, on white."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected N×C×H×W images with C = 1 or 3, got shape {images.shape}")
    count, channels, height, width = images.shape
    scaled = np.clip((images - low) / (high - low), 0.0, 1.0) * 255.0
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, dtype=np.uint8)
    for index, image in enumerate(np.rint(scaled).astype(np.uint8)):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[top:top + height, left:left + width] = image.transpose(1, 2, 0)
    return grid


def save_pictures(pictures: dict[str, np.ndarray], folder: Path) -> list[Path]:
    """Write each uint8 H×W or H×W×{1,3,4} array as `<folder>/pictures/<name>.png`, in the dict's order;
    returns the paths for the cell's artifacts (their order is the order the page shows them in). Everything is
    checked before anything is written."""
    checked = {name: _checked(name, array) for name, array in pictures.items()}
    if not checked:
        return []
    from PIL import Image

    out = Path(folder) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array in checked.items():
        path = out / f"{name}.png"
        Image.fromarray(array).save(path, format="PNG")
        paths.append(path)
    return paths


def _checked(name, array) -> np.ndarray:
    """The picture as PIL takes it (H×W×1 becomes H×W), or ValueError naming it."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"picture name {name!r}: use letters, digits, '-' and '_' (at most 64)")
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise ValueError(f"picture {name!r}: expected a uint8 H×W or H×W×{{1,3,4}} array, "
                         f"got {array.dtype} {array.shape}")
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array


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
    with closing(sqlite3.connect(root / DB_NAME)) as db:
        rows = db.execute(f"SELECT key, path, sha256 FROM artifacts WHERE key IN ({', '.join('?' * len(wanted))}) "
                          "ORDER BY rowid", wanted).fetchall() if wanted else []
    found: dict[str, list[Picture]] = {}
    for key, relative, sha256 in rows:
        path = Path(relative)
        if path.parent.name != FOLDER or path.suffix != ".png":
            continue
        file = root / path
        data = file.read_bytes() if file.is_file() else b""
        if hashlib.sha256(data).hexdigest() != sha256 or not data.startswith(PNG_SIGNATURE):
            raise ConfigError(f"picture missing or altered since cell {key[:12]} stored it", where=str(file))
        found.setdefault(key, []).append(Picture(key, path.stem, data))
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
