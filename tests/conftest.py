"""Shared fixtures: tiny experiment files on offline data that run in seconds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY_EXPERIMENT = """
name: tiny
seeds: [0]
workers: 0
scenarios:
  - name: digits-to-digits
    original: {dataset: digits}
    restricted: {dataset: digits}
    architecture: {name: cnn-s, params: {width: 0.5}}
    image_size: 8
    pretrain: {epochs: 1, batch_size: 64}
defenses:
  - {plugin: none}
attacks:
  - {plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}
"""


@pytest.fixture
def write_experiment(tmp_path):
    """Write an experiment file (default: the tiny one, optionally edited) and return its path."""

    def write(text: str = TINY_EXPERIMENT, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
