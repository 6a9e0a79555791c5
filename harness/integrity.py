"""`untunable check RESULTS [--repair]`: is the store sound, and is every stored artifact what was stored?

Checking reads only. Repairing (under the run lock) salvages the readable rows of a damaged store into a
fresh one, keeping the damaged file aside, and makes every cell whose artifact is missing or altered, whose
rows may be incomplete, and every cell built on one of those, pending again: the next `untunable run`
rebuilds exactly them (their keys do not change, so nothing else reruns).
"""

from __future__ import annotations

import bisect
import json
import os
import sqlite3
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Callable

from harness.store import DB_NAME, FINISHED, Store, StoreDamaged, StoreError, expected_columns, sha256_file

PROBE_REACH = 10_000  # rowids probed past the last readable one when a table can no longer be scanned


def check_results(root: str | Path, *, repair: bool, say: Callable[[str], None]) -> list[str]:
    """Every problem found, one line each (also passed to `say`); with `repair`, fixed as described above."""
    root = Path(root)
    if not (root / DB_NAME).is_file():
        raise StoreError(f"{root}: no results store here (expected {DB_NAME})")
    problems: list[str] = []

    def report(line: str) -> None:
        problems.append(line)
        say(line)

    lock = _run_lock(root) if repair else None
    try:
        salvaged, suspects = False, set()
        try:
            with closing(Store(root, readonly=True)) as probe:
                probe.check_integrity(full=True)
        except StoreDamaged as exc:
            report(str(exc).rpartition(";")[0])
            if not repair:
                return _conclude(problems, root, say)
            suspects, salvaged = salvage(root), True
            say(f"{root / DB_NAME}: salvaged the readable rows into a fresh store; the damaged file is kept aside")
        with closing(Store(root, readonly=not repair)) as store:
            bad = _artifact_problems(store, report)
            if salvaged:
                bad |= _incomplete(store, suspects, report)
            if repair and bad:
                rerun = bad | _downstream(store, bad)
                store.mark_for_rerun(rerun, "untunable check --repair: artifact missing, altered or incomplete")
                for key in bad:
                    _discard_artifacts(store, key)
                say(f"{root}: {len(rerun)} cell(s) marked to run again ({len(rerun) - len(bad)} of them built on a "
                    f"bad one); `untunable run` rebuilds them")
        return _conclude(problems, root, say, repaired=repair)
    finally:
        if lock is not None:
            lock.release()


def _run_lock(root: Path):
    from harness.runner import RunLock

    return RunLock(root)


def _conclude(problems: list[str], root: Path, say, repaired: bool = False) -> list[str]:
    if not problems:
        say(f"{root}: ok (store intact, every artifact matches its hash)")
    elif repaired:
        say(f"{root}: {len(problems)} problem(s) repaired; run the experiment again to rebuild what was marked")
    else:
        say(f"{root}: {len(problems)} problem(s); run `untunable check {root} --repair`, then run again")
    return problems


def _artifact_problems(store: Store, report) -> set[str]:
    """Keys of finished cells whose artifact is missing, altered or outside the store, or who have none at all."""
    bad = set()
    root = store.root.resolve()
    for row in store.db.execute("SELECT a.key, a.path, a.sha256, a.bytes, c.kind FROM artifacts a JOIN cells c "
                                f"ON c.key=a.key WHERE c.status IN ({_marks(FINISHED)})", FINISHED):
        path = (store.root / row["path"]).resolve()
        if not path.is_relative_to(root):
            why = "points outside the results directory"
        elif not path.is_file():
            why = "is missing"
        elif path.stat().st_size != row["bytes"] or sha256_file(path) != row["sha256"]:
            why = "was altered (its hash no longer matches)"
        else:
            continue
        bad.add(row["key"])
        report(f"{store.root / row['path']}: artifact of {row['kind']} cell {row['key'][:12]} {why}")
    for row in store.db.execute("SELECT key, kind FROM cells WHERE kind IN ('pretrain', 'defend') AND status IN "
                                f"({_marks(FINISHED)}) AND key NOT IN (SELECT key FROM artifacts)", FINISHED):
        bad.add(row["key"])
        report(f"{store.root}: {row['kind']} cell {row['key'][:12]} is finished but has no stored model")
    return bad


