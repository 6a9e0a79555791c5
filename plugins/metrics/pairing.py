"""What the built-in metrics share: per-seed rows, and pairing a cell with its baselines (the original and scratch
cells of the same suite, attack label and seed). Every comparison goes through `sign`, so it holds for a
lower-is-better score (MSE) exactly as for accuracy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.leaderboard.curves import PAIR, Curves
from harness.leaderboard.measures import format_amount
from harness.registry import Measure


def emit(frame: pd.DataFrame, metric: str, *, suite_level: bool = False) -> pd.DataFrame:
    """One column's per-seed rows; suite-level values have attack ''."""
    out = frame.assign(metric=metric, **({"attack": ""} if suite_level else {}))
    return out[[c for c in ("scenario", "suite", "start", "attack", "seed", "metric", "value", "censored", "note")
                if c in out]]


def start_rows(frame: pd.DataFrame, start: str) -> pd.DataFrame:
    """The values of one start, keyed for pairing with the cells of the same attack config and seed."""
    return frame.loc[frame.start == start, PAIR + ["value"]]


def relative(frame: pd.DataFrame, scratch: pd.DataFrame, min_gap: float, curves: Curves) -> pd.DataFrame:
    """(A_P − A) / (A_P − A_S) per seed, paired with the original and `scratch` on attack and seed.

    For a lower-is-better score this is (A − A_P) / (A_S − A_P), the same number (docs/evaluation.md's R_gen).
    n/a when the original beats scratch by less than `min_gap` (in the score's own unit): the ratio would divide
    by ~0, or by a negative gap, where "as hard as scratch" means nothing."""
    out = (frame.merge(start_rows(frame, "original").rename(columns={"value": "a_p"}), on=PAIR, how="left")
                .merge(scratch[PAIR + ["value"]].rename(columns={"value": "a_s"}), on=PAIR, how="left"))
    gap = out.sign * (out.a_p - out.a_s)
    defined = gap >= min_gap
    out["value"] = ((out.a_p - out.value) / (out.a_p - out.a_s)).where(defined)
    out["note"] = [
        "" if ok else
        "no original cell for this attack and seed" if math.isnan(p) else
        "no scratch cell for this attack and seed" if math.isnan(s) else
        _gap_note(g, min_gap, curves.measures[scenario])
        for ok, p, s, g, scenario in zip(defined, out.a_p, out.a_s, gap, out.scenario)]
    return out


def _gap_note(gap: float, min_gap: float, measure: Measure) -> str:
    """Why R is n/a, with the gap oriented so that positive means the original beats scratch."""
    difference = "A_P − A_S" if measure.higher_is_better else "A_S − A_P"
    return f"{difference} = {_delta(gap, measure)}, under {_delta(min_gap, measure)}"


def _delta(value: float, measure: Measure) -> str:
    percent = measure.display == "percent"
    return format_amount(value, "delta", percent) + (" points" if percent else "")


def scratch_best(final: pd.DataFrame, curves: Curves) -> pd.DataFrame:
    """Scratch's best config of each suite, with its per-seed final (test) scores.

    The choice reads the adversary's validation slice, never a test set: the best mean over seeds of each
    scratch cell's last `restricted_val/<score>` point (docs/protocol.md). Cells without a validation curve (a
    store written before validation slices) take no part in the choice."""
    scratch = final[final.start == "scratch"].merge(validation_final(curves), on="key")
    mean = (scratch.sign * scratch.val).groupby([scratch.scenario, scratch.suite, scratch.attack]).mean()
    if mean.empty:
        return scratch[PAIR + ["value", "sign"]]
    chosen = pd.DataFrame(mean.groupby(level=["scenario", "suite"]).idxmax().tolist(),
                          columns=["scenario", "suite", "attack"])
    return scratch.merge(chosen, on=["scenario", "suite", "attack"])[PAIR + ["value", "sign"]]


def validation_final(curves: Curves) -> pd.DataFrame:
    """key, val: each attack cell's score on the adversary's validation slice at its last recorded epoch."""
    points = curves.points[curves.points.x_unit == "epoch"].merge(
        curves.cells[["key", "measure"]].drop_duplicates("key"), on="key")
    val = points[points.metric == "restricted_val/" + points.measure]
    last = val[val.x == val.groupby("key").x.transform("max")]
    return last[["key", "value"]].rename(columns={"value": "val"})


def unbaselined(frame: pd.DataFrame, target: pd.DataFrame, on: list[str], note: str) -> pd.DataFrame:
    """Left-merge per-seed targets; rows without one get NaN and `note`."""
    out = frame.merge(target, on=on, how="left")
    out["note"] = np.where(out.target.isna(), note, "")
    return out
