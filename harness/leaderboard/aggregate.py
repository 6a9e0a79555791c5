"""Aggregation: per-seed metric values into mean ± std and a 95 % t-interval per start × attack × metric."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

GROUP = ["scenario", "suite", "start", "attack", "metric", "unit", "better", "measure"]


def aggregate(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std and a 95 % t-interval over seeds, keeping the per-seed values.

    A metric that is n/a for any seed is n/a overall; one censored for any seed is a lower bound ("> mean")."""
    from scipy.special import stdtrit  # the t quantile; scipy.special imports far faster than scipy.stats

    out = per_seed.assign(missing=per_seed.value.isna()).groupby(GROUP, sort=False).agg(
        n_seeds=("value", "size"), mean=("value", "mean"), std=("value", "std"), na=("missing", "any"),
        censored=("censored", "any"), seeds=("seed", list), values=("value", list), notes=("note", list),
    ).reset_index()
    out["censored"] &= ~out.na
    out["mean"] = out["mean"].where(~out.na)
    out["std"] = out["std"].where(~out.na & ~out.censored & (out.n_seeds >= 2))
    half = stdtrit(out.n_seeds - 1, 0.975) * out["std"] / np.sqrt(out.n_seeds)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    out["note"] = [_seed_notes(seeds, notes) for seeds, notes in zip(out.seeds, out.notes)]
    out["per_seed"] = [{int(seed): (None if math.isnan(v) else float(v)) for seed, v in zip(seeds, values)}
                       for seeds, values in zip(out.seeds, out["values"])]
    return out.drop(columns=["seeds", "values", "notes"])


def _seed_notes(seeds: list, notes: list) -> str:
    """One note when every seed has the same one, else the noted seeds one by one."""
    if all(notes) and len(set(notes)) == 1:
        return notes[0]
    return "; ".join(f"seed {seed}: {note}" for seed, note in zip(seeds, notes) if note)
