"""`untunable new`: the scaffolded packages install, pass their own test and plugin-check, and reach a leaderboard."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.cli import main
from tests.conftest import TINY_EXPERIMENT


def test_new_writes_a_package_and_refuses_bad_names(tmp_path, capsys):
    assert main(["new", "defense", "my-guard", "--dir", str(tmp_path / "pkg")]) == 0
    files = sorted(str(p.relative_to(tmp_path / "pkg")) for p in (tmp_path / "pkg").rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "tests/test_plugin.py", "untunable_my_guard/__init__.py",
                     "untunable_my_guard/plugin.py"]
    assert 'my-guard = "untunable_my_guard.plugin"' in (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert 'check_plugin("defense", "my-guard")' in (tmp_path / "pkg" / "tests" / "test_plugin.py").read_text()
    capsys.readouterr()
    assert main(["new", "attack", "My_Attack", "--dir", str(tmp_path / "x")]) == 2
    assert main(["new", "attack", "finetune", "--dir", str(tmp_path / "y")]) == 2
    assert main(["new", "attack", "other", "--dir", str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "is not a plugin name" in err[0] and "already registered by 'untunable'" in err[1]
    assert "exists and is not an empty folder" in err[2]


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("UNTUNABLE_")}


def _run(*command, cwd=None):
    done = subprocess.run(command, capture_output=True, text=True, env=_clean_env(), cwd=cwd)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def scaffolded(tmp_path):
    """Scaffold a defense and an attack, pip-install both (editable), and uninstall them afterwards."""
    packages = {"defense": tmp_path / "untunable-tiny-guard", "attack": tmp_path / "untunable-tiny-tune"}
    for (kind, folder), name in zip(packages.items(), ("tiny-guard", "tiny-tune")):
        _run(sys.executable, "-m", "harness.cli", "new", kind, name, "--dir", str(folder))
        _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(folder))
    yield packages
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "untunable-tiny-guard",
                    "untunable-tiny-tune"], capture_output=True)


@pytest.mark.slow
def test_scaffolded_plugins_install_pass_their_checks_and_reach_a_leaderboard(scaffolded, write_experiment, tmp_path):
    for folder in scaffolded.values():
        assert "1 passed" in _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=folder)
    for name in ("tiny-guard", "tiny-tune"):
        assert f"{name}: ok" in _run(sys.executable, "-m", "harness.cli", "plugin-check", name)
    path = write_experiment(TINY_EXPERIMENT.split("defenses:")[0] + (
        "defenses:\n  - {plugin: tiny-guard, params: {steps: 20}}\n"
        "attacks:\n  - {plugin: tiny-tune, label: tiny-tune, params: {epochs: 2}}\n"))
    _run(sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(tmp_path / "r"), "--quiet")
    board = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "| tiny-tune | defense:tiny-guard |" in board and "| tiny-tune | scratch |" in board
