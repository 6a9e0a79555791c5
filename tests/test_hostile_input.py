"""A malformed-input corpus, tried as a hostile or careless user would: every case is refused with one line
on stderr naming the file or flag (and field), exit status 2, and never a traceback.

Cases run in-process through `harness.cli.main`; a few run as real subprocesses to prove the exit code and
the absence of a traceback end to end.
"""

from __future__ import annotations

import copy
import pickle
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import yaml

from harness.cli import main
from harness.store import SCHEMA_VERSION, Store
from tests.conftest import TINY_EXPERIMENT

BASE = yaml.safe_load(TINY_EXPERIMENT)
NAN, INF = float("nan"), float("inf")


def setting(path: str, value):
    """A mutation of the base experiment: set the value at a dotted path (list indices as [i]), or delete it."""
    def mutate(data):
        parts = path.replace("[", ".[").split(".")
        node = data
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
        last = parts[-1]
        key = int(last[1:-1]) if last.startswith("[") else last
        node[key] = value
    return mutate


def sophon(**params):
    return setting("defenses", [{"plugin": "sophon-ice", "params": params}])


def suite(**entry):
    return setting("attacks", [entry])


# (case id, mutation of the base experiment, text the error line must contain: the field path)
VALUES = [
    ("nan-attack-lr", setting("attacks[0].params.lr", NAN), "attacks[0].params.lr"),
    ("inf-attack-lr", setting("attacks[0].params.lr", INF), "attacks[0].params.lr"),
    ("minus-inf-attack-lr", setting("attacks[0].params.lr", -INF), "attacks[0].params.lr"),
    ("nan-string-attack-lr", setting("attacks[0].params.lr", "nan"), "attacks[0].params.lr"),
    ("nan-pretrain-lr", setting("scenarios[0].pretrain.lr", NAN), "scenarios[0].pretrain.lr"),
    ("inf-pretrain-lr", setting("scenarios[0].pretrain.lr", INF), "scenarios[0].pretrain.lr"),
    ("nan-weight-decay", setting("scenarios[0].pretrain.weight_decay", NAN), "scenarios[0].pretrain.weight_decay"),
    ("bool-pretrain-lr", setting("scenarios[0].pretrain.lr", True), "scenarios[0].pretrain.lr"),
    ("bool-pretrain-epochs", setting("scenarios[0].pretrain.epochs", True), "scenarios[0].pretrain.epochs"),
    ("bool-attack-epochs", setting("attacks[0].params.epochs", True), "attacks[0].params.epochs"),
    ("bool-image-size", setting("scenarios[0].image_size", True), "scenarios[0].image_size"),
    ("bool-workers", setting("workers", True), "workers"),
    ("bool-seed", setting("seeds", [True]), "seeds[0]"),
    ("bool-channels", setting("scenarios[0].channels", False), "scenarios[0].channels"),
    ("float-1e30-pretrain-epochs", setting("scenarios[0].pretrain.epochs", 1e30), "scenarios[0].pretrain.epochs"),
    ("int-1e30-pretrain-epochs", setting("scenarios[0].pretrain.epochs", 10**30), "scenarios[0].pretrain.epochs"),
    ("int-1e30-attack-epochs", setting("attacks[0].params.epochs", 10**30), "attacks[0].params.epochs"),
    ("float-1e30-attack-epochs", setting("attacks[0].params.epochs", 1e30), "attacks[0].params.epochs"),
    ("huge-attack-batch", setting("attacks[0].params.batch_size", 10**12), "attacks[0].params.batch_size"),
    ("zero-attack-batch", setting("attacks[0].params.batch_size", 0), "attacks[0].params.batch_size"),
    ("huge-image-size", setting("scenarios[0].image_size", 1_000_000), "scenarios[0].image_size"),
    ("huge-pretrain-batch", setting("scenarios[0].pretrain.batch_size", 10**9), "scenarios[0].pretrain.batch_size"),
    ("seed-2-to-70", setting("seeds", [2**70]), "seeds[0]"),
    ("negative-seed", setting("seeds", [-1]), "seeds[0]"),
    ("huge-defense-seed", setting("defenses[0].seed", 2**70), "defenses[0].seed"),
    ("huge-pretrain-seed", setting("scenarios[0].pretrain.seed", 2**64), "scenarios[0].pretrain.seed"),
    ("huge-workers", setting("workers", 10**6), "workers"),
    ("negative-workers", setting("workers", -1), "workers"),
    ("five-channels", setting("scenarios[0].channels", 5), "scenarios[0].channels"),
    ("string-image-size", setting("scenarios[0].image_size", "28"), "scenarios[0].image_size"),
    ("bad-restricted-split", setting("scenarios[0].restricted_split", "fraction:2"), "scenarios[0].restricted_split"),
    ("bad-normalisation", setting("scenarios[0].normalisation", "zscore"), "scenarios[0].normalisation"),
    ("device-banana", setting("device", "banana"), "device"),
    ("device-empty", setting("device", ""), "device"),
    ("device-cuda-x", setting("device", "cuda:x"), "device"),
    ("precision-fp64", setting("precision", "fp64"), "precision"),
    ("nan-dataset-fraction", setting("scenarios[0].original.params", {"test_fraction": NAN}),
     "scenarios[0].original.params.test_fraction"),
    ("bool-dataset-limit", setting("scenarios[0].original.params", {"limit_train": True}),
     "scenarios[0].original.params.limit_train"),
    ("huge-dataset-limit", setting("scenarios[0].original.params", {"limit_train": 10**20}),
     "scenarios[0].original.params.limit_train"),
    ("inf-architecture-width", setting("scenarios[0].architecture.params.width", INF),
     "scenarios[0].architecture.params.width"),
    ("sophon-huge-total-loop", sophon(total_loop=10**30), "defenses[0].params.total_loop"),
    ("sophon-nan-alpha", sophon(alpha=NAN), "defenses[0].params.alpha"),
    ("sophon-bool-ml-loop", sophon(ml_loop=True), "defenses[0].params.ml_loop"),
    ("sophon-huge-adaptation-steps", sophon(adaptation_steps=10**9), "defenses[0].params.adaptation_steps"),
    ("ntl-huge-epochs", setting("defenses", [{"plugin": "ntl", "params": {"epochs": 10**30}}]), "defenses[0].params.epochs"),
    ("lora-huge-rank", suite(plugin="lora", params={"rank": 10**9}), "attacks[0].params.rank"),
    ("list-lr-with-nan", setting("attacks[0].params.lr", [0.01, NAN]), "attacks[0].params.lr"),
]

