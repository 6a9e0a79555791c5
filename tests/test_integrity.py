"""Corruption is detected with one line and recovered: a truncated checkpoint, a damaged data cache and a
damaged store are each found (by `run` or `untunable check`), and `check --repair` plus a re-run restore
exactly the results an undamaged run gives."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from harness.cells import _scenario_data
from harness.cli import main
from harness.report.tidy import neutralise
from harness.store import SCHEMA_VERSION, Store
from tests.conftest import TINY_EXPERIMENT
from tests.test_runner import rows

CURVES = "SELECT c.key, c.status, p.x_unit, p.x, p.metric, p.value FROM cells c LEFT JOIN points p ON p.key=c.key " \
         "ORDER BY c.key, p.x_unit, p.metric, p.x"


def run(path, results, capsys):
    code = main(["run", str(path), "--results", str(results), "--quiet", "--no-leaderboard"])
    return code, capsys.readouterr()


def one_error_line(capsys, code, expected_code=2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected_code and len(err.splitlines()) == 1 and "Traceback" not in err, (code, err)
    return err


@pytest.fixture
def finished(write_experiment, tmp_path, capsys):
    """A finished tiny grid (three seeds, so the store spans several pages) and a pristine copy of it."""
    path = write_experiment(TINY_EXPERIMENT.replace("seeds: [0]", "seeds: [0, 1, 2]"))
    results = tmp_path / "r"
    assert run(path, results, capsys)[0] == 0
    reference = rows(results, CURVES)
    return path, results, reference


def checkpoint_of(results, kind):
    (path,) = rows(results, "SELECT a.path FROM artifacts a JOIN cells c ON c.key=a.key WHERE c.kind=?", kind)
    return results / path[0]


def test_check_passes_a_sound_store_and_writes_nothing(finished, capsys):
    _, results, _ = finished
    before = (results / "results.sqlite").read_bytes()
    assert main(["check", str(results)]) == 0
    assert "ok" in capsys.readouterr().out
    assert (results / "results.sqlite").read_bytes() == before


def test_truncated_checkpoint_is_detected_and_rebuilt_with_everything_downstream(finished, capsys):
    path, results, reference = finished
    checkpoint = checkpoint_of(results, "pretrain")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])

    err = one_error_line(capsys, main(["run", str(path), "--results", str(results), "--quiet"]))
    assert str(checkpoint) in err and "check" in err and "--repair" in err

    assert main(["check", str(results)]) == 1
    assert "altered" in capsys.readouterr().out
    assert main(["check", str(results), "--repair"]) == 0
    # the pretrain cell and everything built on it (defend, original and defense attacks) run again
    pending = rows(results, "SELECT kind, start FROM cells WHERE status='pending' ORDER BY kind, start")
    assert sorted(pending) == sorted([("pretrain", "original"), ("defend", "defense:none")]
                                     + [("attack", "defense:none")] * 3 + [("attack", "original")] * 3)
    capsys.readouterr()
    code, out = run(path, results, capsys)
    assert code == 0 and "8 done" in out.out
    assert rows(results, CURVES) == reference
    assert main(["check", str(results)]) == 0


def test_altered_checkpoint_stops_the_run_that_needs_it(finished, write_experiment, capsys):
    _, results, _ = finished
    checkpoint = checkpoint_of(results, "defend")
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the hash can tell
    checkpoint.write_bytes(bytes(data))
    more = write_experiment(TINY_EXPERIMENT.replace("seeds: [0]", "seeds: [0, 1, 2, 3]"), name="more.yaml")
    err = one_error_line(capsys, main(["run", str(more), "--results", str(results), "--quiet"]))
    assert "altered" in err and "--repair" in err
    assert rows(results, "SELECT count(*) FROM cells WHERE seed=3") == [(0,)]  # refused before running anything


def test_damaged_data_cache_is_rebuilt(finished, capsys):
    path, results, reference = finished
    (cache,) = (results / "cache" / "data").glob("*.safetensors")
    for damage in (lambda b: b[:len(b) // 2], lambda b: b[:-8] + bytes(x ^ 0xFF for x in b[-8:])):  # cut; flipped
        cache.write_bytes(damage(cache.read_bytes()))
        _scenario_data.cache_clear()  # as in a new process: the data comes from the cache file
        code, out = run(path, results, capsys)
        assert code == 0 and "damaged data cache" in out.err and "rebuilding" in out.err
        _scenario_data.cache_clear()
        code, out = run(path, results, capsys)
        assert code == 0 and "damaged" not in out.err  # rebuilt: the next load verifies
    assert rows(results, CURVES) == reference


def damage_points_page(results):
    """Overwrite one leaf page of the points table (not its root) with garbage."""
    db = sqlite3.connect(results / "results.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.execute("PRAGMA page_size").fetchone()[0]
    leaves = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name='points' AND pagetype='leaf' "
                                       "ORDER BY pageno")]
    db.close()
    assert len(leaves) >= 3, leaves
    with open(results / "results.sqlite", "r+b") as handle:
        handle.seek((leaves[len(leaves) // 2] - 1) * size)
        handle.write(b"\xff" * size)


def test_damaged_store_is_detected_salvaged_and_rerun(finished, capsys):
    path, results, reference = finished
    cells = rows(results, "SELECT count(*) FROM cells")[0][0]
    damage_points_page(results)
    for command in (["list", str(results)], ["leaderboard", str(results)], ["curves", str(results)],
                    ["run", str(path), "--results", str(results)]):
        err = one_error_line(capsys, main(command))
        assert "damaged" in err or "malformed" in err
        assert f"untunable check {results} --repair" in err

    assert main(["check", str(results)]) == 1
    capsys.readouterr()
    assert main(["check", str(results), "--repair"]) == 0
    assert list(results.glob("results.sqlite.damaged-*"))  # kept aside
    pending = rows(results, "SELECT count(*) FROM cells WHERE status='pending'")[0][0]
    assert 0 < pending < cells  # only the cells whose rows were on the damaged page run again
    code, out = run(path, results, capsys)
    assert code == 0 and f"{pending} done" in out.out
    assert rows(results, CURVES) == reference
    assert main(["check", str(results)]) == 0


def test_a_store_from_before_schema_versions_is_adopted(finished, capsys):
    path, results, reference = finished
    db = sqlite3.connect(results / "results.sqlite")
    db.execute("PRAGMA user_version=0")
    db.close()
    assert main(["list", str(results)]) == 0  # read-only: accepted as it is
    assert rows(results, "PRAGMA user_version") == [(0,)]
    assert run(path, results, capsys)[0] == 0
    assert rows(results, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_repair_refuses_while_a_run_holds_the_lock(finished, capsys):
    import fcntl

    _, results, _ = finished
    with open(results / ".run.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        one_error_line(capsys, main(["check", str(results), "--repair"]))


def test_check_refuses_a_foreign_database_and_sets_garbage_aside(tmp_path, capsys):
    root = tmp_path / "r"
    root.mkdir()
    db = sqlite3.connect(root / "results.sqlite")
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    before = (root / "results.sqlite").read_bytes()
    err = one_error_line(capsys, main(["check", str(root), "--repair"]))
    assert "not an untunable results store" in err and (root / "results.sqlite").read_bytes() == before

    shutil.copy(__file__, root / "results.sqlite")  # not SQLite at all: a store damaged beyond reading
    assert main(["check", str(root)]) == 1
    assert "not a readable results store" in capsys.readouterr().out
    assert main(["check", str(root), "--repair"]) == 0
    assert [p.read_bytes() for p in root.glob("results.sqlite.damaged-*")] == [open(__file__, "rb").read()]
    assert main(["check", str(root)]) == 0


def test_spreadsheet_formulas_are_neutralised_in_the_csv(write_experiment, tmp_path, capsys):
    text = TINY_EXPERIMENT.replace("label: sgd", "label: '=HYPERLINK(\"http://x\")'").replace(
        "name: digits-to-digits", "name: '@SUM(A1)'")
    path, results = write_experiment(text), tmp_path / "r"
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-leaderboard"]) == 0
    assert main(["leaderboard", str(results), "--format", "csv"]) == 0
    csv = (results / "leaderboard.csv").read_text()
    assert "'=HYPERLINK" in csv and "'@SUM(A1)" in csv
    assert not any(cell.startswith(("=", "@", "+")) for line in csv.splitlines() for cell in line.split(","))
    assert json.dumps(neutralise("-0.25")) == '"-0.25"'  # plain numbers stay numbers
    assert neutralise("-2+3") == "'-2+3" and neutralise("\t=1") == "'\t=1" and neutralise(0.5) == 0.5
