"""Built-in architectures: small CPU CNNs, the SOPHON/NTL VGG-13, and timm's ResNets and CAFormers.

Every factory returns an nn.Module carrying `head_path` (the classification nn.Linear), `block_paths` (main
blocks in forward order, for re-initialising the last k) and `feature_path` (the intermediate output NTL's
MMD compares). Nothing is downloaded: timm models start random unless `weights` names a local file.
torch and timm are imported inside the factories so listing plugins stays instant.
"""

from __future__ import annotations

from functools import partial

from harness import Param, hookimpl

VGG13_STAGES = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))  # cfg B, a max-pool after each


def _describe(model, *, head: str, blocks: list[str], feature: str):
    """Attach the addressing attributes, checking each names a real sub-module."""
    for path in (head, *blocks, feature):
        model.get_submodule(path)
    model.head_path, model.block_paths, model.feature_path = head, list(blocks), feature
    return model


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _mlp(in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
    """Flatten, hidden Linear+ReLU(+Dropout) layers, then the classification Linear named `head`."""
    from collections import OrderedDict

    from torch import nn

    layers = [("flatten", nn.Flatten())]
    for i, width in enumerate(hidden, 1):
        layers += [(f"fc{i}", nn.Linear(in_features, width)), (f"relu{i}", nn.ReLU())]
        layers += [(f"drop{i}", nn.Dropout(dropout))] if dropout else []
        in_features = width
    return nn.Sequential(OrderedDict(layers + [("head", nn.Linear(in_features, num_classes))]))


def _conv_stages(in_channels: int, widths: list[int], *, pooled: int):
    """Named conv-BN-ReLU stages `stage1`, `stage2`, ..., the first `pooled` of them followed by a 2x2 max-pool;
    returns them with the last stage's width."""
    from torch import nn

    stages, previous = [], in_channels
    for i, width in enumerate(widths, 1):
        pool = [nn.MaxPool2d(2)] if i <= pooled else []
        stages.append((f"stage{i}", nn.Sequential(nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width),
                                                  nn.ReLU(), *pool)))
        previous = width
    return stages, previous


def _build_cnn(params: dict, *, in_channels: int, image_size: int, num_classes: int, channels: tuple[int, int],
               hidden: int):
    """conv-BN-ReLU-pool twice, pooled to 7x7 (a no-op at 28x28) so any input size works, then an MLP."""
    from collections import OrderedDict

    from torch import nn

    stages, previous = _conv_stages(in_channels, [_scaled(c, params["width"]) for c in channels],
                                    pooled=len(channels))
    model = nn.Sequential(OrderedDict(stages + [
        ("pool", nn.AdaptiveAvgPool2d(7)),
        ("classifier", _mlp(previous * 49, [_scaled(hidden, params["width"])], num_classes)),
    ]))
    return _describe(model, head="classifier.head", blocks=["stage1", "stage2", "classifier"], feature="stage2")


def build_cnn_gap(params: dict, *, in_channels: int, image_size: int, num_classes: int):
    """conv-BN-ReLU three times (max-pooled after the first two), global average pooling, then the head alone.

    No hidden Linear sits between the features and the head, so the features a pretrained model hands to a new
    task are its 64 pooled conv channels, not a 16-unit layer fitted to the original labels (docs/protocol.md).
    """
    from collections import OrderedDict

    from torch import nn

    stages, previous = _conv_stages(in_channels, [_scaled(c, params["width"]) for c in (16, 32, 64)], pooled=2)
    model = nn.Sequential(OrderedDict(stages + [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                                                ("head", nn.Linear(previous, num_classes))]))
    return _describe(model, head="head", blocks=["stage1", "stage2", "stage3", "head"], feature="stage2")


