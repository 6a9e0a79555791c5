"""docs/api.md documents every hook, every context attribute and every public helper a plugin may use, with the
code's own signatures, or the suite fails: the reference cannot drift from the code."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

from harness.engine.context import CellContext, Recorder
from harness.engine.data import Split
from harness.hookspecs import Specs
from harness.plugins import Registry
from harness.tasks import Task

API = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
HEADING = re.compile(r"^#{2,4} `([\w.]+)(?:\((.*)\))?`$", re.M)
# The modules whose public functions and classes a plugin may use (everything else is the core's).
MODULES = ("harness.engine.train", "harness.engine.data", "harness.engine.models", "harness.engine.oracle",
           "harness.engine.device", "harness.engine.seeding", "harness.tasks", "harness.testing", "harness.data")
INSTANCES = {"ctx": CellContext, "task": Task}  # how the reference spells the methods of these objects


def signature(function) -> str:
    """A function's parameters as the reference writes them: names, `*`, and defaults, no annotations."""
    out, keyword_only = [], False
    for p in inspect.signature(function).parameters.values():
        if p.name == "self":
            continue
        if p.kind == p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            keyword_only = True
        elif p.kind == p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        else:
            if p.kind == p.KEYWORD_ONLY and not keyword_only:
                out.append("*")
                keyword_only = True
            out.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}".replace("'", '"'))
    return ", ".join(out)


def headings() -> dict[str, str | None]:
    """Documented name -> its parameter list (None for a class or an object documented without one)."""
    return {m.group(1): m.group(2) for m in HEADING.finditer(API)}


def resolve(name: str):
    """The code object a heading names: `ctx.method`, `task.method` or `module.attribute`."""
    first, _, rest = name.partition(".")
    if first in INSTANCES:
        return getattr(INSTANCES[first], rest)
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def public(module: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(module)
    return [(f"{module}.{n}", o) for n, o in vars(mod).items()
            if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == module]


def hooks() -> list[str]:
    return [n for n, f in vars(Specs).items() if callable(f) and hasattr(f, "untunable_spec")]


def test_every_hook_is_documented_with_its_arguments():
    assert hooks(), "no hook specifications found"
    for name in hooks():
        assert getattr(Specs, name).__doc__, f"hook {name} has no docstring"
        assert f"`{name}({signature(getattr(Specs, name))})`" in API, f"docs/api.md: hook {name} is not documented"


@pytest.mark.parametrize("module", MODULES)
def test_every_public_helper_is_documented_with_its_signature(module):
    documented = headings()
    for name, obj in public(module):
        assert obj.__doc__, f"{name} has no docstring"
        assert name in documented, f"docs/api.md: no section `{name}`"
        if inspect.isfunction(obj):
            assert documented[name] == signature(obj), \
                f"docs/api.md: `{name}({documented[name]})` but the code says `{name}({signature(obj)})`"


def test_everything_the_harness_package_exports_is_documented():
    import harness

    missing = [name for name in harness.__all__ if f"### `harness.{name}`" not in API]
    assert not missing, f"docs/api.md: no section for harness.{', harness.'.join(missing)}"


def test_every_context_and_task_method_is_documented_with_its_signature():
    documented = headings()
    for prefix, cls in INSTANCES.items():
        for name, method in vars(cls).items():
            if name.startswith("_") or not inspect.isfunction(method):
                continue
            assert method.__doc__, f"{cls.__name__}.{name} has no docstring"
            assert documented.get(f"{prefix}.{name}") == signature(method), \
                f"docs/api.md: no section `{prefix}.{name}({signature(method)})`"


def test_every_attribute_a_plugin_is_handed_is_documented():
    names = [f"ctx.{f.name}" for f in dataclasses.fields(CellContext)]
    names += [f"ctx.recorder.{f.name}" for f in dataclasses.fields(Recorder)] + ["ctx.recorder.point("]
    names += [f"split.{f.name}" for f in dataclasses.fields(Split)]
    names += [f"split.{n}(" for n, f in vars(Split).items() if inspect.isfunction(f) and not n.startswith("_")]
    names += [f"task.{n}" for n, f in vars(Task).items() if isinstance(f, property)] + ["task.params", "task.spec"]
    missing = [name for name in names if f"`{name}" not in API]
    assert not missing, f"docs/api.md does not document: {', '.join(missing)}"


def test_every_documented_signature_exists_in_the_code():
    """No stale entry: every heading names a real object, and a parameter list matches the code's."""
    for name, params in headings().items():
        obj = resolve(name)
        if params is not None:
            assert params == signature(obj), f"docs/api.md: `{name}({params})` but the code says `{signature(obj)}`"


def test_every_registration_keyword_and_metric_of_the_built_ins_is_documented():
    built_ins = Registry(strict=True).load_entry_points()
    keywords = {key for spec in built_ins.all() for key in spec.extra}
    missing = [key for key in sorted(keywords) if f"`{key}=" not in API]
    assert not missing, f"docs/api.md: registration keywords not in the table: {missing}"
    measures = {m.name for spec in built_ins.all() for m in spec.measures}
    missing = [m for m in sorted(measures) if not any(f"`{domain}/{m}`" in API for domain in ("restricted", "original"))]
    assert not missing, f"docs/api.md: metric names not in the naming table: {missing}"
