"""Light plugin descriptors and parameter schemas.

A descriptor holds its factory as a function object or an import string ("module:attribute"). Either way
nothing heavy is imported until a cell runs: plugin modules import torch inside their functions, so holding
a function defined in one costs no more than naming it. Parameter schemas validate experiment files with
errors that name the field.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

KINDS = ("task", "dataset", "architecture", "defense", "attack", "suite", "metric", "executor", "reporter")
DOMAINS = ("restricted", "original")  # a recorded metric is "<domain>/<measure>"
# validation slices (choices read these; test sets are for reporting): the adversary's, recorded next to every
# restricted point of an attack, and the one held out of the original training set (SOPHON's guard curve)
VALIDATION_DOMAINS = ("restricted_val", "original_val")
DISPLAYS = ("percent", "raw")
DEFAULT_TASKS = ("classification",)  # what a plugin serves unless it registers `tasks=[...]` or `tasks="any"`

_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


class ConfigError(ValueError):
    """A user error in an experiment file or on the command line: reported as one line, exit status 2."""

    def __init__(self, message: str, *, where: str = ""):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """A ' (did you mean X?)' suffix for a misspelt name, or ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Measure:
    """A quantity a task evaluates or a plugin records, with its direction and how reports show it.

    `display="percent"` is a fraction shown x100 (differences in points); `"raw"` is shown as is (a loss,
    an MSE). The leaderboard reads direction and display from here, never from a table in the core.
    """

    name: str
    higher_is_better: bool
    display: str = "raw"
    description: str = ""

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"Measure name must be non-empty without '/', got {self.name!r}")
        if self.display not in DISPLAYS:
            raise ValueError(f"Measure {self.name!r}: display must be one of {list(DISPLAYS)}, not {self.display!r}")

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is better."""
        return 1 if self.higher_is_better else -1


START_SOURCES = ("fresh", "original", "none")
ACCESS_LEVELS = ("white-box", "black-box")
APIS = ("logits", "probabilities", "label", "representation")


@dataclass(frozen=True)
class ReferenceStart:
    """A baseline an attack runs from besides the defenses' released models (docs/starts-and-access.md).

    `source` says what the attack is handed: "fresh" a new model of the scenario's architecture, "original"
    the unprotected pretrained model, "none" no model at all (the attack trains something of its own, as
    a distillation student without a teacher). `ignores` names attack parameters the attack does not read from
    this start: its cells are keyed without them, so configurations that differ only there share one cell.
    """

    name: str
    source: str
    description: str = ""
    ignores: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or self.name.startswith("defense:") or "/" in self.name:
            raise ValueError(f"ReferenceStart name must be non-empty, without '/', not 'defense:...': {self.name!r}")
        if self.source not in START_SOURCES:
            raise ValueError(f"ReferenceStart {self.name!r}: source must be one of {list(START_SOURCES)}")


SCRATCH = ReferenceStart("scratch", "fresh", "a randomly initialised model of the scenario's architecture")
ORIGINAL = ReferenceStart("original", "original", "the unprotected original")
DEFAULT_STARTS = (SCRATCH, ORIGINAL)


@dataclass(frozen=True)
class Param:
    """One declared plugin parameter: type, default, and the range or choices it may take."""

    name: str
    type: str
    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    item: "Param | None" = None          # list: the schema every element must meet
    keys: "tuple[Param, ...] | None" = None  # dict: the keys it may hold, each with its own schema
    pattern: str | None = None           # str: a regular expression the whole value must match
    path: bool = False                   # str: a relative path that must not climb out of its root

    def __post_init__(self):
        if self.type not in _TYPES:
            raise ValueError(f"Param {self.name!r}: type must be one of {sorted(_TYPES)}, not {self.type!r}")
        if (self.item is not None and self.type != "list") or (self.keys is not None and self.type != "dict"):
            raise ValueError(f"Param {self.name!r}: `item` belongs to list parameters, `keys` to dict parameters")

    def check(self, value: Any, where: str) -> Any:
        """Return `value` coerced to this parameter's type, or raise ConfigError naming `where`."""
        if value is None and self.nullable:
            return None
        expected = _TYPES[self.type]
        if self.type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type == "float" and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)  # YAML reads 1e-4 as a string
        if not isinstance(value, expected) or (self.type in ("int", "float") and isinstance(value, bool)):
            raise ConfigError(f"expected {self.type}, got {type(value).__name__} {_short(value)}", where=where)
        if self.type == "float" and not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", where=where)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{value!r} is not one of {list(self.choices)}{did_you_mean(value, [str(c) for c in self.choices])}",
                where=where,
            )
        if self.min is not None and value < self.min:
            raise ConfigError(f"{value!r} is below the minimum {self.min}", where=where)
        if self.max is not None and value > self.max:
            raise ConfigError(f"{value!r} is above the maximum {self.max}", where=where)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ConfigError(f"{_short(value)} does not have the form {self.pattern!r}", where=where)
        if self.path:
            from harness.validation import check_contained

            try:
                check_contained(value, "its root folder")
            except ValueError as exc:
                raise ConfigError(str(exc), where=where) from None
        if self.item is not None:
            return [self.item.check(element, f"{where}[{i}]") for i, element in enumerate(value)]
        if self.keys is not None:
            return schema_check(self.keys, value, where, owner=f" in {self.name!r}")
        return value

    def describe(self) -> dict:
        out = {"name": self.name, "type": self.type, "default": self.default, "help": self.help}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.min is not None or self.max is not None:
            out["range"] = [self.min, self.max]
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.item is not None:
            out["item"] = self.item.describe()
        if self.keys is not None:
            out["keys"] = [key.describe() for key in self.keys]
        return out

    def summary(self, with_default: bool = True) -> str:
        """Type, default and every bound in one phrase, as `untunable plugins --params` lists it."""
        parts = [f"{self.type}{' or null' if self.nullable else ''}"] + [f"default {self.default!r}"] * with_default
        if self.choices is not None:
            parts.append(f"one of {', '.join(map(str, self.choices))}")
        if self.min is not None or self.max is not None:
            parts.append(f"range [{_number(self.min)}, {_number(self.max)}]")
        if self.pattern is not None:
            parts.append(f"form {self.pattern}")
        if self.path:
            parts.append("relative paths stay inside their root")
        if self.item is not None:
            parts.append(f"items: {self.item.summary(with_default=False)}")
        if self.keys is not None:
            parts.append("keys: " + "; ".join(f"{key.name} ({key.summary(with_default=False)})" for key in self.keys))
        return ", ".join(parts)