def build_vgg(params: dict, *, in_channels: int, image_size: int, num_classes: int):
    """VGG-13 (cfg B, no BN) with the NTL head flatten -> 256 -> 256 -> C, its input width set by the image size.

    At 64x64 the head input is 512 x 2 x 2 = 2048, as in the reference; the feature for NTL's MMD is the
    output of the second stage (after the second max-pool).
    """
    from collections import OrderedDict

    from torch import nn

    if image_size < 32:
        raise ValueError(f"vgg needs images of at least 32x32 (five 2x2 max-pools), got {image_size}")
    stages, previous = [], in_channels
    for i, widths in enumerate(VGG13_STAGES):
        layers = []
        for width in (_scaled(w, params["width"]) for w in widths):
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU()]
            previous = width
        stages.append((str(i), nn.Sequential(*layers, nn.MaxPool2d(2))))
    side = image_size // 2 ** len(VGG13_STAGES)
    hidden = _scaled(256, params["width"])
    model = nn.Sequential(OrderedDict([
        ("features", nn.Sequential(OrderedDict(stages))),
        ("classifier", _mlp(previous * side * side, [hidden, hidden], num_classes, dropout=0.5)),
    ]))
    for module in model.modules():  # the reference's init (used when no ImageNet weights are loaded)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(module.bias)
    blocks = [f"features.{name}" for name, _ in stages] + ["classifier"]
    return _describe(model, head="classifier.head", blocks=blocks, feature="features.1")


def _load_weights(model, path: str) -> None:
    """Load a local .safetensors file; only the head may be missing or shaped for another class count."""
    from safetensors.torch import load_file

    def in_head(key: str) -> bool:
        return key.startswith(model.head_path + ".")

    own = model.state_dict()
    state = {k: v for k, v in load_file(path).items() if not (in_head(k) and k in own and v.shape != own[k].shape)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit this model: {exc}") from exc
    wrong = [k for k in missing if not in_head(k)] + list(unexpected)
    if wrong:
        raise ValueError(f"{path}: weights do not fit this model (missing or unexpected: {', '.join(wrong[:5])})")


def _build_timm(timm_name: str, head: str, blocks: list[str], feature: str, params: dict, *, in_channels: int,
                image_size: int, num_classes: int):
    """A timm model built without pretrained downloads; `weights` loads a local safetensors file."""
    import timm

    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    model = _describe(model, head=head, blocks=blocks, feature=feature)
    if params["weights"]:
        _load_weights(model, params["weights"])
    return model


_RESNET = ("fc", ["layer1", "layer2", "layer3", "layer4"], "layer2")
_CAFORMER = ("head.fc.fc2", ["stages.0", "stages.1", "stages.2", "stages.3"], "stages.1")
build_cnn_s = partial(_build_cnn, channels=(16, 32), hidden=16)
build_cnn_m = partial(_build_cnn, channels=(32, 64), hidden=60)
build_resnet18 = partial(_build_timm, "resnet18", *_RESNET)
build_resnet34 = partial(_build_timm, "resnet34", *_RESNET)
build_resnet50 = partial(_build_timm, "resnet50", *_RESNET)
build_caformer_s18 = partial(_build_timm, "caformer_s18", *_CAFORMER)
build_caformer_m36 = partial(_build_timm, "caformer_m36", *_CAFORMER)


@hookimpl
def register_architectures(register):
    here = "plugins.architectures"
    width = Param("width", "float", 1.0, min=0.01, max=16.0, help="channel-width multiplier (small values for tests)")
    weights = Param("weights", "str", None, nullable=True,
                    help="local .safetensors file to start from (a head of another shape is left random)")
    register("cnn-s", factory=f"{here}:build_cnn_s", params=[width], version="1",
             description="Small CPU CNN: conv 16/32 with BatchNorm, ~30k parameters at 28x28")
    register("cnn-m", factory=f"{here}:build_cnn_m", params=[width], version="1",
             description="CPU CNN: conv 32/64 with BatchNorm and a hidden Linear, ~210k parameters at 28x28")
    register("cnn-gap", factory=f"{here}:build_cnn_gap", params=[width], version="1",
             description="Small CPU CNN: conv 16/32/64 with BatchNorm, global average pooling, no hidden Linear "
                         "before the head (~24k parameters)")
    register("vgg", factory=f"{here}:build_vgg", params=[width], version="1", tiny_sizes={"size": 32},
             description="SOPHON/NTL VGG-13 (cfg B, no BN), MLP head sized from the input (64x64 in the papers)")
    for name in ("resnet18", "resnet34", "resnet50", "caformer_s18", "caformer_m36"):
        register(name, factory=f"{here}:build_{name}", params=[weights], version="1",
                 description=f"timm {name}, random init (pretrained weights only from a local safetensors file)")