def _incomplete(store: Store, suspects: set[str], report) -> set[str]:
    """Finished cells a salvage may have left without all their rows: next to a lost range, or with no points
    or no notes (every finished cell stores both)."""
    finished = _marks(FINISHED)
    lacking = {r["key"] for r in store.db.execute(
        f"SELECT key FROM cells WHERE status IN ({finished}) AND (key NOT IN (SELECT key FROM points) "
        "OR key NOT IN (SELECT key FROM notes))", FINISHED)}
    done = {r["key"] for r in store.db.execute(f"SELECT key FROM cells WHERE status IN ({finished})", FINISHED)}
    incomplete = (lacking | suspects) & done
    for key in sorted(incomplete):
        report(f"{store.path}: cell {key[:12]} may have lost rows in the damage")
    return incomplete


def _marks(values) -> str:
    return ", ".join("?" * len(values))


def _downstream(store: Store, keys: set[str]) -> set[str]:
    """Every cell that, directly or through others, was built from one of `keys`."""
    users: dict[str, set[str]] = {}
    for row in store.db.execute("SELECT key, config_json FROM cells"):
        for source in json.loads(row["config_json"]).get("inputs") or []:
            users.setdefault(source, set()).add(row["key"])
    found, frontier = set(), list(keys)
    while frontier:
        for user in users.get(frontier.pop(), ()):
            if user not in found and user not in keys:
                found.add(user)
                frontier.append(user)
    return found


def _discard_artifacts(store: Store, key: str) -> None:
    """Remove a bad cell's artifact files (the re-run writes fresh ones), never anything outside the store."""
    folder = store.root / "artifacts" / key[:2] / key
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file():
                path.unlink()


# -- salvaging a damaged SQLite file ------------------------------------------------------------------

def salvage(root: Path) -> set[str]:
    """Move the damaged store aside and copy every row SQLite can still read into a fresh one.

    Returns the keys of cells whose points sit next to an unreadable range (a cell's points are written in
    one transaction, so they occupy consecutive rowids and only the cells at the edges can be cut).
    """
    path = root / DB_NAME
    aside = root / f"{DB_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    suspects: set[str] = set()
    source = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
    fresh = Store(root)
    try:
        with fresh.transaction() as db:
            for table, columns in expected_columns().items():
                rows, lost = _readable_rows(source, table)
                db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * len(columns))})",
                               [row[1:] for row in rows])
                if table == "points":
                    suspects |= _edges(rows, lost)
    finally:
        source.close()
        fresh.close()
    return suspects


def _readable_rows(db: sqlite3.Connection, table: str) -> tuple[list[tuple], list[int]]:
    """(rowid, *columns) of every readable row, and the rowids SQLite could not read."""
    with suppress(sqlite3.DatabaseError):  # a damaged page: fall through to salvage row by row
        return db.execute(f"SELECT rowid, * FROM {table} ORDER BY rowid").fetchall(), []
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = 0
    rows, lost, rowid, last_good = [], [], 0, 0
    while rowid < max(top, last_good + PROBE_REACH):
        rowid += 1
        try:
            row = db.execute(f"SELECT rowid, * FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            lost.append(rowid)
            continue
        if row is not None:
            rows.append(row)
            last_good = rowid
    return rows, lost


def _edges(rows: list[tuple], lost: list[int]) -> set[str]:
    """The keys of the readable points rows right before and after each unreadable rowid."""
    ordered = [row[0] for row in rows]
    key_at = {row[0]: row[1] for row in rows}
    edges = set()
    for rowid in lost:
        at = bisect.bisect_left(ordered, rowid)
        edges.update(key_at[r] for r in ordered[max(at - 1, 0):at + 1])
    return edges
