"""Built-in leaderboard metrics (docs/evaluation.md §2), registered exactly as a third-party metric would be.

A metric's factory takes the stored curves (harness.leaderboard.Curves) and its parameters and returns per-seed
rows; `columns` declares the unit of every column it fills and which way is better for the defense, which is all
the reports need to show it; `order` places its columns in the tables. The functions are in builtin.py.
"""

from harness import Column, Param, hookimpl

MIN_GAP = Param("min_gap", "float", 0.02, min=0.0,
                help="n/a when the original beats scratch by less than this, in the score's own unit "
                     "(0.02 = 2 points of accuracy, 0.02 of MSE)")


@hookimpl
def register_metrics(register):
    register("intactness", factory="plugins.metrics.builtin:intactness", version="1", order=10,
             columns=[Column("O@0", "score", "score", "original-domain score of the released model"),
                      Column("intactness", "ratio", "higher", "O(D) / O(P)"),
                      Column("drop", "delta", "lower", "O(P) − O(D), oriented so that positive is worse")],
             description="O@0, intactness O(D)/O(P) and drop O(P) − O(D) on the original domain")
    register("score", factory="plugins.metrics.builtin:score_at", version="1", order=20,
             params=[Param("epochs", "list", [0, 1, 5, 10, 15, 20], item=Param("epoch", "int", 0, min=0, max=10_000), help="epochs to show (plus the final one)")],
             columns=[Column("score@t", "score", "against-score", "restricted score after t attack epochs")],
             description="score@t: restricted score after t attack epochs (t = 0 is non-transferability)")
    register("resistance", factory="plugins.metrics.builtin:resistance", version="1", order=30, params=[MIN_GAP],
             columns=[Column("R", "ratio", "higher", "0: no protection, 1: as hard as scratch")],
             description="R = (A_P − A_D) / (A_P − A_S) at the final epoch, against the paired scratch cell")
    register("resistance_tuned", factory="plugins.metrics.builtin:resistance_tuned", version="1", order=40,
             params=[MIN_GAP],
             columns=[Column("R_tuned", "ratio", "higher", "R against scratch@best"),
                      Column("scratch@best", "score", None, "final score of the suite's best scratch config")],
             description="R_tuned: R against scratch@best, the suite's best scratch config (also shown)")
    register("auc", factory="plugins.metrics.builtin:auc", version="1", order=50, params=[MIN_GAP],
             columns=[Column("AUC", "score", "against-score", "mean restricted score over the attack epochs"),
                      Column("AUC_norm", "ratio", "higher", "AUC normalised like R")],
             description="AUC: mean score over the attack epochs; AUC_norm: normalised like R")
    register("steps_to_scratch", factory="plugins.metrics.builtin:steps_to_scratch", version="1", order=60,
             columns=[Column("steps_to_scratch", "steps", "higher", "optimizer steps to reach scratch@best")],
             description="first optimizer step reaching scratch@best's final score; '> budget' if never")
    register("queries", factory="plugins.metrics.builtin:copy_at_queries", version="1", order=90,
             columns=[Column("victim", "score", "score", "the victim's own restricted score, by the protocol that "
                                                         "scores its copies"),
                      Column("copy@t", "score", "against-score", "the stolen copy's restricted score at a budget "
                                                                 "of t queries")],
             description="copy@q: a black-box attack's stolen copy at each query budget q of a ladder, next to the "
                         "victim's own score (the query table)")
    register("worst_case", factory="plugins.metrics.builtin:worst_case", version="1", order=70, params=[MIN_GAP],
             columns=[Column("worst_case", "score", "against-score", "the attacker's best final score"),
                      Column("worst_case_R", "ratio", "higher", "the lowest R over the suite's attacks")],
             description="per seed, the best final score and the lowest R over the suite's attacks, averaged")
