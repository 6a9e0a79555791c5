"""Attack success rate along the clean fine-tuning curve (docs/backdoor.md; docs/evaluation.md §2, backdoor row).

A defense that registers an ASR evaluator (the backdoor) has every attack cell starting from its release record
`restricted/asr` and `restricted/asr_nontarget` at each epoch. This metric lays them out like score@t, both of
them as the spec asks: `ASR@t` counts the target class's own triggered images [ref], `ASR_nt@t` leaves them out.
Starts without those points (the original, scratch, other defenses) get no rows. Higher is better for the
defense: the backdoor survived the attacker's clean fine-tuning.
"""

from __future__ import annotations

from harness import Column, Param, hookimpl

COLUMNS = ["scenario", "suite", "start", "attack", "seed", "metric", "value"]
SHOWN_EPOCHS = [0, 1, 5, 10, 15, 20]
MEASURES = {"asr": "ASR", "asr_nontarget": "ASR_nt"}  # recorded measure -> column name


def attack_success_rate(curves, epochs: list = SHOWN_EPOCHS):
    """Per-seed `ASR@t` / `ASR_nt@t` rows at the listed epochs that exist and each cell's final epoch."""
    import pandas as pd

    wanted = {f"restricted/{measure}": column for measure, column in MEASURES.items()}
    points = curves.points
    recorded = points[(points.x_unit == "epoch") & points.metric.isin(list(wanted))]
    curve = curves.cells.merge(recorded[["key", "x", "metric", "value"]], on="key")
    if curve.empty:
        return pd.DataFrame(columns=COLUMNS)
    final = curve.x == curve.groupby(["key", "metric"]).x.transform("max")
    shown = curve[curve.x.isin([float(t) for t in epochs]) | final].sort_values("x", kind="stable")
    shown = shown.assign(metric=[f"{wanted[metric]}@{x:g}" for metric, x in zip(shown.metric, shown.x)])
    return shown[COLUMNS].reset_index(drop=True)


@hookimpl
def register_metrics(register):
    register("attack_success", factory="plugins.attack_success:attack_success_rate", version="1", order=75,
             params=[Param("epochs", "list", SHOWN_EPOCHS, item=Param("epoch", "int", 0, min=0, max=10_000),
                           help="attack epochs to show (plus the final one)")],
             columns=[Column("ASR@t", "percent", "higher",
                             "share of triggered restricted test images classified as the target after t epochs"),
                      Column("ASR_nt@t", "percent", "higher", "ASR@t without the target class's own images")],
             description="attack success rate of a backdoored start along the clean fine-tuning curve (ASR@t, "
                         "and ASR_nt@t without target-class images)")
