"""Undistillability (docs/evaluation.md §2, distillation row): does a teacher's student beat the student without one?

For every attack config and seed that has a `no-teacher` cell (the distill family declares that start), each
start's student gets two columns: `student`, its final restricted score, and `gap vs no-teacher`, that score
minus the no-teacher student's (same attack config and seed, oriented so that positive means the teacher
helped). The leaderboard turns the per-seed gaps into mean ± std and a 95 % t-interval; the verdict follows
the interval, as CMIM's criterion reads: a teacher is *undistillable* when its students do not beat the
no-teacher student (the interval reaches 0 or below), *distillable* when the whole interval is above 0.
"""

from __future__ import annotations

import math

from harness import Column, Param, hookimpl

STUDENT, GAP = "student", "gap vs no-teacher"
COLUMNS = ["scenario", "suite", "start", "attack", "seed", "metric", "value", "note"]


def interval(values: list[float]) -> tuple[float, float] | None:
    """The 95 % t-interval of the mean of `values`, or None with fewer than two."""
    from scipy.special import stdtrit

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    half = stdtrit(n - 1, 0.975) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return mean - half, mean + half


def verdict(gaps: list[float]) -> str:
    """The CMIM verdict a start's per-seed gaps support, in words."""
    bounds = interval(gaps)
    if bounds is None:
        return "one seed: no interval, so no verdict"
    low, high = bounds
    if high < 0:
        return "undistillable: its students are worse than the no-teacher student (95 % interval below 0)"
    if low <= 0:
        return "undistillable: its students do not beat the no-teacher student (95 % interval contains 0)"
    return "distillable: its students beat the no-teacher student (95 % interval above 0)"


def undistillability(curves, baseline: str = "no-teacher"):
    """Per-seed `student` and `gap vs no-teacher` rows for every start paired with a `baseline` cell."""
    import pandas as pd

    final = curves.final()
    pair = ["scenario", "suite", "attack", "seed"]
    base = final.loc[final.start == baseline, pair + ["value"]].rename(columns={"value": "base"})
    paired = final.merge(base, on=pair)
    if paired.empty:
        return pd.DataFrame(columns=COLUMNS)
    students = paired.assign(metric=STUDENT, note="")
    gaps = paired[paired.start != baseline].assign(metric=GAP)
    gaps["value"] = gaps.sign * (gaps.value - gaps.base)
    said = {key: verdict(list(group.value)) for key, group in gaps.groupby(["scenario", "suite", "attack", "start"])}
    gaps["note"] = [said[key] for key in zip(gaps.scenario, gaps.suite, gaps.attack, gaps.start)]
    return pd.concat([students, gaps])[COLUMNS].reset_index(drop=True)


@hookimpl
def register_metrics(register):
    register("undistillability", factory="plugins.undistillability:undistillability", version="1", order=80,
             tiny_params={"baseline": "scratch"},  # plugin-check's constructed store has no no-teacher cells
             params=[Param("baseline", "str", "no-teacher",
                           help="the reference start every student is compared with (CMIM: the no-teacher student)")],
             columns=[Column(STUDENT, "score", "against-score", "the student's final restricted score"),
                      Column(GAP, "delta", "lower", "student − no-teacher student, same attack config and seed; "
                                                    "positive = the teacher helped")],
             description="student score per start and its gap to the no-teacher student (same attack config and "
                         "seed); undistillable when the gap's 95 % interval does not lie above 0")
