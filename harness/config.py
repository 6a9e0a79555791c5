"""Experiment files (YAML) -> validated, typed objects.

Unknown keys, wrong types and unknown plugin names are errors that name the file and the field path,
with a did-you-mean; `untunable validate FILE` runs exactly this without running anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, \
    model_validator

from harness import validation as rules
from harness.registry import ConfigError, did_you_mean
from harness.safe_yaml import read_yaml

RESTRICTED_SPLITS = "halves | none | fraction:<f>"
ADVERSARY_BUDGETS = "all | per_class:<n> | fraction:<f>"
STAGES = ("pretrain", "defense", "attack")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


# Integers are strict (true is not 1, 1e30 is not an integer); floats are finite and not booleans.
Int = Annotated[int, Field(strict=True)]
Seed = Annotated[int, Field(strict=True, ge=0, le=rules.MAX_SEED)]
Float = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
Name = Annotated[str, AfterValidator(rules.check_name)]
Label = Annotated[str, AfterValidator(rules.check_label)]
Device = Annotated[str, AfterValidator(rules.check_device)]
ContainedPath = Annotated[str, AfterValidator(rules.check_contained)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRef(Strict):
    dataset: Label
    params: dict[str, Any] = Field(default_factory=dict)


class ArchitectureRef(Strict):
    name: Label
    params: dict[str, Any] = Field(default_factory=dict)


class TaskRef(Strict):
    """The scenario's task family: `task: denoising` or `task: {name: denoising, params: {...}}`."""

    name: str = "classification"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value


class SimCLRSettings(Strict):
    """The `simclr` pretraining objective's knobs (docs/extraction.md)."""

    temperature: Float = Field(0.5, gt=0)
    min_crop: Float = Field(0.5, gt=0, le=1)  # smallest share of the image area a random crop keeps
    flip: bool = True
    noise_std: Float = Field(0.1, ge=0)  # Gaussian pixel noise, in normalised units
    projection_dim: Int = Field(64, ge=1, le=rules.MAX_BATCH)


class PretrainSettings(Strict):
    """How the unprotected original is trained on the original domain (docs/algorithms.md §9): with the task's
    own pretraining objective, or self-supervised (`objective: simclr`, labels unused)."""

    objective: Literal["task", "simclr"] = "task"
    simclr: SimCLRSettings | None = None
    epochs: Int = Field(20, ge=1, le=rules.MAX_EPOCHS)
    optimizer: str = "adam"
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = Field(0.0, ge=0)
    batch_size: Int = Field(64, ge=1, le=rules.MAX_BATCH)
    seed: Seed = 0

    @model_validator(mode="after")
    def _objective_settings(self):
        if self.simclr is not None and self.objective != "simclr":
            raise ValueError("'simclr' sets the simclr objective's knobs; it needs objective: simclr")
        return self

    def cell_settings(self) -> dict:
        """What the pretrain cell is keyed and seeded by. The task objective's cell holds only the classic fields,
        so its key and seed (and curves) are those of stores written before objectives were selectable."""
        if self.objective == "task":
            return self.model_dump(exclude={"objective", "simclr"})
        return {**self.model_dump(exclude={"simclr"}), "simclr": (self.simclr or SimCLRSettings()).model_dump()}


