"""Experiment files: malformed input gives one clear line naming the file and field, and exit status 2."""

import subprocess
import sys

import pytest

from harness.cli import main
from harness.config import load_experiment
from harness.plan import resolve
from harness.plugins import registry
from harness.registry import ConfigError
from tests.conftest import TINY_EXPERIMENT


def resolve_text(write_experiment, text):
    return resolve(load_experiment(write_experiment(text)), registry())


def test_tiny_experiment_resolves_with_defaults_filled(write_experiment):
    resolved = resolve_text(write_experiment, TINY_EXPERIMENT)
    (attack,) = resolved.attacks
    assert attack.label == "sgd" and attack.params["lr"] == 0.01
    assert attack.params["optimizer"] == "sgd_momentum"  # the reference protocol is the default
    assert resolved.defenses[0][0] == "none"


@pytest.mark.parametrize("edit, where, says", [
    (("    image_size: 8", "    image_sise: 8"), "scenarios[0].image_sise", "did you mean 'image_size'"),
    (("    image_size: 8", "    image_size: large"), "scenarios[0].image_size", "integer"),
    (("{plugin: none}", "{plugin: sophonn}"), "defenses[0].plugin", "unknown defense 'sophonn'"),
    (("plugin: finetune,", "plugin: finetun,"), "attacks[0].plugin", "did you mean 'finetune'"),
    (("lr: 0.01", "lrr: 0.01"), "attacks[0].params.lrr", "did you mean 'lr'"),
    (("lr: 0.01", "lr: fast"), "attacks[0].params.lr", "expected float"),
    (("{dataset: digits}\n    restricted", "{dataset: digitz}\n    restricted"), "scenarios[0].original.dataset",
     "did you mean 'digits'"),
    (("seeds: [0]", "seeds: []"), "seeds", "at least 1"),
])
def test_malformed_experiment_names_file_and_field(write_experiment, edit, where, says):
    path = write_experiment(TINY_EXPERIMENT.replace(*edit))
    with pytest.raises(ConfigError) as error:
        resolve(load_experiment(path), registry())
    message = str(error.value)
    assert str(path) in message and where in message and says in message, message


def test_suite_and_plugin_are_exclusive(write_experiment):
    path = write_experiment(TINY_EXPERIMENT.replace("{plugin: finetune,", "{suite: lora, plugin: finetune,"))
    with pytest.raises(ConfigError, match=r"attacks\[0\].*exactly one of 'suite'"):
        load_experiment(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_experiment(bad)


@pytest.mark.parametrize("edit", [("image_size: 8", "image_sise: 8"), ("finetune", "finetun")])
def test_cli_reports_one_line_and_exit_2(write_experiment, capsys, edit):
    path = write_experiment(TINY_EXPERIMENT.replace(*edit))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_cli_missing_file_and_missing_results(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert main(["curves", str(tmp_path)]) == 2
    assert "no results store" in capsys.readouterr().err


def test_validate_does_not_import_torch(write_experiment):
    path = write_experiment()
    code = ("import sys; from harness.cli import main; rc = main(['validate', %r]); "
            "assert 'torch' not in sys.modules, 'validate imported torch'; sys.exit(rc)" % str(path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


def test_the_same_attack_through_two_suites_is_one_config_with_both_labels(write_experiment):
    text = TINY_EXPERIMENT.replace(
        "  - {plugin: finetune, label: sgd, params: {epochs: 1, batch_size: 64, lr: 0.01}}",
        "  - {suite: paper-strategies, only: [direct+all]}\n  - {suite: optimizers, only: [momentum, adam]}")
    resolved = resolve_text(write_experiment, text)
    assert [(a.label, a.suites) for a in resolved.attacks] == [
        ("direct+all", (("paper-strategies", "direct+all"), ("optimizers", "momentum"))),
        ("adam", (("optimizers", "adam"),))]


def test_list_values_expand_to_their_cross_product(write_experiment):
    text = TINY_EXPERIMENT.replace("lr: 0.01}", "lr: [0.01, 0.1], batch_size: [32, 64]}").replace(
        "batch_size: 64, lr", "lr")
    labels = [a.label for a in resolve_text(write_experiment, text).attacks]
    assert labels == ["sgd lr=0.01 batch_size=32", "sgd lr=0.01 batch_size=64", "sgd lr=0.1 batch_size=32",
                      "sgd lr=0.1 batch_size=64"]
