"""Every experiment file shipped in configs/ validates: a plugin parameter renamed or removed cannot silently
break `make demo`, the CI leaderboard or a documented grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_the_demo_and_ci_configs_are_shipped():
    assert {"demo.yaml", "ci.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_shipped_config_validates(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
