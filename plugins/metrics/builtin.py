"""The built-in leaderboard metrics (docs/evaluation.md §2), computed from the stored curves; registered in
plugins/metrics/__init__.py with the unit and direction of every column they fill."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.leaderboard.curves import CELL, PAIR, PER_START, Curves
from plugins.metrics.pairing import emit, relative, scratch_best, start_rows, unbaselined

SHOWN_EPOCHS = (0, 1, 5, 10, 15, 20)


def intactness(curves: Curves) -> pd.DataFrame:
    """O@0: original-domain score of the released model; intactness O(D)/O(P); drop O(P) − O(D).

    The runner records every attack cell's start model at epoch 0 before any attack step, so the values agree;
    the best over the suite's cells is taken so that a store written by other tools, whose initFC attacks may
    evaluate after re-initialising the head, still reports the released model."""
    scored = curves.cells.merge(curves.original, on="key")
    scored = scored[scored.start != "scratch"]  # a random init is not a released model
    scored = scored.assign(rank=scored.sign * scored.value).sort_values("rank")
    released = scored.groupby(PER_START).tail(1)
    original = released.loc[released.start == "original", ["scenario", "suite", "seed", "value"]]
    out = unbaselined(released, original.rename(columns={"value": "target"}), ["scenario", "suite", "seed"],
                      "no original cell for this seed")
    higher = out.sign > 0
    numerator, denominator = out.value.where(higher, out.target), out.target.where(higher, out.value)
    small = denominator.abs() < 1e-12
    ratio = out.assign(value=(numerator / denominator).where(~small),
                       note=out.note.where(~small | out.target.isna(), "original-domain score is 0"))
    drop = out.assign(value=out.sign * (out.target - out.value))
    return pd.concat([emit(released, "O@0", suite_level=True),
                      emit(ratio, "intactness", suite_level=True),
                      emit(drop, "drop", suite_level=True)])


def score_at(curves: Curves, epochs: list = SHOWN_EPOCHS) -> pd.DataFrame:
    """score@t: the restricted score after t epochs, for the listed t that exist and the final epoch T."""
    curve = curves.by_epoch()
    final = curve.epoch == curve.groupby("key").epoch.transform("max")
    shown = curve[curve.epoch.isin([float(t) for t in epochs]) | final].sort_values("epoch", kind="stable")
    frames = [emit(rows, f"score@{epoch:g}") for epoch, rows in shown.groupby("epoch")]
    return pd.concat(frames) if frames else emit(shown, "score@0")  # empty: only query ladders were scored


def resistance(curves: Curves, min_gap: float = 0.02) -> pd.DataFrame:
    """R = (A_P − A_D) / (A_P − A_S) after the final epoch; S = the paired scratch cell (same attack, seed)."""
    final = curves.final()
    return emit(relative(final, start_rows(final, "scratch"), min_gap, curves), "R")


def resistance_tuned(curves: Curves, min_gap: float = 0.02) -> pd.DataFrame:
    """R_tuned: as R with scratch@best (scratch's best config in the suite) in the denominator; also reports
    scratch@best's final score and which config it is."""
    final = curves.final()
    best = scratch_best(final, curves)
    scratch = final[PAIR].drop_duplicates().merge(best.drop(columns=["attack", "sign"]),
                                                  on=["scenario", "suite", "seed"])
    chosen = best.assign(start="scratch", note="config " + best.attack)
    return pd.concat([emit(relative(final, scratch, min_gap, curves), "R_tuned"),
                      emit(chosen, "scratch@best", suite_level=True)])


def auc(curves: Curves, min_gap: float = 0.02) -> pd.DataFrame:
    """AUC = mean score over the curve's evaluations after epoch 0 ((1/T) Σ_{t=1..T} A(t) for per-epoch curves),
    and AUC_norm = (AUC_P − AUC) / (AUC_P − AUC_S), normalised like R."""
    curve = curves.by_epoch()
    area = curve[curve.epoch > 0].groupby(CELL + ["sign"], as_index=False).value.mean()
    return pd.concat([emit(area, "AUC"),
                      emit(relative(area, start_rows(area, "scratch"), min_gap, curves), "AUC_norm")])


def steps_to_scratch(curves: Curves) -> pd.DataFrame:
    """The first optimizer step at which the score reaches scratch@best's final score (same seed); censored at
    the attack's step budget (the most steps any start of that attack config recorded) when never reached."""
    final, steps = curves.final(), curves.by_step()
    target = scratch_best(final, curves)[["scenario", "suite", "seed", "value"]].rename(columns={"value": "target"})
    budget = steps.groupby(["scenario", "attack_id"], as_index=False).step.max().rename(columns={"step": "budget"})
    steps = steps.merge(target, on=["scenario", "suite", "seed"])
    reached = steps[steps.sign * (steps.value - steps.target) >= -1e-12].groupby(CELL, as_index=False).step.min()
    out = unbaselined(final, target, ["scenario", "suite", "seed"], "no scratch cells in this suite")
    out = out.merge(budget, on=["scenario", "attack_id"], how="left").merge(reached, on=CELL, how="left")
    out["censored"] = out.step.isna() & out.budget.notna() & out.target.notna()
    out["value"] = out.step.where(~out.censored, out.budget)
    never = ["not reached within " + f"{b:,.0f}" + " steps" for b in out.budget]
    out["note"] = np.select([out.note != "", out.budget.isna(), out.censored],
                            [out.note, "no per-step curve recorded", never], "")
    return emit(out, "steps_to_scratch")


def worst_case(curves: Curves, min_gap: float = 0.02) -> pd.DataFrame:
    """Over one attack set per start, the same for every seed: the suite's attacks with a final score for every
    seed of that start. Per seed, the attacker's best final score over the set (no baselines needed), and the
    lowest R over the set's attacks where R is defined for every seed; each note lists the attacks left out and why."""
    final = curves.final()
    if final.empty:  # no cell was scored per epoch (only query ladders): no attack set
        return emit(final, "worst_case", suite_level=True)
    start = ["scenario", "suite", "start"]
    seeds = final.groupby(start).seed.nunique().rename("seeds").reset_index()
    runs = final.groupby(start + ["attack"]).seed.nunique().rename("runs").reset_index().merge(seeds, on=start)
    complete = runs[runs.runs == runs.seeds][start + ["attack"]]
    partial = _left_out(runs[runs.runs < runs.seeds], lambda row: "not run for every seed")
    in_set = final.merge(complete, on=start + ["attack"])
    best = in_set.assign(rank=in_set.sign * in_set.value).sort_values("rank").groupby(PER_START).tail(1)

    r = relative(final, start_rows(final, "scratch"), min_gap, curves).merge(complete, on=start + ["attack"])
    defined = r.groupby(start + ["attack"], as_index=False).agg(ok=("value", lambda v: bool(v.notna().all())),
                                                                 why=("note", lambda n: next((x for x in n if x), "")))
    undefined = _left_out(defined[~defined.ok], lambda row: f"R n/a ({row.why})")
    lowest = (r.merge(defined[defined.ok][start + ["attack"]], on=start + ["attack"])
               .groupby(PER_START, as_index=False).value.min())
    lowest = r[PER_START].drop_duplicates().merge(lowest, on=PER_START, how="left")
    return pd.concat([emit(_noted(best, [partial]), "worst_case", suite_level=True),
                      emit(_noted(lowest, [partial, undefined]), "worst_case_R", suite_level=True)])


def _left_out(attacks: pd.DataFrame, reason) -> pd.DataFrame:
    """scenario, suite, start, item: '<attack> (<reason>)' for each attack left out of a start's set."""
    return attacks.assign(item=[f"{row.attack} ({reason(row)})" for row in attacks.itertuples()])[
        ["scenario", "suite", "start", "item"]]


def _noted(rows: pd.DataFrame, left_out: list[pd.DataFrame]) -> pd.DataFrame:
    """`rows` with a note per start listing the attacks left out of its set ('' when none)."""
    items = pd.concat(left_out)
    notes = items.groupby(["scenario", "suite", "start"]).item.agg(lambda i: "left out: " + "; ".join(i)).to_dict()
    return rows.assign(note=[notes.get(key, "") for key in zip(rows.scenario, rows.suite, rows.start)])

def copy_at_queries(curves: Curves) -> pd.DataFrame:
    """Per query ladder (an attack config at every budget of its list) and start: `victim`, the victim's own score
    (per seed, the mean over the ladder's cells), and `copy@q`, the stolen copy's score at budget q. A measure other
    than the scenario's score (an encoder's probe_accuracy) and a budget not fully spent are noted."""
    ladders = curves.by_queries()
    if ladders.empty:
        return pd.DataFrame(columns=CELL + ["metric", "value", "note"])
    measured = np.where(ladders.copy_measure != ladders.measure, "restricted " + ladders.copy_measure, "")
    short = np.where(ladders.spent < ladders.budget, "spent " + ladders.spent.map("{:,.0f}".format) + " queries: "
                     "every image the adversary holds", "")
    ladders = ladders.assign(attack=ladders.ladder, note=[" · ".join(p for p in parts if p)
                                                          for parts in zip(measured, short)])
    victims = ladders.assign(note=measured).groupby(CELL, as_index=False, sort=False).agg(
        value=("victim", "mean"), note=("note", "first"))
    victims["note"] = np.where(victims.value.isna(), "the attack recorded no victim score", victims.note)
    copies = [emit(rows, f"copy@{budget:g}") for budget, rows in ladders.groupby("budget")]
    return pd.concat([emit(victims, "victim"), *copies], ignore_index=True)