class Scenario(Strict):
    name: Label
    api: Literal["logits", "probabilities", "label", "representation"] = "logits"  # what a black-box attack sees
    task: TaskRef = Field(default_factory=TaskRef)
    original: DatasetRef
    restricted: DatasetRef
    architecture: ArchitectureRef
    image_size: Int = Field(28, ge=4, le=rules.MAX_IMAGE_SIZE)
    channels: Int = Field(1, ge=1, le=4)
    normalisation: Literal["per_domain", "imagenet", "none"] = "per_domain"
    restricted_split: str = "halves"
    split_seed: Seed = 0
    validation_fraction: Float = Field(0.1, gt=0, lt=0.5)
    adversary_budgets: list[str] = Field(default_factory=lambda: ["all"], min_length=1)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)

    @field_validator("restricted_split")
    @classmethod
    def _split(cls, value: str) -> str:
        if value in ("halves", "none"):
            return value
        head, _, share = value.partition(":")
        if head == "fraction" and share.replace(".", "", 1).isdigit() and 0 < float(share) < 1:
            return value
        raise ValueError(f"expected {RESTRICTED_SPLITS} with 0 < f < 1, got {value!r}")

    @field_validator("adversary_budgets")
    @classmethod
    def _budgets(cls, values: list[str]) -> list[str]:
        for value in values:
            head, _, amount = value.partition(":")
            if value == "all" or (head == "per_class" and amount.isdigit() and int(amount) >= 2) or (
                    head == "fraction" and amount.replace(".", "", 1).isdigit() and 0 < float(amount) <= 1):
                continue
            raise ValueError(f"expected {ADVERSARY_BUDGETS} with n >= 2 and 0 < f <= 1, got {value!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"adversary budgets must be distinct, got {values}")
        return values


class DefenseEntry(Strict):
    plugin: Label
    name: Label | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    seed: Seed = 0

    @property
    def label(self) -> str:
        return self.name or self.plugin


class AttackEntry(Strict):
    """Either a named suite (with optional parameter overrides) or one attack plugin configuration."""

    suite: Label | None = None
    plugin: Label | None = None
    label: Label | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    only: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.suite is None) == (self.plugin is None):
            raise ValueError("give exactly one of 'suite' (a named attack suite) or 'plugin' (one attack)")
        if self.only is not None and self.suite is None:
            raise ValueError("'only' selects entries of a suite; it needs 'suite'")
        return self


class Experiment(Strict):
    name: Name
    results: ContainedPath | None = None
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    replicate: list[Literal["pretrain", "defense", "attack"]] = Field(default_factory=lambda: ["attack"])
    device: Device = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    workers: Int = Field(2, ge=0, le=rules.MAX_WORKERS)
    data_root: ContainedPath | None = None
    cache_dir: ContainedPath | None = None
    baselines: list[str] | None = None  # reference starts; None = every one the experiment's attacks declare
    scenarios: list[Scenario] = Field(min_length=1)
    defenses: list[DefenseEntry] = Field(default_factory=list)
    attacks: list[AttackEntry] = Field(min_length=1)

    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _attacks_replicated(self):
        if "attack" not in self.replicate:
            raise ValueError("replicate must include 'attack' (the seeds always reach the attacks); "
                             f"expected a list of {', '.join(STAGES)}")
        return self

    @model_validator(mode="after")
    def _unique_names(self):
        for what, names in (("scenarios names", [s.name for s in self.scenarios]),
                            ("defenses names", [d.label for d in self.defenses]),
                            ("seeds", self.seeds)):
            duplicates = sorted({str(n) for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what} must be unique (a repeat would plan the same cells twice); "
                                 f"repeated: {', '.join(duplicates)}")
        if self.baselines == [] and not self.defenses:
            raise ValueError("no baselines and no defenses: nothing to attack, the plan would have zero cells")
        return self

    def results_dir(self, override: str | None = None) -> Path:
        """Where the store lives: --results, else the file's `results`, else runs/<name> (relative to the cwd)."""
        return Path(override or self.results or Path("runs") / self.name)


def _field_path(loc: tuple) -> str:
    return ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc).replace(".[", "[")


def _explain(error: dict, model: type[BaseModel]) -> str:
    """One readable sentence for a pydantic error, with a did-you-mean for unknown keys."""
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        return f"unknown key{did_you_mean(error['loc'][-1], known)}; expected one of: {', '.join(known)}"
    if error["type"] == "missing":
        return "required field is missing"
    return error["msg"].removeprefix("Value error, ")


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (nested) model that `loc` points into."""
    current = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return [name for name in (current.model_fields if current else {}) if name != "source"]


def parse_experiment(data: Any, source: str = "<experiment>") -> Experiment:
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of experiment settings at the top level", where=source)
    try:
        return Experiment.model_validate({**data, "source": source})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = f"{source}: {_field_path(error['loc'])}" if error["loc"] else source
        raise ConfigError(_explain(error, Experiment), where=where) from None


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; every problem is a ConfigError naming the file."""
    return parse_experiment(read_yaml(path), source=str(path))


def with_overrides(experiment: Experiment, flags: dict[str, tuple[str, Any]]) -> Experiment:
    """The experiment with command-line values (`{field: (flag, value)}`, None = not given) held to the file's rules."""
    for field, (flag, value) in flags.items():
        if value is None:
            continue
        try:
            experiment = Experiment.model_validate({**experiment.model_dump(), "source": experiment.source,
                                                    field: value})
        except ValidationError as exc:
            raise ConfigError(_explain(exc.errors()[0], Experiment), where=f"{flag} {value}".strip()) from None
    return experiment
