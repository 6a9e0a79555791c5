"""Input rules shared by experiment files, plugin parameters and the command line.

One place says what a name is, how far a relative path may reach and how large a number may be, so a
value is held to the same rule whether it comes from a file or a flag.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePath

from harness.registry import ConfigError

MAX_SEED = 2**32 - 1          # what numpy and every torch generator accept
MAX_WORKERS = 256
MAX_THREADS = 256
MAX_EPOCHS = 10_000
MAX_BATCH = 1_000_000
MAX_IMAGE_SIZE = 1024
MAX_LABEL = 64

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = f"letters, digits, '.', '_' or '-', starting with a letter or digit, at most {MAX_LABEL} characters"
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
DEVICE_RULE = "cpu, cuda, cuda:N or auto"


def check_name(value: str) -> str:
    """A name that is also a folder name (the experiment's): no separators, no '..', no control characters."""
    if len(value) > MAX_LABEL or not NAME.fullmatch(value):
        raise ValueError(f"expected a name ({NAME_RULE}), got {_shown(value)}")
    return value


def check_label(value: str) -> str:
    """A label shown in tables: printable, not blank, not padded, at most MAX_LABEL characters."""
    if not value.strip() or value != value.strip() or len(value) > MAX_LABEL or not value.isprintable():
        raise ValueError(f"expected a label of 1 to {MAX_LABEL} printable characters without surrounding spaces, "
                         f"got {_shown(value)}")
    return value


def check_device(value: str) -> str:
    if not DEVICE.fullmatch(value):
        raise ValueError(f"expected {DEVICE_RULE}, got {value!r}")
    return value


def check_contained(value: str, root: str = "the working directory") -> str:
    """A relative path must stay inside `root` (no climbing out with '..'); an absolute path is taken as given."""
    if "\x00" in value or not value.strip():
        raise ValueError(f"expected a path, got {_shown(value)}")
    path = PurePath(value)
    if not path.is_absolute():
        depth = 0
        for part in path.parts:
            depth += -1 if part == ".." else (part != ".")
            if depth < 0:
                raise ValueError(f"{value!r} leaves {root}; give an absolute path to go there")
    return value


def check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return value


def directory_option(value: str | None, flag: str) -> str | None:
    """A directory given on the command line: contained like a file's path, and not an existing file."""
    if value is None:
        return None
    try:
        check_contained(value)
    except ValueError as exc:
        raise ConfigError(str(exc), where=flag) from None
    if Path(value).exists() and not Path(value).is_dir():
        raise ConfigError(f"{value} is a file, not a directory", where=flag)
    return value


def _shown(value: str) -> str:
    """A value quoted for an error line, cut short when it is long."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"