def schema_check(schema: Sequence[Param], given: dict, where: str, owner: str = "") -> dict:
    """The given keys checked against `schema` (unknown ones are errors with a did-you-mean); defaults not filled."""
    known = {p.name: p for p in schema}
    for key in given:
        if key not in known:
            hint = did_you_mean(key, list(known)) or (f"; expected one of: {', '.join(known)}" if len(known) <= 8 else "")
            raise ConfigError(f"unknown parameter {key!r}{owner}{hint}", where=f"{where}.{key}")
    return {key: known[key].check(value, f"{where}.{key}") for key, value in given.items()}


def _number(bound: float | None) -> str:
    """A bound as people write it: '' when open, 1000000 rather than 1e+06."""
    if bound is None:
        return ""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def load_reference(reference: str | Callable) -> Callable:
    """A callable given as itself or as an import string "module:attribute" (imported only now)."""
    if callable(reference):
        return reference
    module, _, attr = str(reference).partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


COLUMN_UNITS = ("score", "delta", "ratio", "steps", "raw", "percent")
COLUMN_BETTER = ("higher", "lower", "score", "against-score", None)


@dataclass(frozen=True)
class Column:
    """A leaderboard column a metric plugin fills: its unit and which way is better for the defense.

    unit: `score` (in the scenario's score measure), `delta` (a difference of scores: points for a percentage),
    `ratio`, `steps`, `raw` or `percent`. better: `higher`, `lower`, `score` (the score measure's own direction),
    `against-score` (the opposite: a defended model should stay bad at the restricted task) or None (no
    direction). A name ending in `@t` stands for every column `<name>@<t>`.
    """

    name: str
    unit: str
    better: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.unit not in COLUMN_UNITS:
            raise ValueError(f"Column {self.name!r}: unit must be one of {COLUMN_UNITS}, not {self.unit!r}")
        if self.better not in COLUMN_BETTER:
            raise ValueError(f"Column {self.name!r}: better must be one of {COLUMN_BETTER}, not {self.better!r}")

    def covers(self, column: str) -> bool:
        return column == self.name or (self.name.endswith("@t") and column.startswith(self.name[:-1]))


@dataclass
class PluginSpec:
    """What a plugin registers: enough to list, validate and key a plugin without importing it."""

    kind: str
    name: str
    description: str
    factory: str | Callable | None = None
    params: tuple[Param, ...] = ()
    version: str = "0"
    distribution: str = "?"
    dist_version: str = "?"
    extra: dict = field(default_factory=dict)

    def load(self) -> Callable:
        """The factory: the function itself, or imported from its "module:attribute" string."""
        return load_reference(self.factory)

    def resolve(self, given: dict | None, where: str) -> dict:
        """Validate `given` against the schema and fill defaults; unknown keys are errors with a did-you-mean."""
        checked = schema_check(self.params, dict(given or {}), where, owner=f" for {self.kind} {self.name!r}")
        return {p.name: checked.get(p.name, p.default) for p in self.params}

    @property
    def measures(self) -> tuple[Measure, ...]:
        """What this plugin records (a task: what it evaluates, the first being its score)."""
        return tuple(self.extra.get("measures", ()))

    @property
    def starts(self) -> tuple[ReferenceStart, ...]:
        """The reference starts an attack runs from (scratch and original unless it declares its own)."""
        return tuple(self.extra.get("starts", DEFAULT_STARTS))

    @property
    def access(self) -> str:
        """An attack's access to its start: "white-box" (the weights) or "black-box" (an Oracle)."""
        return self.extra.get("access", "white-box")

    def serves(self, task: str) -> bool:
        """Whether this plugin works on scenarios of `task` (declared with `tasks=[...]`, or "any")."""
        tasks = self.extra.get("tasks", DEFAULT_TASKS)
        return tasks == "any" or task in tasks

    @property
    def cache_version(self) -> str:
        """What goes into cell keys: the plugin's own version and its distribution's."""
        return f"{self.distribution}=={self.dist_version}/{self.name}@{self.version}"
