"""Built-in leaderboard metrics (evaluation.md §2), registered exactly as a third-party metric would be.

A metric's factory takes the stored curves (harness.leaderboard.Curves) and its parameters and returns
per-seed rows; `order` places its columns in the tables. The functions live in harness/leaderboard.py.
"""

from harness import Param, hookimpl

MIN_GAP = Param("min_gap", "float", 0.02, min=0.0,
                help="n/a when the original beats scratch by less than this (0.02 = 2 accuracy points)")


@hookimpl
def register_metrics(register):
    register("intactness", factory="harness.leaderboard:intactness", version="1", order=10,
             description="O@0, intactness O(D)/O(P) and drop O(P) − O(D) on the original domain")
    register("score", factory="harness.leaderboard:score_at", version="1", order=20,
             params=[Param("epochs", "list", [0, 1, 5, 10, 15, 20], help="epochs to show (plus the final one)")],
             description="score@t: restricted score after t attack epochs (t = 0 is non-transferability)")
    register("resistance", factory="harness.leaderboard:resistance", version="1", order=30, params=[MIN_GAP],
             description="R = (A_P − A_D) / (A_P − A_S) at the final epoch, against the paired scratch cell")
    register("resistance_tuned", factory="harness.leaderboard:resistance_tuned", version="1", order=40,
             params=[MIN_GAP],
             description="R_tuned: R against scratch@best, the suite's best scratch config (also shown)")
    register("auc", factory="harness.leaderboard:auc", version="1", order=50, params=[MIN_GAP],
             description="AUC: mean score over the attack epochs; AUC_norm: normalised like R")
    register("steps_to_scratch", factory="harness.leaderboard:steps_to_scratch", version="1", order=60,
             description="first optimizer step reaching scratch@best's final score; '> budget' if never")
    register("worst_case", factory="harness.leaderboard:worst_case", version="1", order=70, params=[MIN_GAP],
             description="per seed, the best final score and the lowest R over the suite's attacks, averaged")
