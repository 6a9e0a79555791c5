"""The result store: one SQLite file per results directory (WAL), plus an artifact folder.

The schema is a public contract (other tools read it):
  cells(key, kind, scenario, start, attack, seed, config_json, status, error, started, finished, seconds,
        host, versions_json)
  points(key, x, x_unit, metric, value)          -- the curves
  artifacts(key, path, sha256, bytes)            -- checkpoints (safetensors), paths relative to the store
  memberships(key, suite, label)                 -- the latest plan's attack cells: their suites and labels
  notes(key, json)                               -- a cell's counters (steps, examples seen, skipped modules)
A finished cell's row, points and artifacts are written in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, scenario TEXT NOT NULL, start TEXT NOT NULL,
    attack TEXT NOT NULL, seed INTEGER NOT NULL, config_json TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, started REAL, finished REAL, seconds REAL, host TEXT, versions_json TEXT
);
CREATE TABLE IF NOT EXISTS points (
    key TEXT NOT NULL, x REAL NOT NULL, x_unit TEXT NOT NULL, metric TEXT NOT NULL, value REAL
);
CREATE INDEX IF NOT EXISTS points_key ON points(key);
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (key, path)
);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memberships (
    key TEXT NOT NULL, suite TEXT NOT NULL, label TEXT NOT NULL, PRIMARY KEY (key, suite, label)
);
"""

KINDS = ("pretrain", "defend", "attack")
STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")
SPLITS = ("restricted", "original", "restricted_val", "original_val")  # test sets, then validation slices
X_UNITS = ("epoch", "step", "queries")
DB_NAME = "results.sqlite"


def check_metric(metric: str, x_unit: str) -> None:
    """Hold every point to the contract's shape, so readers can rely on it. Which measures exist is declared by
    tasks and plugins (their registrations), and checked when a point is recorded."""
    split, _, measure = metric.partition("/")
    if split not in SPLITS or not measure or "/" in measure:
        raise ValueError(f"metric {metric!r} is not <split>/<measure> with split in {SPLITS}")
    if x_unit not in X_UNITS:
        raise ValueError(f"x_unit {x_unit!r} is not one of {X_UNITS}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Store:
    """Access to one results directory. Safe to open from several processes at once (WAL, busy timeout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "artifacts").mkdir(exist_ok=True)
        self.path = self.root / DB_NAME
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=60000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- cells ---------------------------------------------------------------------------------
    def status(self, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM cells WHERE key=?", (key,)).fetchone()
        return row["status"] if row else None

    def statuses(self) -> dict[str, str]:
        return {r["key"]: r["status"] for r in self.db.execute("SELECT key, status FROM cells")}

    def cell(self, key: str) -> dict | None:
        row = self.db.execute("SELECT * FROM cells WHERE key=?", (key,)).fetchone()
        return dict(row) if row else None

    def mark_running(self, cell) -> None:
        """Claim a cell: its row shows it running, with where and when, until it is finished."""
        with self.transaction() as db:
            db.execute("DELETE FROM points WHERE key=?", (cell.key,))
            db.execute("DELETE FROM artifacts WHERE key=?", (cell.key,))
            db.execute("DELETE FROM notes WHERE key=?", (cell.key,))
            db.execute(
                "INSERT OR REPLACE INTO cells (key, kind, scenario, start, attack, seed, config_json, status,"
                " error, started, finished, seconds, host, versions_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', NULL, ?, NULL, NULL, ?, ?)",
                (cell.key, cell.kind, cell.scenario, cell.start, cell.attack, cell.seed,
                 json.dumps(cell.config, sort_keys=True), time.time(), f"{socket.gethostname()}:{os.getpid()}",
                 json.dumps(cell.versions, sort_keys=True)),
            )

    def finish(self, key: str, status: str, *, points=(), artifacts=(), error: str | None = None,
               notes: dict | None = None) -> None:
        """Commit a finished cell: status, curve and artifacts in one transaction."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        rows = []
        for x, x_unit, metric, value in points:
            check_metric(metric, x_unit)
            rows.append((key, float(x), x_unit, metric, None if value is None else float(value)))
        now = time.time()
        with self.transaction() as db:
            started = db.execute("SELECT started FROM cells WHERE key=?", (key,)).fetchone()
            if started is None:
                raise KeyError(f"cell {key} was never marked running")
            db.execute("DELETE FROM points WHERE key=?", (key,))
            db.execute("DELETE FROM artifacts WHERE key=?", (key,))
            db.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO notes VALUES (?, ?)", (key, json.dumps(notes or {}, default=str)))
            for path in artifacts:
                path = Path(path)
                db.execute("INSERT INTO artifacts VALUES (?, ?, ?, ?)",
                           (key, str(path.relative_to(self.root)), sha256_file(path), path.stat().st_size))
            db.execute("UPDATE cells SET status=?, error=?, finished=?, seconds=? WHERE key=?",
                       (status, error, now, now - (started["started"] or now), key))

    def replace_memberships(self, rows) -> None:
        """Make (key, suite, label) triples the current plan's attack cells (a config may sit in several suites).

        Cells of an earlier version of the experiment stay in `cells` (reused if that config comes back) but,
        no longer listed here, they leave the leaderboard.
        """
        with self.transaction() as db:
            db.execute("DELETE FROM memberships")
            db.executemany("INSERT OR IGNORE INTO memberships VALUES (?, ?, ?)", list(rows))

    def reset_abandoned(self) -> int:
        """Cells left 'running' by a process that died are made pending again (the caller holds the run lock)."""
        with self.transaction() as db:
            return db.execute("UPDATE cells SET status='pending' WHERE status='running'").rowcount

    # -- reading -------------------------------------------------------------------------------
    def points(self, key: str) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT x, x_unit, metric, value FROM points WHERE key=? "
                                                 "ORDER BY rowid", (key,))]

    def notes(self, key: str) -> dict:
        row = self.db.execute("SELECT json FROM notes WHERE key=?", (key,)).fetchone()
        return json.loads(row["json"]) if row else {}

    def artifact(self, key: str, name: str = "model.safetensors") -> Path | None:
        """The verified path of a cell's artifact, or None; a file whose hash changed is refused."""
        row = self.db.execute("SELECT path, sha256 FROM artifacts WHERE key=? AND path LIKE ?",
                              (key, f"%{name}")).fetchone()
        if row is None:
            return None
        path = self.root / row["path"]
        if not path.exists() or sha256_file(path) != row["sha256"]:
            raise RuntimeError(f"{path}: artifact missing or altered since cell {key[:12]} stored it")
        return path

    def artifact_dir(self, key: str) -> Path:
        path = self.root / "artifacts" / key[:2] / key
        path.mkdir(parents=True, exist_ok=True)
        return path