NESTED = [
    ("environments-unknown-key", sophon(environments=[{"optimizer": "adam", "bogus": 1}]),
     "defenses[0].params.environments[0].bogus"),
    ("environments-misspelt-key", sophon(environments=[{"optimizr": "adam"}]), "did you mean 'optimizer'"),
    ("environments-item-not-mapping", sophon(environments=["adam"]), "defenses[0].params.environments[0]"),
    ("environments-small-batch", sophon(environments=[{"batch_size": 4}]),
     "defenses[0].params.environments[0].batch_size"),
    ("environments-nan-lr", sophon(environments=[{"lr": NAN}]), "defenses[0].params.environments[0].lr"),
    ("environments-unknown-optimizer", sophon(environments=[{"optimizer": "lbfgs"}]),
     "defenses[0].params.environments[0].optimizer"),
    ("environments-not-a-list", sophon(environments={"optimizer": "adam"}), "defenses[0].params.environments"),
    ("environments-second-item", sophon(environments=[{"steps": 5}, {"stepz": 5}]),
     "defenses[0].params.environments[1].stepz"),
    ("step-weights-unknown-rule", sophon(step_weights="first:2"), "defenses[0].params.step_weights"),
    ("step-weights-zero", sophon(step_weights="last:0"), "defenses[0].params.step_weights"),
    ("step-weights-not-a-string", sophon(step_weights={"last": 2}), "defenses[0].params.step_weights"),
]

