"""Plugin discovery: entry points, isolation of broken plugins, strict mode, allow-list, collisions."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import pytest

from harness import Param, hookimpl
from harness.cli import main
from harness.plugins import PluginError, Registry
from harness.registry import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


def plugin(**hooks):
    """A plugin object from plain functions, as a third-party module would define them."""
    return types.SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def offers(name, kind_hook="register_attacks"):
    return plugin(**{kind_hook: lambda register: register(name, description=f"{name} plugin", factory=len)})


def test_builtins_come_through_entry_points():
    reg = Registry(strict=False).load_entry_points()
    names = {(s.kind, s.name) for s in reg.all()}
    assert {("dataset", "fashion-mnist"), ("dataset", "digits"), ("architecture", "cnn-s"),
            ("attack", "finetune"), ("defense", "none"), ("executor", "local")} <= names
    assert all(s.distribution == "untunable" for s in reg.all() if s.name in ("digits", "finetune"))


def test_name_collision_is_an_error_naming_both_distributions():
    reg = Registry(strict=False)
    assert reg.add(offers("dup"), name="first", distribution="pkg-a")
    assert not reg.add(offers("dup"), name="second", distribution="pkg-b")
    assert "'pkg-a'" in reg.errors[0].message and "'pkg-b'" in reg.errors[0].message
    strict = Registry(strict=True)
    strict.add(offers("dup"), name="first", distribution="pkg-a")
    with pytest.raises(PluginError, match="registered by both"):
        strict.add(offers("dup"), name="second", distribution="pkg-b")


def test_misspelt_hook_is_reported_and_skipped():
    reg = Registry(strict=False)
    assert not reg.add(plugin(register_attack=lambda register: None), name="typo", distribution="pkg")
    assert "register_attack" in reg.errors[0].message
    assert reg.all() == [] and "typo" not in reg.entry_points


def test_registration_that_raises_is_isolated():
    def broken(register):
        raise KeyError("missing table")

    reg = Registry(strict=False)
    assert not reg.add(plugin(register_defenses=broken), name="broken", distribution="pkg")
    assert reg.add(offers("fine"), name="fine")
    assert [e.plugin for e in reg.errors] == ["broken"] and reg.get("attack", "fine")


def test_unknown_name_gets_did_you_mean():
    reg = Registry(strict=False)
    reg.add(offers("finetune"), name="f")
    with pytest.raises(ConfigError, match="did you mean 'finetune'"):
        reg.get("attack", "fintune", where="attacks[0].plugin")


def test_params_must_be_declared_objects():
    bad = plugin(register_attacks=lambda register: register("p", factory=len, params=[{"name": "lr"}]))
    reg = Registry(strict=False)
    assert not reg.add(bad, name="bad") and "harness.Param" in reg.errors[0].message


def test_param_validation():
    spec_reg = Registry(strict=False)
    spec_reg.add(plugin(register_attacks=lambda register: register(
        "p", factory=len, params=[Param("lr", "float", 1e-3, min=0.0), Param("mode", "str", "a", choices=("a", "b"))])),
        name="p")
    spec = spec_reg.get("attack", "p")
    assert spec.resolve({"lr": "1e-4"}, "x") == {"lr": 1e-4, "mode": "a"}
    with pytest.raises(ConfigError, match=r"x.mode: 'c' is not one of"):
        spec.resolve({"mode": "c"}, "x")
    with pytest.raises(ConfigError, match="below the minimum"):
        spec.resolve({"lr": -1}, "x")


def _cli(*args, env=None):
    """The CLI in a subprocess, with the plugin settings this test gives (not the caller's, e.g. CI's strict mode)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("UNTUNABLE_")}
    full_env = {**inherited, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=full_env)


