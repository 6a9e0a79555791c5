"""`untunable new defense|attack NAME`: a ready-to-install plugin package, so a first cell takes minutes.

The package is what docs/writing-plugins.md describes: a pyproject with the `untunable` entry point, one
plugin module written against the task-neutral context (`ctx.objective`, `ctx.record`), a test calling
`harness.testing.check_plugin`, and a README with the next commands. The plugin works as written (it is a
weak but real defense or attack), so the package passes its own test before the author changes a line.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from harness.registry import ConfigError

KINDS = ("defense", "attack")
NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "untunable-$name"
version = "0.1.0"
description = "The $name $kind for untunable."
requires-python = ">=3.10"
dependencies = ["untunable"]

[project.optional-dependencies]
test = ["pytest>=8"]

# untunable finds plugins through this entry-point group; the value is the module holding the hooks.
[project.entry-points.untunable]
$name = "$package.plugin"

[tool.setuptools.packages.find]
include = ["$package*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

DEFENSE = '''\
"""$name: an untunable defense (written by `untunable new defense $name`; make it yours).

As written it is a naive defense: it alternates a descent step on original-domain batches with a bounded
ascent step on the defender's restricted-domain batches. Plain fine-tuning undoes it quickly, which makes
it a useful first row next to the built-in `none`. Replace the loop with your method; keep the recording
calls (they are what the leaderboard and `untunable plugin-check` read). Every object `ctx` hands you is
described in untunable's docs/api.md.
"""

from harness import Param, hookimpl


def defend(ctx, model):
    import torch  # heavy imports inside the function: `untunable plugins` and `validate` stay instant

    from harness.engine.data import cycling_batches

    params, original, restricted = ctx.params, ctx.original_train, ctx.restricted_train
    keep, block = ctx.objective("keep"), ctx.objective("block")  # the task's training loss, seeded streams
    from_original = cycling_batches(len(original), params["batch_size"], ctx.generator("original-batches"))
    from_restricted = cycling_batches(len(restricted), params["batch_size"], ctx.generator("restricted-batches"))
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    model.train()
    for step in range(1, params["steps"] + 1):
        good = original.subset(next(from_original))
        bad = restricted.subset(next(from_restricted))
        with ctx.autocast():
            ascent = block(model, bad.x, bad.y).clamp(max=params["ceiling"])
            loss = keep(model, good.x, good.y) - params["weight"] * ascent
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % params["record_every"] == 0:  # training progress: the task's measures against steps
            ctx.record(model, on="restricted", epoch=None, step=step)
    ctx.record_release(model, step=params["steps"])  # the released model, on both domains
    return model


@hookimpl
def register_defenses(register):
    register("$name", factory=defend, version="1",
             description="Descent on the original domain, bounded ascent on the restricted one (a starting point).",
             params=[Param("steps", "int", 200, min=1, help="optimizer steps"),
                     Param("lr", "float", 1e-3, min=0.0, help="Adam learning rate"),
                     Param("batch_size", "int", 64, min=1, help="batch size on each domain"),
                     Param("weight", "float", 0.5, min=0.0, help="weight of the restricted-domain ascent"),
                     Param("ceiling", "float", 3.0, min=0.0, help="the ascent stops pushing past this loss"),
                     Param("record_every", "int", 20, min=1, help="record training progress every N steps")],
             tiny_params={"steps": 4, "record_every": 2, "batch_size": 16})
'''

ATTACK = '''\
"""$name: an untunable attack (written by `untunable new attack $name`; make it yours).

As written it fine-tunes every weight of the start model with Adam on the adversary's data, and records the
task's measures on the restricted test set before training and after every epoch, and on the original
test set at the end. Replace the training with your method; keep the recording calls (they are the curve
the leaderboard ranks). Every object `ctx` hands you is described in untunable's docs/api.md.
"""

from harness import Param, hookimpl


def attack(ctx, model):
    import torch  # heavy imports inside the function: `untunable plugins` and `validate` stay instant

    from harness.engine.train import train_epochs

    epochs = ctx.params["epochs"]
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.params["lr"])
    ctx.record(model, on="restricted", epoch=0, step=0)
    train_epochs(model, ctx.restricted_train, optimizer, objective=ctx.objective("train"), epochs=epochs,
                 batch_size=ctx.params["batch_size"], generator=ctx.generator("batches"), precision=ctx.precision,
                 after_epoch=lambda epoch, steps: ctx.record(model, on="restricted", epoch=epoch, step=steps))
    ctx.record(model, on="original", epoch=epochs, step=None)
    return model


@hookimpl
def register_attacks(register):
    register("$name", factory=attack, version="1",
             description="Fine-tune every weight with Adam on the adversary data (a starting point).",
             params=[Param("epochs", "int", 5, min=1, help="training epochs"),
                     Param("lr", "float", 1e-3, min=0.0, help="Adam learning rate"),
                     Param("batch_size", "int", 64, min=1, help="batch size")],
             tiny_params={"epochs": 2, "batch_size": 32})
'''

TEST = '''\
"""untunable's conformance check: the plugin runs on a tiny CPU cell, records a curve, and is deterministic."""

from harness.testing import check_plugin


def test_${ident}_passes_the_plugin_check():
    assert check_plugin("$kind", "$name") == []
'''

README = """\
# untunable-$name

The `$name` $kind for untunable, made with `untunable new $kind $name`.

```
pip install -e .               # into the environment where untunable is installed
untunable plugins              # lists $name with this distribution and its version
python -m pytest               # tests/: untunable's conformance check (harness.testing.check_plugin)
untunable plugin-check $name   # the same check from the command line, timed
```

Use it in an experiment file:

```yaml
$usage
```

Edit `$package/plugin.py`. Bump `version=` in its `register(...)` call whenever a change alters results:
the version is part of every cell key, so cells of the old version are not reused. `tiny_params` are the
parameter values the conformance check runs with (keep them small: the check runs the plugin twice).
"""

USAGE = {"defense": "defenses:\n  - {plugin: $name}", "attack": "attacks:\n  - {plugin: $name, label: $name}"}


def check_name(kind: str, name: str, registry) -> None:
    """A NAME that is a valid plugin and distribution name, and not taken by an installed plugin."""
    if not NAME.match(name):
        raise ConfigError(f"{name!r} is not a plugin name: use lower-case letters, digits and single dashes, "
                          "starting with a letter (e.g. my-defense)", where=f"untunable new {kind}")
    taken = registry.specs[kind].get(name)
    if taken is not None:
        raise ConfigError(f"{kind} {name!r} is already registered by {taken.distribution!r}",
                          where=f"untunable new {kind}")


def scaffold(kind: str, name: str, directory: str | Path | None, registry) -> list[Path]:
    """Write the package for a new `kind` plugin called `name` into `directory` (default ./untunable-NAME)."""
    check_name(kind, name, registry)
    root = Path(directory) if directory else Path.cwd() / f"untunable-{name}"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError("exists and is not an empty folder (choose another with --dir)", where=str(root))
    values = {"name": name, "kind": kind, "package": "untunable_" + name.replace("-", "_"),
              "ident": name.replace("-", "_")}
    values["usage"] = Template(USAGE[kind]).substitute(values)
    files = {"pyproject.toml": PYPROJECT, "README.md": README, "tests/test_plugin.py": TEST,
             f"{values['package']}/__init__.py": f'"""The {name} {kind} for untunable (hooks in plugin.py)."""\n',
             f"{values['package']}/plugin.py": DEFENSE if kind == "defense" else ATTACK}
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
        written.append(path)
    return written
