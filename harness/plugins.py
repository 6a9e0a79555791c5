"""Plugin discovery: built-ins and third-party packages alike come in through the `untunable` entry points.

Each entry point is loaded in isolation: one that fails to import, misspells a hook or collides with
another plugin's name is reported and skipped (fatal with UNTUNABLE_STRICT_PLUGINS=1).
UNTUNABLE_LOAD_PLUGINS=a,b loads only the named entry points.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from importlib import metadata

import pluggy

from harness.hookspecs import PROJECT, Specs
from harness.registry import (ACCESS_LEVELS, DEFAULT_STARTS, Column, ConfigError, Measure, Param, PluginSpec,
                              ReferenceStart, did_you_mean)

HOOK_KINDS = {
    "register_tasks": "task",
    "register_datasets": "dataset",
    "register_architectures": "architecture",
    "register_defenses": "defense",
    "register_attacks": "attack",
    "register_suites": "suite",
    "register_metrics": "metric",
    "register_executors": "executor",
    "register_reporters": "reporter",
}


class PluginError(RuntimeError):
    """A plugin could not be loaded (fatal only under strict mode)."""


@dataclass
class LoadError:
    plugin: str
    distribution: str
    message: str
    detail: str


class Registry:
    """All plugins, by kind and name, with the errors met while loading them."""

    def __init__(self, strict: bool | None = None, allow: list[str] | None = None):
        self.strict = os.environ.get("UNTUNABLE_STRICT_PLUGINS") == "1" if strict is None else strict
        env_allow = os.environ.get("UNTUNABLE_LOAD_PLUGINS")
        self.allow = allow if allow is not None else ([a.strip() for a in env_allow.split(",") if a.strip()]
                                                      if env_allow else None)
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(Specs)
        self.specs: dict[str, dict[str, PluginSpec]] = {kind: {} for kind in HOOK_KINDS.values()}
        self.errors: list[LoadError] = []
        self.entry_points: dict[str, str] = {}

    # -- loading -------------------------------------------------------------------------------
    def load_entry_points(self) -> "Registry":
        for ep in sorted(metadata.entry_points(group=PROJECT), key=lambda e: e.name):
            if self.allow is not None and ep.name not in self.allow:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the tool down
                self._fail(ep.name, dist, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
                continue
            self.add(module, name=ep.name, distribution=dist, dist_version=version)
        return self

    def add(self, module, *, name: str, distribution: str = "?", dist_version: str = "?") -> bool:
        """Register one plugin object (module or instance) and collect what it registers."""
        try:
            self.pm.register(module, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            self._fail(name, distribution, f"invalid hooks: {exc}")
            return False
        self.entry_points[name] = distribution
        collected: list[PluginSpec] = []
        try:
            for hook_name, kind in HOOK_KINDS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is module:
                        impl.function(register=self._collector(kind, distribution, dist_version, collected))
        except Exception as exc:
            self.pm.unregister(module)
            self._fail(name, distribution, f"registration raised {type(exc).__name__}: {exc}")
            return False
        clash = [s for s in collected if s.name in self.specs[s.kind]]
        if clash:
            self.pm.unregister(module)
            s = clash[0]
            other = self.specs[s.kind][s.name].distribution
            self._fail(name, distribution, f"{s.kind} name {s.name!r} is registered by both {other!r} and {distribution!r}")
            return False
        for spec in collected:
            self.specs[spec.kind][spec.name] = spec
        return True

    def _collector(self, kind, distribution, dist_version, collected):
        def register(name: str, *, description: str = "", factory=None, params=(), version: str = "0", **extra):
            if not isinstance(name, str) or not name:
                raise PluginError(f"a {kind} must be registered with a non-empty name")
            if any(s.kind == kind and s.name == name for s in collected):
                raise PluginError(f"{kind} {name!r} registered twice by the same plugin")
            params = tuple(params)
            if not all(isinstance(p, Param) for p in params):
                raise PluginError(f"{kind} {name!r}: params must be harness.Param objects")
            if factory is not None and not callable(factory) and ":" not in str(factory):
                raise PluginError(f"{kind} {name!r}: factory must be a function or a 'module:function' string, "
                                  f"not {factory!r}")
            extra = _checked_extra(kind, name, extra, params)
            collected.append(PluginSpec(kind=kind, name=name, description=description.strip().splitlines()[0]
                                        if description.strip() else "", factory=factory, params=params,
                                        version=str(version), distribution=distribution,
                                        dist_version=dist_version, extra=extra))
        return register

    def _fail(self, plugin, distribution, message):
        error = LoadError(plugin, distribution, message, traceback.format_exc())
        if self.strict:
            raise PluginError(f"plugin {plugin!r} from {distribution!r}: {message}")
        self.errors.append(error)

    # -- lookup --------------------------------------------------------------------------------
    def get(self, kind: str, name: str, where: str = "") -> PluginSpec:
        try:
            return self.specs[kind][name]
        except KeyError:
            known = sorted(self.specs[kind])
            raise ConfigError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; known: {', '.join(known) or 'none'}",
                              where=where) from None

    def all(self, kind: str | None = None) -> list[PluginSpec]:
        kinds = [kind] if kind else list(self.specs)
        return [spec for k in kinds for spec in sorted(self.specs[k].values(), key=lambda s: s.name)]

    def notify(self, hook: str, **kwargs) -> None:
        """Call a lifecycle hook on every plugin that implements it."""
        getattr(self.pm.hook, hook)(**kwargs)


def _checked_extra(kind: str, name: str, extra: dict, params: tuple) -> dict:
    """Normalise the descriptor fields the core reads: `measures` (Measure objects), a metric's `columns` (Column
    objects) and `tasks` (names or "any")."""
    measures = tuple(extra.get("measures", ()))
    if not all(isinstance(m, Measure) for m in measures):
        raise PluginError(f"{kind} {name!r}: measures must be harness.Measure objects")
    if kind == "task" and not measures:
        raise PluginError(f"task {name!r} must declare at least one measure (the first one ranks its scenarios)")
    columns = tuple(extra.get("columns", ()))
    if not all(isinstance(c, Column) for c in columns):
        raise PluginError(f"{kind} {name!r}: columns must be harness.Column objects")
    tasks = extra.get("tasks")
    if tasks is not None and tasks != "any":
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
            raise PluginError(f"{kind} {name!r}: tasks must be a list of task names or \"any\"")
        tasks = tuple(tasks)
    extra = {**extra, "measures": measures, **({"columns": columns} if columns else {}),
             **({"tasks": tasks} if tasks is not None else {})}
    return _checked_attack(name, extra, params) if kind == "attack" else extra


def _checked_attack(name: str, extra: dict, params: tuple) -> dict:
    """An attack's reference starts (ReferenceStart objects) and access level; a black-box one has a query budget."""
    starts = tuple(extra.get("starts", DEFAULT_STARTS))
    if not starts or not all(isinstance(s, ReferenceStart) for s in starts):
        raise PluginError(f"attack {name!r}: starts must be a non-empty list of harness.ReferenceStart objects")
    access = extra.get("access", "white-box")
    if access not in ACCESS_LEVELS:
        raise PluginError(f"attack {name!r}: access must be one of {list(ACCESS_LEVELS)}, not {access!r}")
    if access == "black-box" and not any(p.name == "queries" and p.type == "int" for p in params):
        raise PluginError(f"attack {name!r}: a black-box attack declares an int 'queries' parameter (its query budget)")
    return {**extra, "starts": starts, "access": access}


_DEFAULT: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry().load_entry_points()
    return _DEFAULT


def reset_registry() -> None:
    """Forget the loaded plugins (tests, or after installing a package)."""
    global _DEFAULT
    _DEFAULT = None
