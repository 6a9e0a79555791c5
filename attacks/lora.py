"""LoRA attack through peft (docs/algorithms.md §8.5): low-rank adapters on every Conv2d and Linear but the head.

The head is trained in full (peft's `modules_to_save`), kept for `direct` and re-initialised for `initFC`.
A model without a head (a denoising UNet) gets adapters on every Conv2d and Linear, attention projections
included, and only `direct` applies.
Convolutions with groups > 1 (grouped, depthwise) are skipped because peft cannot merge them back into a
plain module; their names go to the run's notes. Training and the curve come from `attacks.finetune`; the
adapters are merged (`merge_and_unload`) before the last evaluation, so the returned model is a plain module
of the input's class with the input's state_dict keys, and chained attacks can start from it.
"""

from __future__ import annotations

from harness import Param, hookimpl

from attacks.finetune import HEAD_INIT, TINY_PARAMS, Recipe, fine_tune, prepare_head, training_params


def lora_targets(model) -> tuple[list[str], list[str]]:
    """(adapted, skipped) module names: every Conv2d and Linear except the head (if the model has one);
    grouped convolutions skipped."""
    from torch import nn

    head_path = getattr(model, "head_path", None)
    adapted, skipped = [], []
    for name, module in model.named_modules():
        if name == head_path or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        (skipped if getattr(module, "groups", 1) > 1 else adapted).append(name)
    return adapted, skipped


def run(ctx, model):
    """Wrap `model` with LoRA adapters, fine-tune adapters and head, and return the merged plain module."""
    import re

    from peft import LoraConfig, get_peft_model

    params = ctx.params
    if ctx.task.head:
        prepare_head(ctx, model, reinit=params["strategy"] == "initFC", head_init=params["head_init"])
    adapted, skipped = lora_targets(model)
    ctx.recorder.notes.update(lora_adapted=len(adapted), lora_skipped=skipped)
    config = LoraConfig(
        r=params["rank"], lora_alpha=params["alpha"] if params["alpha"] is not None else 2 * params["rank"],
        lora_dropout=params["dropout"], bias="none",
        target_modules="|".join(re.escape(name) for name in adapted),  # a string is matched in full, not by suffix
        modules_to_save=[model.head_path] if ctx.task.head else None,
    )
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    return fine_tune(ctx, peft_model, trainable, Recipe.from_params(params),
                     release=lambda trained: trained.merge_and_unload())


def check_strategy(params: dict, task) -> str | None:
    """At validate time: initFC is refused on a task whose models have no head."""
    if params["strategy"] == "initFC" and not task.extra.get("head", True):
        return f"strategy 'initFC' re-initialises a classification head, which {task.name!r} models do not have; use direct"
    return None


@hookimpl
def register_attacks(register):
    params = [
        Param("strategy", "str", "direct", choices=("direct", "initFC"),
              help="keep the head or re-initialise it; either way the head is trained in full"),
        HEAD_INIT,
        Param("rank", "int", 8, min=1, max=4096, help="LoRA rank r"),
        Param("alpha", "float", None, nullable=True, min=0.0, help="lora_alpha; null = 2r"),
        Param("dropout", "float", 0.0, min=0.0, max=1.0, help="lora_dropout"),
        *training_params(optimizer="adamw", lr=1e-3),
    ]
    register("lora", factory="attacks.lora:run", params=params, version="1", tasks="any", check=check_strategy,
             tiny_params=TINY_PARAMS,
             description="LoRA (peft) on every Conv2d/Linear but the head, head trained in full; merged for "
                         "evaluation")