@pytest.fixture
def broken_plugin_installed(tmp_path):
    """A distribution whose entry point raises at import, visible through a .pth-free sys.path entry."""
    dist = tmp_path / "site"
    (dist / "broken_untunable").mkdir(parents=True)
    (dist / "broken_untunable" / "__init__.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    info = dist / "broken_untunable-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-untunable\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[untunable]\nbroken = broken_untunable\n")
    return {"PYTHONPATH": f"{dist}{os.pathsep}{Path(__file__).parent.parent}"}


def test_plugin_that_raises_at_import_is_reported_and_skipped(broken_plugin_installed):
    done = _cli("plugins", env=broken_plugin_installed)
    assert done.returncode == 0
    assert "finetune" in done.stdout and "broken-untunable" in done.stderr
    assert "this plugin is broken on purpose" in done.stderr


def test_strict_mode_makes_a_broken_plugin_fatal(broken_plugin_installed):
    done = _cli("plugins", env={**broken_plugin_installed, "UNTUNABLE_STRICT_PLUGINS": "1"})
    assert done.returncode == 2 and done.stderr.startswith("error: plugin 'broken'")
    assert "Traceback" not in done.stderr


def test_allow_list_loads_only_named_entry_points(broken_plugin_installed):
    done = _cli("plugins", env={**broken_plugin_installed, "UNTUNABLE_LOAD_PLUGINS": "datasets,none"})
    assert done.returncode == 0 and "broken" not in done.stderr
    kinds = {line.split()[0] for line in done.stdout.splitlines()}
    assert kinds == {"dataset", "defense"}


def test_factory_must_be_a_function_or_an_import_string():
    bad = plugin(register_attacks=lambda register: register("p", factory="untunable_example.probe.probe"))
    reg = Registry(strict=False)
    assert not reg.add(bad, name="bad")
    assert "factory must be a function or a 'module:function' string" in reg.errors[0].message


@contextlib.contextmanager
def installed(fixture: str, distribution: str, tmp_path):
    """pip-install a fixture package (a real third-party distribution), and remove it afterwards."""
    source = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, source)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)]
    subprocess.run(pip, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", distribution], check=True,
                       capture_output=True)


@pytest.fixture
def example_plugin_installed(tmp_path):
    with installed("example_plugin", "untunable-example-plugin", tmp_path):
        yield


@pytest.fixture
def toy_task_installed(tmp_path):
    with installed("toy_task", "untunable-toy-task", tmp_path):
        yield


