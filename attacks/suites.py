"""Named attack suites (docs/evaluation.md §3), defined at the paper's settings.

An entry is {"label", "plugin", "params"}; parameters it leaves out take the plugin's defaults (SOPHON's
reference protocol for `finetune`), and an experiment may override any of them (e.g. epochs) for a whole
suite. A list value expands to its cross-product, with `param=value` appended to the label.
"""

from harness import hookimpl


def _entry(label: str, plugin: str = "finetune", **params) -> dict:
    return {"label": label, "plugin": plugin, "params": params}


SUITES = {
    "paper-strategies": (
        "SOPHON Table I: direct+all, initFC+FC and initFC+all under the reference protocol",
        [_entry("direct+all", strategy="direct+all"), _entry("initFC+FC", strategy="initFC+FC"),
         _entry("initFC+all", strategy="initFC+all")],
    ),
    "optimizers": (
        "SOPHON Table V (+AdamW): each optimizer under direct+all; Adadelta also at lr 1.0, its natural scale",
        [_entry("momentum", optimizer="sgd_momentum"), _entry("nesterov", optimizer="nesterov"),
         _entry("adagrad", optimizer="adagrad"), _entry("adadelta", optimizer="adadelta"),
         _entry("adadelta lr=1", optimizer="adadelta", lr=1.0), _entry("adam", optimizer="adam"),
         _entry("adamw", optimizer="adamw")],
    ),
    "lr-grid": (
        "SOPHON Table VI: direct+all with momentum SGD over five learning rates",
        [_entry("direct+all", lr=[1e-5, 5e-5, 1e-4, 5e-4, 1e-3])],
    ),
    "batch-grid": (
        "SOPHON Table VII: direct+all over batch sizes 50 to 250 at a fixed lr",
        [_entry("direct+all", batch_size=[50, 100, 150, 200, 250])],
    ),
    "schedules": (
        "Constant lr against linear warmup (10%) then cosine to 0",
        [_entry("constant", schedule="constant"), _entry("warmup_cosine", schedule="warmup_cosine")],
    ),
    "lora": (
        "peft LoRA on every Conv2d/Linear but the head, ranks 4/8/16, merged for evaluation",
        [_entry("lora", "lora", rank=[4, 8, 16])],
    ),
    "adaptive": (
        "BN re-estimation, re-init of the last k blocks, Gaussian weight noise, 5x longer horizon",
        [_entry("bn_reestimate", "bn_reestimate"), _entry("reinit_last_k", "reinit_last_k", k=[1, 2]),
         _entry("weight_noise", "weight_noise", sigma=[0.01, 0.03, 0.1]),
         _entry("long_horizon", "long_horizon")],
    ),
}


@hookimpl
def register_suites(register):
    for name, (description, entries) in SUITES.items():
        register(name, description=description, entries=entries, version="1")
