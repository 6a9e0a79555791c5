"""Target-specified Non-Transferable Learning (docs/algorithms.md §4): accurate on the original domain, poor on a target.

Each step pairs an original-domain batch (source) with an equal-size batch from the defender half of the
restricted data (target) and minimises KL_s − c(α·KL_t)·c(β·MMD): keep the source right, push target
predictions off their labels and target features away from source features. The MMD features come from a
forward hook on `model.feature_path` (or `feature_module`), so any architecture works.
torch is imported inside functions so listing plugins stays light.
"""

from __future__ import annotations

from harness import Param, hookimpl

KERNELS = 5  # multi-kernel MMD: bandwidths h·2^m, m = 0..4 [ref]
KERNEL_MUL = 2.0


def kl_to_labels(logits, labels, num_classes: int, reduction: str):
    """KL(one-hot ‖ softmax) as the reference's KLDivLoss: elementwise mean (= CE/C) or batchmean (= CE).

    Summed and divided here because PyTorch plans to change what reduction="mean" means.
    """
    import torch.nn.functional as F

    target = F.one_hot(labels, num_classes).float()
    total = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")
    return total / (target.numel() if reduction == "elementwise_mean" else len(target))


def multi_kernel_mmd(source, target):
    """Biased MMD² with five Gaussian kernels; the bandwidth comes from detached pairwise distances / 4 [ref]."""
    import torch

    features = torch.cat([source.flatten(1), target.flatten(1)])
    features = features.to(torch.promote_types(features.dtype, torch.float32))  # bf16 distances are too coarse
    n, total = len(source), len(features)
    squared = features.pow(2).sum(dim=1)
    distances = (squared[:, None] + squared[None, :] - 2 * features @ features.T).clamp_min(0)
    bandwidth = distances.detach().sum() / (total * total - total) / KERNEL_MUL ** (KERNELS // 2)
    kernel = sum(torch.exp(-distances / (bandwidth * KERNEL_MUL ** m)) for m in range(KERNELS))
    return (kernel[:n, :n] + kernel[n:, n:] - kernel[:n, n:] - kernel[n:, :n]).mean()


def clamp_at_one(value):
    """c(v): v itself up to 1, else the constant 1 with zero gradient (the reference's conditional clamp)."""
    import torch

    return torch.clamp(value, max=1.0)


def ntl_loss(source_logits, source_labels, target_logits, target_labels, source_features, target_features,
             params: dict, num_classes: int):
    """(total, parts): `code` [ref] KL_s − c(α·KL_t)·c(β·MMD); `paper` KL_s − min(β', α·KL_t·MMD)."""
    import torch

    reduction = params["ntl_kl_reduction"]
    kl_source = kl_to_labels(source_logits, source_labels, num_classes, reduction)
    kl_target = kl_to_labels(target_logits, target_labels, num_classes, reduction)
    mmd = multi_kernel_mmd(source_features, target_features)
    if params["ntl_form"] == "code":
        penalty = clamp_at_one(params["alpha"] * kl_target) * clamp_at_one(params["beta"] * mmd)
    else:
        penalty = torch.clamp(params["alpha"] * kl_target * mmd, max=params["paper_bound"])
    return kl_source - penalty, {"kl_source": kl_source.detach(), "kl_target": kl_target.detach(), "mmd": mmd.detach()}


class FeatureTap:
    """Keeps the latest output of one sub-module (the MMD feature) through a forward hook."""

    def __init__(self, module):
        self.output = None
        self.handle = module.register_forward_hook(self.keep)

    def keep(self, module, inputs, output):
        self.output = output

    def close(self):
        self.handle.remove()


def paired_batches(ctx, batch_size: int):
    """Equal-size (source, target) index batches; an epoch is one pass over the larger set, the other cycles."""
    from harness.engine.data import cycling_batches

    source_n, target_n = len(ctx.original_train), len(ctx.restricted_train)
    source = cycling_batches(source_n, batch_size, ctx.generator("ntl/source"), drop_last=True)
    target = cycling_batches(target_n, batch_size, ctx.generator("ntl/target"), drop_last=True)
    return source, target, max(1, max(source_n, target_n) // batch_size)


def ntl_optimizer(model, params: dict):
    """Adam at `lr` with LambdaLR 0.999^step, stepped every iteration [ref]: ≈1% of the start lr by step 4600."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    decay = 0.999 if params["ntl_lr_decay"] == "per_step_0.999" else 1.0
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: decay ** step)


def train_ntl(ctx, model):
    """Train on paired batches, record per-epoch test curves, and return the model to release."""
    import torch

    from harness.engine.train import Diverged

    p = ctx.params
    tap = FeatureTap(model.get_submodule(p["feature_module"] or model.feature_path))
    optimizer, schedule = ntl_optimizer(model, p)
    source_stream, target_stream, steps_per_epoch = paired_batches(ctx, p["batch_size"])
    source, target = ctx.original_train, ctx.restricted_train
    model.train()
    step = 0
    try:
        for epoch in range(1, p["epochs"] + 1):
            for _ in range(steps_per_epoch):
                s, t = next(source_stream).to(source.y.device), next(target_stream).to(target.y.device)
                with ctx.autocast():
                    source_logits = model(source.x[s]).float()
                    source_features = tap.output
                    target_logits = model(target.x[t]).float()
                    target_features = tap.output
                loss, parts = ntl_loss(source_logits, source.y[s], target_logits, target.y[t], source_features,
                                       target_features, p, ctx.num_classes)
                if not torch.isfinite(loss):
                    raise Diverged(f"NTL loss became {loss.item()} at step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
            if epoch < p["epochs"]:  # the last epoch's point is the released model's, recorded below
                record_progress(ctx, model, step)
            ctx.log(f"epoch {epoch}: loss {loss.item():.4f} " + " ".join(f"{k} {v:.4f}" for k, v in parts.items()))
    finally:
        tap.close()
    ctx.record_release(model, step=step)
    return model


def record_progress(ctx, model, step: int) -> None:
    """Original and restricted test accuracy against steps (the reference logs both every epoch)."""
    ctx.recorder.point(step, "step", "original/accuracy", ctx.evaluate(model, ctx.original_test)[0])
    ctx.recorder.point(step, "step", "restricted/accuracy", ctx.evaluate(model, ctx.restricted_test)[0])


@hookimpl
def register_defenses(register):
    register("ntl", factory="defenses.ntl:train_ntl", version="1", tiny_params={"epochs": 1},
             description="Target-specified NTL: KL on both domains plus feature MMD, target pushed away",
             params=[
                 Param("alpha", "float", 0.1, min=0.0, help="weight of the target KL term [ref]"),
                 Param("beta", "float", 0.1, min=0.0, help="weight of the MMD term (code form) [ref]"),
                 Param("paper_bound", "float", 1.0, min=0.0, help="β', the cap of the paper form's penalty"),
                 Param("lr", "float", 1e-4, min=0.0, help="Adam learning rate [ref]"),
                 Param("batch_size", "int", 32, min=2, max=1_000_000, help="paired batch size per domain [ref digits: 32]"),
                 Param("epochs", "int", 30, min=1, max=10_000,
                       help="epochs, each one pass over the larger domain [ref digits: 30]"),
                 Param("ntl_form", "str", "code", choices=("code", "paper"),
                       help="code [ref]: separately clamped factors; paper: KL_s − min(β', α·KL_t·MMD)"),
                 Param("ntl_kl_reduction", "str", "elementwise_mean", choices=("elementwise_mean", "batchmean"),
                       help="elementwise_mean [ref] (= CE/C) or batchmean (= CE)"),
                 Param("ntl_lr_decay", "str", "per_step_0.999", choices=("per_step_0.999", "none"),
                       help="LambdaLR 0.999^step, stepped every iteration [ref]"),
                 Param("feature_module", "str", None, nullable=True,
                       help="module whose output feeds the MMD; null = the architecture's feature_path"),
             ])