def test_plugins_listing_imports_no_torch(example_plugin_installed):
    """The example plugin registers its factory as a function object: holding it imports nothing heavy."""
    code = ("import sys; from harness.cli import main; main(['plugins']); "
            "heavy = [m for m in ('torch', 'timm', 'peft', 'diffusers', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for column in ("dataset", "untunable", "0.1.0", "example-probe"):
        assert column in done.stdout


def test_pip_installed_plugin_is_discovered_and_runs_in_a_grid(example_plugin_installed, write_experiment, tmp_path):
    listing = _cli("plugins")
    assert "example-probe" in listing.stdout and "untunable-example-plugin 0.3.0" in listing.stdout
    path = write_experiment("""
        name: external
        seeds: [0]
        workers: 1
        scenarios:
          - name: digits
            original: {dataset: digits}
            restricted: {dataset: digits}
            architecture: {name: cnn-s, params: {width: 0.5}}
            image_size: 8
            pretrain: {epochs: 1}
        attacks:
          - {plugin: example-probe, params: {epochs: 2}}
        """)
    done = _cli("run", str(path), "--results", str(tmp_path / "r"), "--quiet", "--no-leaderboard")
    assert done.returncode == 0, done.stderr
    assert "3 cells: 0 reused, 3 done" in done.stdout
    curves = _cli("curves", str(tmp_path / "r"))
    assert "example-probe" in curves.stdout and "scratch" in curves.stdout


TOY_EXPERIMENT = """
    name: toy
    seeds: [0, 1]
    workers: 1
    scenarios:
      - name: brightness
        task: brightness
        original: {dataset: digits}
        restricted: {dataset: digits, params: {limit_train: 400}}
        architecture: {name: toy-regressor}
        image_size: 8
        normalisation: none
        pretrain: {epochs: 2, batch_size: 64}
    defenses:
      - {plugin: none}
    attacks:
      - {plugin: finetune, label: adam, params: {optimizer: adam, lr: 0.001, epochs: 2, batch_size: 32}}
    """


def test_a_task_family_from_a_package_runs_a_grid(toy_task_installed, write_experiment, tmp_path):
    """A third-party task (regression, no labels, no head) needs no core edit: plan, train, record, list."""
    assert "brightness" in _cli("plugins").stdout
    path = write_experiment(TOY_EXPERIMENT)
    assert _cli("validate", str(path)).returncode == 0
    done = _cli("run", str(path), "--results", str(tmp_path / "r"), "--quiet", "--no-leaderboard")
    assert done.returncode == 0, done.stderr
    assert "8 cells: 0 reused, 8 done" in done.stdout
    with sqlite3.connect(tmp_path / "r" / "results.sqlite") as db:
        metrics = {m for (m,) in db.execute("SELECT DISTINCT metric FROM points")}
        scratch = db.execute("SELECT p.x, p.value FROM points p JOIN cells c ON c.key = p.key WHERE c.start = 'scratch'"
                             " AND c.seed = 0 AND p.metric = 'restricted/mse' AND p.x_unit = 'epoch' ORDER BY p.x").fetchall()
    # the attacks also record the adversary's validation slice
    assert metrics == {"restricted/mse", "original/mse", "restricted_val/mse"}
    assert [x for x, _ in scratch] == [0.0, 1.0, 2.0] and scratch[-1][1] < scratch[0][1]  # training lowers the error
    with sqlite3.connect(tmp_path / "r" / "results.sqlite") as db:
        pictures = db.execute("SELECT a.path FROM artifacts a JOIN cells c ON c.key = a.key WHERE c.kind = 'attack'"
                              " AND a.path LIKE '%.png'").fetchall()
    assert len(pictures) == 6 and all(path.endswith("picture-brightness.png") for (path,) in pictures)
    curves = _cli("curves", str(tmp_path / "r"), "--metric", "restricted/mse")
    assert curves.returncode == 0 and "scratch" in curves.stdout
    board = _cli("leaderboard", str(tmp_path / "r"), "--format", "html", "--out", str(tmp_path / "site"))
    assert board.returncode == 0, board.stderr
    assert "restricted-domain mse (lower is better)" in board.stdout  # the task's declared direction
    page = (tmp_path / "site" / "leaderboard.html").read_text()
    for start in ("scratch", "original", "defense:none"):  # seed 0's stored picture after the attack
        assert f'<img alt="adam · {start} · brightness"' in page


def test_a_head_strategy_on_a_headless_task_is_refused_at_validate(toy_task_installed, write_experiment):
    path = write_experiment(TOY_EXPERIMENT.replace("label: adam, params: {", "label: adam, params: {strategy: initFC+all, "))
    done = _cli("validate", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "strategy 'initFC+all' needs a classification head, which 'brightness' models do not have" in done.stderr


def test_a_classification_defense_is_refused_on_another_task(toy_task_installed, write_experiment):
    path = write_experiment(TOY_EXPERIMENT.replace("{plugin: none}", "{plugin: sophon-ice}"))
    done = _cli("validate", str(path))
    assert done.returncode == 2 and "defense 'sophon-ice' does not work on 'brightness' scenarios" in done.stderr


def test_plugin_check_runs_an_attack_on_another_task(toy_task_installed):
    done = _cli("plugin-check", "finetune", "--task", "brightness")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def restore_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_plugin_check_runs_at_one_thread_by_default_and_reports_its_time(capsys, restore_torch_threads):
    import torch

    assert main(["plugin-check", "none"]) == 0
    assert torch.get_num_threads() == 1
    assert re.search(r"^none: ok .* in \d+\.\d s at 1 thread$", capsys.readouterr().out, re.M)
    assert main(["plugin-check", "none", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2 and "at 2 threads" in capsys.readouterr().out
    assert main(["plugin-check", "none", "--threads", "0"]) == 2
    assert "--threads: expected an integer from 1 to 256, got 0" in capsys.readouterr().err
