"""The CI leaderboard (configs/ci.yaml, real cells) against the store it was computed from.

.ci/run runs this after `make ci-leaderboard`, with UNTUNABLE_CI_RESULTS=runs/ci; elsewhere it is skipped.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest

from tests.leaderboard_fixtures import stored_points

RESULTS = os.environ.get("UNTUNABLE_CI_RESULTS")
pytestmark = [pytest.mark.ci_results,
              pytest.mark.skipif(not RESULTS, reason="set UNTUNABLE_CI_RESULTS to a results directory (CI does)")]


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(RESULTS)


def test_every_planned_cell_finished(root):
    with sqlite3.connect(root / "results.sqlite") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM cells GROUP BY status").fetchall())
        starts = {s for (s,) in db.execute("SELECT DISTINCT start FROM cells WHERE kind='attack'")}
    assert set(statuses) <= {"done", "diverged"} and sum(statuses.values()) >= 44
    assert {"scratch", "original"} <= starts and sum(s.startswith("defense:") for s in starts) >= 3


def test_leaderboard_files_match_the_store(root):
    rows = list(csv.DictReader((root / "leaderboard.csv").open(encoding="utf-8")))
    written = {(r["scenario"], r["suite"], r["start"], r["attack"], r["metric"]): r for r in rows}
    curves = defaultdict(dict)
    for p in stored_points(root):
        if p["x_unit"] == "epoch" and p["metric"] == "restricted/accuracy":
            curves[(p["scenario"], p["suite"], p["label"], p["start"], p["seed"])][p["x"]] = p["value"]
    assert len(curves) >= 40
    by_config = defaultdict(list)
    for (scenario, suite, label, start, _seed), curve in curves.items():
        for t in sorted(curve):
            by_config[(scenario, suite, start, label, f"score@{t:g}")].append(curve[t])
    shown = [key for key in by_config if key in written]  # score@t for the t the leaderboard shows
    assert {key[4] for key in shown} == {"score@0", "score@1", "score@3"}
    for key in shown:
        values = by_config[key]
        assert float(written[key]["mean"]) == pytest.approx(sum(values) / len(values)), key
    document = json.loads((root / "leaderboard.json").read_text())
    assert document["sections"] and all(section["rows"] for section in document["sections"])
    markdown = (root / "leaderboard.md").read_text()
    assert "Threat model" in markdown and "defense:sophon-ice" in markdown
    page = (root / "leaderboard.html").read_text()
    assert "<table" in page and "data:image/png;base64," in page
    plots = list((root / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)


def test_defenses_really_trained(root):
    """A SOPHON guard that fires at its first check releases the original unchanged: CI must notice."""
    with sqlite3.connect(root / "results.sqlite") as db:
        configs = db.execute("SELECT c.config_json FROM cells c JOIN memberships m ON m.key = c.key").fetchall()
        current = {key for (config,) in configs for key in json.loads(config)["inputs"]}  # this plan's inputs
        notes = [json.loads(n) for key, n in db.execute(
            "SELECT n.key, n.json FROM notes n JOIN cells c ON c.key = n.key WHERE c.kind = 'defend'")
            if key in current]
    sophon = [n["sophon"] for n in notes if "sophon" in n]
    assert len(sophon) >= 2
    assert all(s["iterations"] > 10 and not s["stopped_by_guard"] for s in sophon), sophon


def test_classification_curves_did_not_move(root):
    """Every curve point of configs/ci.yaml equals the one stored before tasks became plugins.

    tests/fixtures/ci_curves.csv holds them; regenerate it only with a change that is meant to move
    classification results (or edits configs/ci.yaml), and say so in the commit.
    """
    identity = ["kind", "scenario", "start", "attack", "seed", "x_unit", "x", "metric"]
    with (Path(__file__).parent / "fixtures" / "ci_curves.csv").open(encoding="utf-8") as handle:
        expected = {tuple(row[c] for c in identity): float(row["value"]) for row in csv.DictReader(handle)}
    with sqlite3.connect(root / "results.sqlite") as db:
        stored = {tuple(str(v) for v in row[:-1]): row[-1] for row in db.execute(
            "SELECT c.kind, c.scenario, c.start, c.attack, c.seed, p.x_unit, p.x, p.metric, p.value "
            "FROM points p JOIN cells c ON c.key = p.key")}
    assert stored.keys() == expected.keys()
    moved = {k: (stored[k], v) for k, v in expected.items() if stored[k] != pytest.approx(v, rel=1e-9, abs=1e-12)}
    assert not moved, f"{len(moved)} points moved, e.g. {next(iter(moved.items()))}"