NAMES = [
    ("empty-name", setting("name", ""), "name"),
    ("nul-in-name", setting("name", "a\x00b"), "name"),
    ("300-character-name", setting("name", "x" * 300), "name"),
    ("name-climbs-out", setting("name", "../../../x"), "name"),
    ("name-with-slash", setting("name", "a/b"), "name"),
    ("hidden-name", setting("name", ".hidden"), "name"),
    ("name-not-a-string", setting("name", 12), "name"),
    ("long-scenario-name", setting("scenarios[0].name", "s" * 300), "scenarios[0].name"),
    ("empty-scenario-name", setting("scenarios[0].name", ""), "scenarios[0].name"),
    ("newline-in-scenario-name", setting("scenarios[0].name", "a\nb"), "scenarios[0].name"),
    ("nul-in-defense-name", setting("defenses[0].name", "\x00"), "defenses[0].name"),
    ("long-attack-label", setting("attacks[0].label", "l" * 300), "attacks[0].label"),
    ("padded-attack-label", setting("attacks[0].label", " sgd "), "attacks[0].label"),
]

PLANS = [
    ("only-empty", suite(suite="paper-strategies", only=[]), "attacks[0].only"),
    ("only-unknown-entry", suite(suite="paper-strategies", only=["direct+al"]), "attacks[0].only[0]"),
    ("empty-lr-list", setting("attacks[0].params.lr", []), "attacks[0].params.lr"),
    ("no-baselines-no-defenses", lambda d: d.update(baselines=[], defenses=[]), "zero cells"),
    ("duplicate-seeds", setting("seeds", [0, 0]), "seeds"),
    ("duplicate-seeds-apart", setting("seeds", [1, 2, 1]), "seeds"),
    ("duplicate-defense-names", setting("defenses", [{"plugin": "none"}, {"plugin": "none"}]), "defenses"),
    ("duplicate-scenarios", lambda d: d["scenarios"].append(copy.deepcopy(d["scenarios"][0])), "scenarios"),
    ("no-seeds", setting("seeds", []), "seeds"),
    ("no-attacks", setting("attacks", []), "attacks"),
    ("no-scenarios", setting("scenarios", []), "scenarios"),
    ("suite-and-plugin", setting("attacks[0].suite", "lora"), "attacks[0]"),
]

PATHS = [
    ("results-climbs-out", setting("results", "../elsewhere"), "results"),
    ("results-climbs-out-later", setting("results", "a/../../elsewhere"), "results"),
    ("results-with-nul", setting("results", "runs/\x00"), "results"),
    ("data-root-climbs-out", setting("data_root", "../../data"), "data_root"),
    ("cache-dir-climbs-out", setting("cache_dir", "../cache"), "cache_dir"),
    ("image-folder-climbs-out", setting("scenarios[0].original", {"dataset": "image-folder",
                                                                  "params": {"path": "../secret"}}),
     "scenarios[0].original.params.path"),
    ("image-folder-train-dir-climbs-out", setting("scenarios[0].original", {
        "dataset": "image-folder", "params": {"path": "faces", "train_dir": "../../etc"}}),
     "scenarios[0].original.params.train_dir"),
]

STRUCTURE = [
    ("attack-params-not-a-mapping", setting("attacks[0].params", "fast"), "attacks[0].params"),
    ("unknown-top-level-key", setting("seed", 3), "seed"),
    ("unknown-scenario-key", setting("scenarios[0].image_sise", 8), "did you mean 'image_size'"),
    ("unknown-attack-param", setting("attacks[0].params.lrr", 0.1), "did you mean 'lr'"),
    ("unknown-defense", setting("defenses[0].plugin", "sophonn"), "defenses[0].plugin"),
    ("seeds-not-a-list", setting("seeds", 3), "seeds"),
]

