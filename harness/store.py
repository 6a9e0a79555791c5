"""The result store: one SQLite file per results directory (WAL), plus an artifact folder.

The schema is a public contract (other tools read it):
  cells(key, kind, scenario, start, attack, seed, config_json, status, error, started, finished, seconds,
        host, versions_json)
  points(key, x, x_unit, metric, value)          -- the curves
  artifacts(key, path, sha256, bytes)            -- checkpoints (safetensors), paths relative to the store
  memberships(key, suite, label)                 -- the latest plan's attack cells: their suites and labels
  notes(key, json)                               -- a cell's counters (steps, examples seen, skipped modules)
A finished cell's row, points and artifacts are written in one transaction. The schema's version is the
database's `user_version`: a store written by a newer untunable, or a SQLite file that is not a store, is
refused on open; a read-only open never writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from functools import lru_cache
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

KINDS = ("pretrain", "defend", "attack", "trial")  # trial: a cell an attack cell ran (harness/trials.py)
STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")
SPLITS = ("restricted", "original", "restricted_val", "original_val")  # test sets, then validation slices
X_UNITS = ("epoch", "step", "queries")
DB_NAME = "results.sqlite"
SCHEMA_VERSION = 1


class StoreError(RuntimeError):
    """A results store that cannot be used as asked (absent, damaged, foreign or newer): one line, exit status 2."""


class StoreDamaged(StoreError):
    """SQLite cannot read the store, or its integrity check fails: `untunable check --repair` salvages it."""


def repair_hint(root: Path) -> str:
    return f"run `untunable check {root} --repair`, then run again"


@lru_cache(maxsize=1)
def expected_columns() -> dict[str, list[str]]:
    """Every table of SCHEMA with its column names, read from a scratch in-memory database."""
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {t: [row[1] for row in db.execute(f"PRAGMA table_info({t})")] for t in tables}


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
    """Access to one results directory. Safe to open from several processes at once (WAL, busy timeout).

    `readonly` opens an existing store without ever writing to it (list, curves, leaderboard, check);
    `verify` also runs SQLite's quick integrity check, so a damaged store is refused before it is used.
    """

    def __init__(self, root: str | Path, *, readonly: bool = False, verify: bool = False):
        self.root = Path(root)
        self.path = self.root / DB_NAME
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.root}: no results store here (expected {DB_NAME}; run `untunable run FILE` first)")
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "artifacts").mkdir(exist_ok=True)
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}{'?mode=ro' if readonly else ''}"
        self.db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA busy_timeout=60000")
            self._check_schema(create=not readonly)
            if verify:
                self.check_integrity()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreDamaged(f"{self.path}: not a readable results store ({exc}); {repair_hint(self.root)}") from None
        except BaseException:
            self.db.close()
            raise

    def _check_schema(self, *, create: bool) -> None:
        """Create the schema in an empty file; refuse a newer schema version, a foreign file or altered columns."""
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and create:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            tables = set(expected_columns())
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: written by a newer untunable (store schema {version}, this one knows "
                             f"{SCHEMA_VERSION}); upgrade untunable to use it")
        missing = [t for t in expected_columns() if t not in tables]
        if missing:
            held = ", ".join(sorted(tables)) or "no tables"
            raise StoreError(f"{self.path}: not an untunable results store (it holds {held}; missing {', '.join(missing)})")
        for table, columns in expected_columns().items():
            found = [row[1] for row in self.db.execute(f"PRAGMA table_info({table})")]
            if found != columns:
                raise StoreError(f"{self.path}: table {table} has columns ({', '.join(found)}), expected "
                                 f"({', '.join(columns)}); this store was altered and is not used")
        if create:
            self.db.execute("PRAGMA journal_mode=WAL")
            if version < SCHEMA_VERSION:  # a store from before schema versions: the same tables, now versioned
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def check_integrity(self, full: bool = False) -> None:
        """SQLite's own check of every page (quick: structure only; full: also indexes); StoreError if damaged."""
        try:
            rows = [r[0] for r in self.db.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        if rows != ["ok"]:
            raise StoreDamaged(f"{self.path}: damaged ({rows[0]}{f' and {len(rows) - 1} more' if len(rows) > 1 else ''}); "
                             f"{repair_hint(self.root)}")

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
        if not path.resolve().is_relative_to(self.root.resolve()) or not path.exists() \
                or sha256_file(path) != row["sha256"]:
            raise StoreError(f"{path}: artifact missing or altered since cell {key[:12]} stored it; "
                             f"{repair_hint(self.root)}")
        return path

    def verify_artifacts(self, inputs) -> None:
        """Before a run: every stored artifact of a finished cell still exists at its size (a cheap stat that
        catches truncation), and every input the run is about to load still has its hash (else StoreError)."""
        finished = ", ".join("?" * len(FINISHED))
        for row in self.db.execute(f"SELECT a.key, a.path, a.bytes FROM artifacts a JOIN cells c ON c.key=a.key "
                                   f"WHERE c.status IN ({finished})", FINISHED):
            path = self.root / row["path"]
            if not path.is_file() or path.stat().st_size != row["bytes"]:
                raise StoreError(f"{path}: artifact missing or truncated since cell {row['key'][:12]} stored it; "
                                 f"{repair_hint(self.root)}")
        for key in sorted(set(inputs)):
            if self.artifact(key) is None:
                raise StoreError(f"{self.root}: cell {key[:12]} is finished but has no stored model; "
                                 f"{repair_hint(self.root)}")

    def mark_for_rerun(self, keys, reason: str) -> None:
        """Make finished cells pending again (their artifacts forgotten), so the next run rebuilds them."""
        with self.transaction() as db:
            for key in keys:
                db.execute("DELETE FROM artifacts WHERE key=?", (key,))
                db.execute("UPDATE cells SET status='pending', error=? WHERE key=?", (reason, key))

    def artifact_dir(self, key: str) -> Path:
        path = self.root / "artifacts" / key[:2] / key
        path.mkdir(parents=True, exist_ok=True)
        return path
