"""The identity defense: releases the original model unchanged (the 'no protection' row)."""

from harness import hookimpl


def release_unchanged(ctx, model):
    """Nothing to train: the protected model is the base model."""
    ctx.record(model, on="original", epoch=0)
    return model


@hookimpl
def register_defenses(register):
    register("none", description="No protection: the original model is released as it is.",
             factory="defenses.none:release_unchanged", version="1", tasks="any")