MUTATIONS = VALUES + NESTED + NAMES + PLANS + PATHS + STRUCTURE

BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10) if p else ', '.join(['1'] * 10)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e"], "abcdef"))
RAW_FILES = [
    ("duplicate-top-level-key", TINY_EXPERIMENT + "name: again\n", "duplicate key 'name'"),
    ("duplicate-nested-key", TINY_EXPERIMENT.replace("lr: 0.01", "lr: 0.01, lr: 0.1"), "duplicate key 'lr'"),
    ("alias-bomb-in-params", TINY_EXPERIMENT.replace("lr: 0.01}}", "lr: 0.01, x: *f}}").replace(
        "name: tiny", BOMB + "name: tiny"), "alias bomb"),
    ("recursive-alias", "name: &a [*a]\n", "exp.yaml"),
    ("deep-list-nesting", "name: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    ("deep-mapping-nesting", "name: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested more than"),
    ("top-level-list", "- name: tiny\n", "mapping"),
    ("top-level-scalar", "tiny\n", "mapping"),
    ("empty-file", "", "mapping"),
    ("only-a-comment", "# nothing\n", "mapping"),
    ("tab-indentation", "name: tiny\nscenarios:\n\t- name: x\n", "not valid YAML"),
    ("unclosed-bracket", "name: [tiny\n", "not valid YAML"),
    ("python-object-tag", "name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("complex-key", "? [a, b]\n: 1\n", "plain value"),
    ("control-characters", "name: \x01\x02\n", "not valid YAML"),
]


def assert_one_line(capsys, code: int, *expected: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    for text in expected:
        assert text in err, (text, err)
    return err


def write(tmp_path, data_or_text, name="exp.yaml"):
    path = tmp_path / name
    if isinstance(data_or_text, str):
        path.write_text(textwrap.dedent(data_or_text))
    else:
        path.write_text(yaml.safe_dump(data_or_text))
    return path


@pytest.mark.parametrize("case, mutate, field", MUTATIONS, ids=[c[0] for c in MUTATIONS])
def test_malformed_value_is_refused_by_validate(tmp_path, capsys, case, mutate, field):
    data = copy.deepcopy(BASE)
    mutate(data)
    path = write(tmp_path, data)
    assert_one_line(capsys, main(["validate", str(path)]), str(path), field)


@pytest.mark.parametrize("case, text, says", RAW_FILES, ids=[c[0] for c in RAW_FILES])
def test_malformed_file_is_refused_by_validate(tmp_path, capsys, case, text, says):
    path = write(tmp_path, text)
    assert_one_line(capsys, main(["validate", str(path)]), str(path), says)


def test_files_that_cannot_be_read_as_text(tmp_path, capsys):
    cases = {"not-utf8.yaml": b"name: caf\xe9\n", "utf16.yaml": "name: tiny\n".encode("utf-16"),
             "huge.yaml": b"# " + b"x" * (2 << 20) + b"\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_one_line(capsys, main(["validate", str(tmp_path / name)]), name)
    assert_one_line(capsys, main(["validate", str(tmp_path)]), "not a file")
    assert_one_line(capsys, main(["validate", str(tmp_path / "absent.yaml")]), "no such experiment file")


# -- command lines -----------------------------------------------------------------------------------

RUN_FLAGS = [
    (["--threads", "-1"], "--threads"), (["--threads", "0"], "--threads"), (["--threads", "abc"], "--threads"),
    (["--threads", "100000"], "--threads"), (["--workers", "-1"], "--workers"), (["--workers", "100000"], "--workers"),
    (["--workers", "1.5"], "--workers"), (["--device", ""], "--device"), (["--device", "banana"], "--device"),
    (["--device", "cuda:zero"], "--device"), (["--precision", "fp64"], "--precision"),
    (["--results", "../elsewhere"], "--results"), (["--cache-dir", "../elsewhere"], "--cache-dir"),
]


@pytest.mark.parametrize("command", ["run", "pretrain"])
@pytest.mark.parametrize("flags, flag", RUN_FLAGS, ids=[" ".join(f[0]) or "empty" for f in RUN_FLAGS])
def test_bad_run_flag_obeys_the_files_rules(write_experiment, capsys, command, flags, flag):
    assert_one_line(capsys, main([command, str(write_experiment()), *flags]), flag)


def test_directories_that_are_files(write_experiment, tmp_path, capsys):
    path, a_file = write_experiment(), tmp_path / "a-file"
    a_file.write_text("")
    assert_one_line(capsys, main(["run", str(path), "--results", str(a_file)]), "--results", "is a file")
    assert_one_line(capsys, main(["run", str(path), "--cache-dir", str(a_file)]), "--cache-dir", "is a file")
    assert_one_line(capsys, main(["leaderboard", str(empty_store(tmp_path)), "--out", str(a_file)]), "--out")


def test_cuda_asked_by_the_file_is_blamed_on_the_file(write_experiment, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_experiment(TINY_EXPERIMENT.replace("workers: 0", "workers: 0\ndevice: cuda"))
    err = assert_one_line(capsys, main(["run", str(path)]), f"{path}: device")
    assert "--device" not in err


@pytest.mark.parametrize("argv", [["bogus-command"], ["run"], ["validate", "a.yaml", "b.yaml"], ["list"],
                                  ["check"], ["leaderboard"], ["run", "x.yaml", "--bogus"]])
def test_usage_errors_are_one_line(capsys, argv):
    assert_one_line(capsys, main(argv), "untunable")


def empty_store(tmp_path):
    root = tmp_path / "store"
    Store(root).close()
    return root


@pytest.mark.parametrize("argv, says", [
    (["leaderboard", "{store}", "--format", ""], "--format"),
    (["leaderboard", "{store}", "--format", ","], "--format"),
    (["leaderboard", "{store}", "--format", "bogus"], "--format"),
    (["leaderboard", "{store}", "--suite", ","], "--suite"),
    (["leaderboard", "{store}"], "no finished attack cells"),
    (["curves", "{store}", "--metric", "bogus/metric"], "--metric"),
    (["curves", "{store}", "--metric", "restricted/bogus"], "restricted/bogus"),
    (["curves", "{store}"], "no attack cell has stored"),
    (["list", "{missing}"], "no results store"),
    (["list", "{tmp}"], "no results store"),
    (["curves", "{missing}"], "no results store"),
    (["leaderboard", "{missing}"], "no results store"),
    (["check", "{missing}"], "no results store"),
])
def test_reading_commands_refuse_bad_arguments(tmp_path, capsys, argv, says):
    places = {"store": str(empty_store(tmp_path)), "missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    assert_one_line(capsys, main([a.format(**places) for a in argv]), says)


# -- stores that must not be used, and must not be written to ---------------------------------------

def foreign_store(root):
    db = sqlite3.connect(root / "results.sqlite")
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()


def newer_store(root):
    Store(root).close()
    db = sqlite3.connect(root / "results.sqlite")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()


def altered_store(root):
    Store(root).close()
    db = sqlite3.connect(root / "results.sqlite")
    db.execute("ALTER TABLE points ADD COLUMN extra TEXT")
    db.close()


def garbage_store(root):
    (root / "results.sqlite").write_bytes(b"this is not a database" * 100)


def damaged_store(root):
    store = Store(root)
    with store.transaction() as db:
        db.executemany("INSERT INTO notes VALUES (?, ?)", [(f"k{i:05d}", "{}" * 40) for i in range(3000)])
    store.close()
    db = sqlite3.connect(root / "results.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages, size = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(root / "results.sqlite", "r+b") as handle:
        handle.seek((pages // 2) * size)
        handle.write(b"\xff" * size)


STORES = {"foreign": (foreign_store, "not an untunable results store"), "newer": (newer_store, "newer untunable"),
          "altered": (altered_store, "altered"), "garbage": (garbage_store, "not a readable results store"),
          "damaged": (damaged_store, "--repair")}


def snapshot(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name == "results.sqlite"}


@pytest.mark.parametrize("command", ["list", "curves", "leaderboard", "run"])
@pytest.mark.parametrize("kind", sorted(STORES))
def test_foreign_newer_altered_or_damaged_store_is_refused_untouched(write_experiment, tmp_path, capsys, command,
                                                                       kind):
    root = tmp_path / "results"
    root.mkdir()
    make, says = STORES[kind]
    make(root)
    before = snapshot(root)
    argv = ["run", str(write_experiment()), "--results", str(root)] if command == "run" else [command, str(root)]
    assert_one_line(capsys, main(argv), str(root), says)
    assert snapshot(root) == before  # nothing was written: no tables added, no WAL switch


# -- data that cannot be read (met while planning, before any cell) ---------------------------------

class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_missing_dataset_root_is_one_line(write_experiment, tmp_path, capsys):
    text = TINY_EXPERIMENT.replace("original: {dataset: digits}", "original: {dataset: mnist}").replace(
        "workers: 0", f"workers: 0\ndata_root: {tmp_path / 'nowhere'}")
    assert_one_line(capsys, main(["run", str(write_experiment(text)), "--results", str(tmp_path / "r")]), "mnist")


def test_refused_pickle_payload_is_one_line(write_experiment, tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(Payload(), protocol=2))
    text = TINY_EXPERIMENT.replace("original: {dataset: digits}", "original: {dataset: cifar10}").replace(
        "workers: 0", f"workers: 0\ndata_root: {tmp_path / 'data'}")
    err = assert_one_line(capsys, main(["run", str(write_experiment(text)), "--results", str(tmp_path / "r")]),
                          "refusing to unpickle")
    assert "pickled code ran" not in err


def test_missing_image_folder_is_one_line(write_experiment, tmp_path, capsys):
    text = TINY_EXPERIMENT.replace("original: {dataset: digits}",
                                   f"original: {{dataset: image-folder, params: {{path: {tmp_path / 'none'}}}}}")
    assert_one_line(capsys, main(["run", str(write_experiment(text)), "--results", str(tmp_path / "r")]),
                    "image folder not found")


def test_an_internal_error_names_the_file_holding_its_traceback(write_experiment, capsys, monkeypatch):
    import harness.cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(harness.cli, "cmd_validate", broken)
    code = main(["validate", str(write_experiment())])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    stored = err.rpartition("traceback stored in ")[2].rstrip(")")
    assert "ZeroDivisionError: a bug" in open(stored).read()


# -- end to end: real processes ---------------------------------------------------------------------

@pytest.mark.parametrize("case", ["not-utf8", "threads", "missing-dataset-root", "device-banana"])
def test_real_process_exits_2_with_one_line(tmp_path, case):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(TINY_EXPERIMENT))
    if case == "not-utf8":
        path.write_bytes(b"name: \xff\n")
        argv = ["validate", str(path)]
    elif case == "threads":
        argv = ["run", str(path), "--threads", "-1"]
    elif case == "device-banana":
        argv = ["run", str(path), "--device", "banana"]
    else:
        path.write_text(textwrap.dedent(TINY_EXPERIMENT).replace("original: {dataset: digits}",
                                                                 "original: {dataset: mnist}")
                        + f"data_root: {tmp_path / 'nowhere'}\n")
        argv = ["run", str(path), "--results", str(tmp_path / "r")]
    done = subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
