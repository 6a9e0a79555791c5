"""Grid expansion: scenarios x starts x attack configs x seeds -> cells with content keys (a DAG).

`resolve` checks every plugin name and parameter without importing torch (what `validate` runs);
`build_cells` adds the data fingerprints and computes each cell's key: a hash of its normalised config,
the plugin versions, the keys of its inputs and the data fingerprint. Scratch and original cells do not
depend on any defense, so every defense row shares them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

from harness.config import AttackEntry, Experiment, Scenario
from harness.names import OPTIMIZERS
from harness.registry import DEFAULT_TASKS, ConfigError, PluginSpec, ReferenceStart, did_you_mean
from harness.store import KINDS

THREAT_MODELS = {
    "white-box": "white-box attacker with the released weights, who knows the defense and holds labelled "
                 "restricted-domain data (the adversary half); the defender never sees that half",
    "black-box": "black-box attacker who may only query the released model's API ({api}) within a counted query "
                 "budget, knows the defense and holds restricted-domain data (the adversary half); the defender "
                 "never sees that half",
}


@dataclass(frozen=True)
class AttackConfig:
    label: str
    plugin: str
    params: dict
    suites: tuple[tuple[str, str], ...]  # (suite, label in that suite)

    def identity(self) -> str:
        return json.dumps({"plugin": self.plugin, "params": self.params}, sort_keys=True)


@dataclass
class ResolvedScenario:
    """One scenario at one adversary budget (a scenario listing several budgets becomes one per budget,
    named `<name>@<budget>`; they share pretraining and defense cells)."""

    scenario: Scenario
    task: tuple[PluginSpec, dict]
    datasets: dict[str, tuple[PluginSpec, dict]]
    architecture: tuple[PluginSpec, dict]
    budget: str = "all"

    @property
    def name(self) -> str:
        sc = self.scenario
        return sc.name if len(sc.adversary_budgets) == 1 else f"{sc.name}@{self.budget}"

    def config(self) -> dict:
        """The scenario as attack cells see it, with every plugin parameter resolved."""
        return {**self.defense_config(), "name": self.name, "adversary_budget": self.budget}

    def defense_config(self) -> dict:
        """What a defense cell depends on: everything but the adversary's budget (the defender's data does not
        change with it)."""
        sc = self.scenario
        return {**sc.model_dump(exclude={"pretrain", "adversary_budgets"}),
                "task": {"name": self.task[0].name, "params": self.task[1]},
                "original": {"dataset": sc.original.dataset, "params": self.datasets["original"][1]},
                "restricted": {"dataset": sc.restricted.dataset, "params": self.datasets["restricted"][1]},
                "architecture": {"name": self.architecture[0].name, "params": self.architecture[1]}}

    def pretrain_config(self) -> dict:
        """What pretraining reads: the original domain, its preprocessing and held-out slice, the task and the
        architecture. Scenarios that agree on these share one pretrain cell."""
        return {k: v for k, v in self.defense_config().items() if k in PRETRAIN_READS}


PRETRAIN_FACTS = ("original_fingerprint", "original_train", "original_val", "num_classes")
PRETRAIN_READS = ("task", "original", "architecture", "image_size", "channels", "normalisation", "split_seed",
                  "validation_fraction")


@dataclass
class Resolved:
    experiment: Experiment
    scenarios: list[ResolvedScenario]
    defenses: list[tuple[str, PluginSpec, dict, int]]
    attacks: list[AttackConfig]
    specs: dict[str, PluginSpec]
    reference_starts: list[ReferenceStart]


@dataclass(frozen=True)
class Start:
    """Where an attack cell begins: a reference start (scratch, original, or one an attack family declares)
    or a defense's released model. `name` is what the store's `cells.start` says."""

    name: str
    source: str  # fresh | original | none | defense
    input: "Cell | None" = None
    defense: dict | None = None

    def applies_to(self, attack_spec: PluginSpec) -> bool:
        """Defenses are attacked by every attack; a reference start only by the attacks that declare it."""
        return self.source == "defense" or any(s.name == self.name for s in attack_spec.starts)


@dataclass
class Cell:
    key: str
    kind: str
    scenario: str
    start: str
    attack: str
    seed: int
    config: dict
    versions: dict
    deps: list[str] = field(default_factory=list)
    labels: dict[str, None] = field(default_factory=dict)  # an attack cell's config labels, in plan order (one
    # cell may serve several: the same params under two labels, or a start that ignores what they differ in)

    @property
    def title(self) -> str:
        return " ".join(p for p in (self.kind, self.scenario, self.start, self.attack, f"seed={self.seed}") if p)


def _expand(entry_params: dict, spec: PluginSpec, where: str) -> list[tuple[dict, str]]:
    """List values of non-list parameters expand to their cross-product; the label names what varies."""
    declared = {p.name: p for p in spec.params}
    varying = {k: v for k, v in entry_params.items()
               if isinstance(v, list) and k in declared and declared[k].type != "list"}
    for name, values in varying.items():
        if not values:
            raise ConfigError("an empty list expands to no configuration at all; give at least one value",
                              where=f"{where}.{name}")
    if not varying:
        return [(entry_params, "")]
    out = []
    for combo in itertools.product(*varying.values()):
        params = {**entry_params, **dict(zip(varying, combo))}
        out.append((params, " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in zip(varying, combo))))
    return out


def _attack_configs(entries: list[AttackEntry], registry) -> list[AttackConfig]:
    by_identity: dict[str, AttackConfig] = {}
    order: list[str] = []
    for i, entry in enumerate(entries):
        where = f"attacks[{i}]"
        if entry.suite is not None:
            suite = registry.get("suite", entry.suite, where=f"{where}.suite")
            items = suite.extra.get("entries", [])
            if entry.only is not None:
                labels = [item["label"] for item in items]
                for j, wanted in enumerate(entry.only):
                    if wanted not in labels:
                        raise ConfigError(f"suite {entry.suite!r} has no entry {wanted!r}{did_you_mean(wanted, labels)}",
                                          where=f"{where}.only[{j}]")
                items = [item for item in items if item["label"] in entry.only]
            suite_name = entry.suite
        else:
            items = [{"label": entry.label or entry.plugin, "plugin": entry.plugin, "params": {}}]
            suite_name = "custom"
        for item in items:
            spec = registry.get("attack", item["plugin"], where=f"{where}.plugin")
            merged = {**item.get("params", {}), **entry.params}
            for params, suffix in _expand(merged, spec, f"{where}.params"):
                resolved = spec.resolve(params, f"{where}.params")
                label = f"{item['label']} {suffix}".strip()
                config = AttackConfig(label, spec.name, resolved, ((suite_name, label),))
                key = config.identity()
                if key in by_identity:  # the same attack reached through two suites runs once, listed in both
                    known = by_identity[key]
                    by_identity[key] = AttackConfig(known.label, known.plugin, known.params,
                                                    tuple(dict.fromkeys(known.suites + ((suite_name, label),))))
                    continue
                by_identity[key] = config
                order.append(key)
    return [by_identity[k] for k in order]


def resolve(experiment: Experiment, registry) -> Resolved:
    """Check every plugin and parameter named by the experiment (no torch, no data)."""
    try:
        return _resolve(experiment, registry)
    except ConfigError as exc:
        message = str(exc).removeprefix(f"{exc.where}: ") if exc.where else str(exc)
        raise ConfigError(message, where=f"{experiment.source}: {exc.where}" if exc.where else experiment.source) from None


def _serving(spec: PluginSpec, task: PluginSpec, where: str) -> PluginSpec:
    """`spec`, if it works on scenarios of `task`; else a ConfigError naming the tasks it does serve."""
    if not spec.serves(task.name):
        served = spec.extra.get("tasks", DEFAULT_TASKS)
        raise ConfigError(f"{spec.kind} {spec.name!r} does not work on {task.name!r} scenarios (it serves: "
                          f"{', '.join(served)})", where=where)
    return spec


def _construct(task: PluginSpec, params: dict, where: str) -> None:
    """Build the task object once at validate time, so checks in its constructor (which must stay light: no
    torch) reject bad parameters before anything runs; its ConfigErrors name the scenario."""
    from harness.tasks import load_task

    try:
        load_task(task, params)
    except ConfigError as exc:
        raise ConfigError(str(exc).removeprefix(f"{exc.where}: "), where=f"{where}.{exc.where}" if exc.where
                          else where) from None


def _check_attacks(attacks: list[AttackConfig], task: PluginSpec, registry, where: str) -> None:
    """Every attack config suits the scenario's task: declared tasks, then the attack's own `check(params, task)`."""
    for attack in attacks:
        spec = _serving(registry.get("attack", attack.plugin), task, f"{where} (attack {attack.label!r})")
        check = spec.extra.get("check")
        problem = check(attack.params, task) if check else None
        if problem:
            raise ConfigError(f"attack {attack.label!r}: {problem}", where=where)


def _resolve(experiment: Experiment, registry) -> Resolved:
    specs: dict[str, PluginSpec] = {}
    scenarios = []
    for i, sc in enumerate(experiment.scenarios):
        task = registry.get("task", sc.task.name, where=f"scenarios[{i}].task.name")
        task_params = task.resolve(sc.task.params, f"scenarios[{i}].task.params")
        _construct(task, task_params, f"scenarios[{i}]")
        datasets = {}
        for role in ("original", "restricted"):
            ref = getattr(sc, role)
            spec = registry.get("dataset", ref.dataset, where=f"scenarios[{i}].{role}.dataset")
            datasets[role] = (spec, spec.resolve(ref.params, f"scenarios[{i}].{role}.params"))
            check = spec.extra.get("check")  # a dataset wrapping another checks it here (no data is read)
            problem = check(datasets[role][1], registry) if check else None
            if problem:
                raise ConfigError(problem, where=f"scenarios[{i}].{role}.params")
        arch = _serving(registry.get("architecture", sc.architecture.name, where=f"scenarios[{i}].architecture.name"),
                        task, f"scenarios[{i}].architecture.name")
        if sc.pretrain.objective == "simclr" and not task.extra.get("head", True):
            raise ConfigError(f"objective simclr trains a representation (the model's feature_path), which models of "
                              f"the {task.name!r} task do not declare; use objective: task",
                              where=f"scenarios[{i}].pretrain.objective")
        if sc.pretrain.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {sc.pretrain.optimizer!r}{did_you_mean(sc.pretrain.optimizer, OPTIMIZERS)}",
                              where=f"scenarios[{i}].pretrain.optimizer")
        arch_params = arch.resolve(sc.architecture.params, f"scenarios[{i}].architecture.params")
        scenarios.extend(ResolvedScenario(sc, (task, task_params), datasets, (arch, arch_params), budget)
                         for budget in sc.adversary_budgets)
    defenses = []
    for i, entry in enumerate(experiment.defenses):
        spec = registry.get("defense", entry.plugin, where=f"defenses[{i}].plugin")
        for rs in scenarios:
            _serving(spec, rs.task[0], f"defenses[{i}].plugin (scenario {rs.scenario.name!r})")
        defenses.append((entry.label, spec, spec.resolve(entry.params, f"defenses[{i}].params"), entry.seed))
    attacks = _attack_configs(experiment.attacks, registry)
    if not attacks:
        raise ConfigError("no attack configuration: the plan would have zero attack cells", where="attacks")
    for i, rs in enumerate(scenarios):
        _check_attacks(attacks, rs.task[0], registry, f"scenarios[{i}].task")
    for kind in ("task", "dataset", "architecture", "defense", "attack"):
        specs.update({f"{kind}:{s.name}": s for s in registry.all(kind)})
    starts = _reference_starts(experiment.baselines, [specs[f"attack:{a.plugin}"] for a in attacks])
    return Resolved(experiment, scenarios, defenses, attacks, specs, starts)


def _reference_starts(baselines: list[str] | None, attack_specs: list[PluginSpec]) -> list[ReferenceStart]:
    """The reference starts the experiment's attacks declare, in order; `baselines` (if given) picks among them.

    Two attacks declaring one name must mean the same start."""
    declared: dict[str, ReferenceStart] = {}
    for spec in attack_specs:
        for start in spec.starts:
            known = declared.setdefault(start.name, start)
            if known.source != start.source:
                raise ConfigError(f"attacks declare reference start {start.name!r} with two sources "
                                  f"({known.source!r}, {start.source!r}), one of them by {spec.name!r}",
                                  where="attacks")
    if baselines is None:
        return list(declared.values())
    for i, name in enumerate(baselines):
        if name not in declared:
            raise ConfigError(f"no attack of this experiment runs from {name!r}{did_you_mean(name, list(declared))}; "
                              f"their reference starts: {', '.join(declared)}", where=f"baselines[{i}]")
    if len(set(baselines)) != len(baselines):
        raise ConfigError("each baseline may be listed once", where="baselines")
    return [declared[name] for name in baselines]


def content_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def attack_key(kind: str, config: dict, seed: int, versions: dict) -> str:
    """The key of an attack cell (or of a trial, harness/trials.py): its config less what is presentation (the
    scale and threat statements, the attack's label), so the same config under two labels is one cell."""
    identity = {k: v for k, v in config.items() if k not in ("scale", "threat")}
    identity["attack"] = {k: config["attack"][k] for k in ("plugin", "params")}
    return content_key({"kind": kind, **identity, "seed": seed, "versions": versions})


def stage_seed(experiment: Experiment, stage: str, base: int, seed: int) -> int:
    """The seed of a pretrain or defense cell feeding attacks of run seed `seed`: its own seed, plus the run
    seed when the experiment replicates that stage (so run seed 0 reuses the unreplicated cell)."""
    return base + seed if stage in experiment.replicate else base


def build_cells(resolved: Resolved, data_facts: dict[str, dict], precision: str = "fp32") -> list[Cell]:
    """All cells of the grid in dependency order, each once. `data_facts[scenario]` holds fingerprints and sizes
    (keyed by the resolved scenario's name).

    The precision is part of every key (bf16 changes results); the device is not (float noise only). A pretrain
    key depends only on what pretraining reads, a defense key on everything but the adversary's budget.
    """
    exp = resolved.experiment
    cells: dict[str, Cell] = {}
    for rs in resolved.scenarios:
        sc = rs.scenario
        facts = data_facts[rs.name]
        arch_spec = rs.architecture[0]
        base_versions = {f"dataset:{s.name}": s.cache_version for s, _ in rs.datasets.values()}
        base_versions[f"task:{rs.task[0].name}"] = rs.task[0].cache_version
        base_versions[f"architecture:{arch_spec.name}"] = arch_spec.cache_version
        pretrain_versions = {f"dataset:{rs.datasets['original'][0].name}": rs.datasets["original"][0].cache_version,
                             **{k: v for k, v in base_versions.items() if not k.startswith("dataset:")}}
        common = {"scenario": rs.config(), "data": facts, "precision": precision}
        defense_common = {"scenario": rs.defense_config(), "precision": precision,
                          "data": {k: v for k, v in facts.items() if not k.startswith("adversary_")}}

        for seed in exp.seeds:
            pretrain_seed = stage_seed(exp, "pretrain", sc.pretrain.seed, seed)
            pretrain_config = {"scenario": rs.pretrain_config(), "precision": precision,
                               "data": {k: facts[k] for k in PRETRAIN_FACTS},
                               "pretrain": {**sc.pretrain.cell_settings(), "seed": pretrain_seed}}
            pretrain = Cell(content_key({"kind": "pretrain", **pretrain_config, "versions": pretrain_versions}),
                            "pretrain", sc.name, "original", "", pretrain_seed, pretrain_config, pretrain_versions)
            cells.setdefault(pretrain.key, pretrain)

            starts = [Start(s.name, s.source, pretrain if s.source == "original" else None)
                      for s in resolved.reference_starts]
            for label, spec, params, defense_seed in resolved.defenses:
                versions = {**base_versions, f"defense:{spec.name}": spec.cache_version}
                defense = {"name": label, "plugin": spec.name, "params": params}
                config = {**defense_common, "defense": defense, "inputs": [pretrain.key]}
                defense_seed = stage_seed(exp, "defense", defense_seed, seed)
                cell = Cell(content_key({"kind": "defend", **config, "seed": defense_seed, "versions": versions}),
                            "defend", sc.name, f"defense:{label}", "", defense_seed, config, versions, [pretrain.key])
                cells.setdefault(cell.key, cell)
                starts.append(Start(f"defense:{label}", "defense", cell, defense))

            for start in starts:
                for attack in resolved.attacks:
                    spec = resolved.specs[f"attack:{attack.plugin}"]
                    if not start.applies_to(spec):
                        continue
                    versions = {**(start.input.versions if start.input else base_versions),
                                f"attack:{spec.name}": spec.cache_version}
                    inputs = [start.input.key] if start.input else []
                    params = params_read_from(spec, start.name, attack.params)
                    config = {**common, "start": start.name, "source": start.source, "defense": start.defense,
                              "inputs": inputs,
                              "attack": {"plugin": attack.plugin, "params": params, "label": attack.label},
                              "scale": _scale(sc, facts, attack, exp.replicate),
                              "threat": THREAT_MODELS[spec.access].format(api=sc.api)}
                    key = attack_key("attack", config, seed, versions)
                    cell = cells.setdefault(key, Cell(key, "attack", rs.name, start.name, attack.label, seed, config,
                                                      versions, inputs))
                    cell.labels.setdefault(attack.label)
    return _dependency_order(list(cells.values()))


def _dependency_order(cells: list[Cell]) -> list[Cell]:
    """Pretrain cells, then defense cells, then attack cells (each in plan order)."""
    return sorted(cells, key=lambda cell: KINDS.index(cell.kind))


def params_read_from(spec: PluginSpec, start: str, params: dict) -> dict:
    """The attack parameters a cell from `start` is keyed on: all but those that start declares it ignores."""
    ignored = next((s.ignores for s in spec.starts if s.name == start), ())
    return {k: v for k, v in params.items() if k not in ignored}


def attack_runs(resolved: Resolved) -> int:
    """How many distinct attack cells a scenario runs per seed (configs that differ only in what a start
    ignores are one cell from it): what `validate` counts."""
    starts = [Start(s.name, s.source) for s in resolved.reference_starts]
    starts += [Start(f"defense:{label}", "defense") for label, *_ in resolved.defenses]
    runs = set()
    for start in starts:
        for attack in resolved.attacks:
            spec = resolved.specs[f"attack:{attack.plugin}"]
            if start.applies_to(spec):
                runs.add((start.name, attack.plugin, json.dumps(params_read_from(spec, start.name, attack.params),
                                                                sort_keys=True, default=str)))
    return len(runs)


def memberships(cells: list[Cell], resolved: Resolved):
    """(key, suite, label) rows: which suites each attack cell belongs to, and under which label."""
    by_label = {a.label: a for a in resolved.attacks}
    for cell in cells:
        if cell.kind == "attack":
            for config_label in cell.labels or [cell.attack]:
                for suite, label in by_label[config_label].suites:
                    yield cell.key, suite, label


def _scale(sc: Scenario, facts: dict, attack: AttackConfig, replicate: list[str]) -> dict:
    """The CPU scale a leaderboard states above its tables, with the stages its seeds replicate."""
    return {"architecture": sc.architecture.name, "image_size": sc.image_size,
            "original_train": facts["original_train"], "adversary_train": facts["adversary_train"],
            "adversary_val": facts["adversary_val"], "original_val": facts["original_val"],
            "restricted_test": facts["restricted_test"], "attack_epochs": attack.params.get("epochs"),
            "pretrain_epochs": sc.pretrain.epochs, "restricted_split": sc.restricted_split,
            "replicated_stages": "+".join(replicate)}
