"""The `denoising` task family: unconditional DDPM noise predictors, as in SOPHON's generation experiments.

A model of this task is an `nn.Module` whose `forward(x_t, t)` returns the predicted noise ε̂ (shaped like
x_t). The forward process is diffusers' `DDPMScheduler` (linear β from 1e-4 to 0.02 over 1000 steps,
ε-prediction): x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε. Training and the metric use the timestep policy
`timestep_mode` (`fixed:1`, 0-based, is the reference's; `uniform` draws t per image); the original is
always pretrained with uniform t. The score is the denoising MSE (ε̂ − ε)², lower is better, on noise
drawn per example from fixed seeds so that it is the same number however a split is chunked.

Also registers two diffusers `UNet2DModel` layouts as architectures of this task: `unet-tiny` for CPU
runs and `unet-ddpm-cifar10`, the google/ddpm-cifar10-32 layout of the paper. Nothing is downloaded:
every UNet starts from diffusers' random initialisation. torch and diffusers are imported inside the
functions that run a cell, so listing plugins stays instant. See docs/generation.md.
"""

from __future__ import annotations

import inspect
from functools import cache, cached_property, partial

from harness import Measure, Param, hookimpl
from harness.registry import ConfigError
from harness.tasks import Task, TinyData

NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
PIXEL_RANGES = ("[0,1]", "[-1,1]")
EVALUATION_SEED = 0  # the metric's noise: example i of a split always gets generator seed EVALUATION_SEED + i
EVALUATION_CHUNK = 500
TIMESTEP_MODES = "'fixed:<t>' (0 ≤ t < 1000, 0-based) or 'uniform'"

MEASURES = [Measure("mse", higher_is_better=False, display="raw",
                    description="denoising MSE (ε̂ − ε)² at the metric timestep, per-example seeded noise")]

# diffusers UNet2DModel layouts; the settings outside the blocks are google/ddpm-cifar10-32's
UNET_COMMON = dict(act_fn="silu", attention_head_dim=None, center_input_sample=False, downsample_padding=0,
                   flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1, norm_eps=1e-6,
                   time_embedding_type="positional")
UNET_LAYOUTS = {
    "unet-tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "unet-ddpm-cifar10": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32,
                              down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}


# -- the timestep policy -------------------------------------------------------------------------------

def parse_timestep_mode(value: str, where: str) -> int | None:
    """`fixed:<t>` -> t; `uniform` -> None (t drawn uniformly from 0..999 per image)."""
    if value == "uniform":
        return None
    kind, _, step = value.partition(":")
    if kind != "fixed" or not step.isdigit() or int(step) >= NUM_TIMESTEPS:
        raise ConfigError(f"expected {TIMESTEP_MODES}, got {value!r}", where=where)
    return int(step)


def draw_timesteps(count: int, fixed: int | None, generator):
    """`count` timesteps (CPU, long): all `fixed`, or uniform draws from `generator` when `fixed` is None."""
    import torch

    if fixed is None:
        return torch.randint(0, NUM_TIMESTEPS, (count,), generator=generator)
    return torch.full((count,), fixed, dtype=torch.long)


# -- models ----------------------------------------------------------------------------------------------

@cache
def noise_predictor_class():
    """The nn.Module wrapper class, created on first use so that importing this plugin does not import torch."""
    from torch import nn

    class NoisePredictor(nn.Module):
        """A diffusers UNet2DModel as this task's model: forward(x_t, t) -> ε̂, a plain tensor."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t, return_dict=False)[0]

    return NoisePredictor


def build_unet(layout: str, params: dict, *, in_channels: int, image_size: int, num_classes: int):
    """A randomly initialised UNet2DModel of `layout` for `image_size` images, wrapped as a noise predictor."""
    from diffusers import UNet2DModel

    config = UNET_LAYOUTS[layout]
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if image_size % factor:
        raise ValueError(f"{layout} halves the image {len(config['block_out_channels']) - 1} times: image_size must "
                         f"be a multiple of {factor}, got {image_size}")
    unet = UNet2DModel(sample_size=image_size, in_channels=in_channels, out_channels=in_channels,
                       dropout=params["dropout"], **UNET_COMMON, **config)
    return noise_predictor_class()(unet)


build_unet_tiny = partial(build_unet, "unet-tiny")
build_unet_ddpm_cifar10 = partial(build_unet, "unet-ddpm-cifar10")


# -- the task --------------------------------------------------------------------------------------------

class Denoising(Task):
    """Denoisers: objective, pretraining objective and metric differ only in their timestep policy."""

    def __init__(self, params: dict, spec):
        super().__init__(params, spec)
        self.training_step = parse_timestep_mode(params["timestep_mode"], "task.params.timestep_mode")
        metric = params["metric_timestep_mode"] or params["timestep_mode"]
        self.metric_step = parse_timestep_mode(metric, "task.params.metric_timestep_mode")

    @cached_property
    def scheduler(self):
        """diffusers' DDPM forward process: linear betas 1e-4..0.02, 1000 steps, ε-prediction."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=NUM_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
                             beta_schedule="linear", prediction_type="epsilon")

    def check_model(self, model, architecture: str) -> None:
        try:
            inspect.signature(model.forward).bind(None, None)
        except TypeError:
            raise TypeError(f"architecture {architecture!r}: a denoising model's forward takes (x_t, t) and returns "
                            f"the predicted noise") from None

    def noised(self, x, timesteps, noise):
        """x_t for clean images `x` (in the scenario's pixels), at `timesteps` with `noise` (both on x's device)."""
        x0 = x * 2 - 1 if self.params["pixel_range"] == "[-1,1]" else x
        return self.scheduler.add_noise(x0, noise, timesteps)

    def noisy_batch(self, x, generator, fixed: int | None):
        """(x_t, t, ε) for a batch: t then ε drawn from the CPU `generator`, moved to x's device."""
        import torch

        t = draw_timesteps(len(x), fixed, generator).to(x.device)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return self.noised(x, t, noise), t, noise

    def denoising_loss(self, model, x, y=None, *, generator, fixed: int | None):
        """Mean over images of the per-image mean of (ε̂ − ε)²; labels, if any, are ignored."""
        import torch.nn.functional as F

        noisy, t, noise = self.noisy_batch(x, generator, fixed)
        return F.mse_loss(model(noisy, t).float(), noise.float())

    def objective(self, generator):
        return partial(self.denoising_loss, generator=generator, fixed=self.training_step)

    def pretrain_objective(self, generator):
        """Uniform t whatever `timestep_mode` says: the original is a full DDPM (algorithms: P's pretraining)."""
        return partial(self.denoising_loss, generator=generator, fixed=None)

    def evaluation_noise(self, count: int, shape, *, first: int = 0):
        """(t, ε) for examples first..first+count-1: example i draws from its own generator seeded
        EVALUATION_SEED + i, so any chunking (and any model) sees the same noise."""
        import torch

        timesteps, noise = [], []
        for i in range(first, first + count):
            generator = torch.Generator().manual_seed(EVALUATION_SEED + i)
            timesteps.append(draw_timesteps(1, self.metric_step, generator))
            noise.append(torch.randn(tuple(shape), generator=generator))
        return torch.cat(timesteps), torch.stack(noise)

    def evaluate(self, model, split, *, precision: str = "fp32", chunk: int = EVALUATION_CHUNK) -> dict[str, float]:
        """The denoising MSE over the whole split, in eval mode and in chunks (per-image values summed in float64)."""
        import torch

        from harness.engine.device import autocast
        from harness.engine.train import evaluating

        device, per_image = split.x.device, []
        with torch.no_grad(), evaluating(model):
            for start in range(0, len(split), chunk):
                x = split.x[start:start + chunk]
                t, noise = self.evaluation_noise(len(x), x.shape[1:], first=start)
                t, noise = t.to(device), noise.to(device, x.dtype)
                with autocast(device, precision):
                    predicted = model(self.noised(x, t, noise), t)
                per_image.append((predicted.float() - noise.float()).pow(2).flatten(1).mean(dim=1).double())
        total = torch.cat(per_image).sum().item() if per_image else 0.0
        return {"mse": total / max(1, len(split))}

    def render(self, model, split, generator, *, count: int = 8, sampling_steps: int = 20) -> dict:
        """The first `count` test images clean, noised at the metric timestep and denoised in one step
        (x̂_0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t), and `count` samples drawn from pure noise with a
        `sampling_steps`-step DDPM schedule (randomness from `generator`)."""
        import torch
        from diffusers import DDPMScheduler

        from harness.engine.train import evaluating
        from harness.pictures import image_grid

        x = split.x[:count]
        low, high = (-1.0, 1.0) if self.params["pixel_range"] == "[-1,1]" else (0.0, 1.0)
        t, noise = self.evaluation_noise(len(x), x.shape[1:])
        t, noise = t.to(x.device), noise.to(x.device, x.dtype)
        noisy = self.noised(x, t, noise)
        alpha_bar = self.scheduler.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
        sampler = DDPMScheduler.from_config(self.scheduler.config)
        sampler.set_timesteps(sampling_steps)
        with torch.no_grad(), evaluating(model):
            denoised = (noisy - (1 - alpha_bar).sqrt() * model(noisy, t).float()) / alpha_bar.sqrt()
            sample = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            for step in sampler.timesteps:
                predicted = model(sample, step.expand(len(sample)).to(x.device)).float()
                sample = sampler.step(predicted, step, sample, generator=generator).prev_sample
        x0 = x * 2 - 1 if low < 0 else x
        return {name: image_grid(images.cpu().numpy(), low=low, high=high)
                for name, images in (("clean", x0), ("noised", noisy), ("denoised", denoised), ("samples", sample))}

    def tiny_data(self, *, channels: int = 1, size: int = 8, n_train: int = 64, n_test: int = 32) -> TinyData:
        """Two synthetic [0, 1] image domains: smooth blobs (original) and stripes (restricted)."""
        make = partial(synthetic_images, channels=channels, size=size)
        return TinyData(original_train=make(n_train, "blobs", seed=1), original_test=make(n_test, "blobs", seed=2),
                        restricted_train=make(n_train, "stripes", seed=3),
                        restricted_test=make(n_test, "stripes", seed=4),
                        num_classes=0, channels=channels, size=size, architecture="unet-tiny")


def synthetic_images(n: int, kind: str, *, channels: int, size: int, seed: int):
    """Unlabelled [0, 1] images: Gaussian blobs at random places, or stripes at random angles and frequencies."""
    import torch

    from harness.engine.data import Split

    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    a, b, c = torch.rand(3, n, channels, 1, 1, generator=generator)
    if kind == "blobs":
        images = torch.exp(-((xx - (2 * a - 1)) ** 2 + (yy - (2 * b - 1)) ** 2) / (0.1 + 0.4 * c))
    else:
        angle, frequency = a * torch.pi, 2 + 4 * b
        images = 0.5 + 0.5 * torch.sin(frequency * torch.pi * (xx * angle.cos() + yy * angle.sin()) + 6 * c)
    return Split(images.clamp(0, 1), None)


# -- registration ----------------------------------------------------------------------------------------

def timestep_param(name: str, default: str | None, help: str) -> Param:
    return Param(name, "str", default, nullable=default is None, help=help)


@hookimpl
def register_tasks(register):
    register("denoising", factory=Denoising, version="1", measures=MEASURES, labelled=False, head=False,
             description="Image denoising (DDPM ε-prediction): MSE at a timestep policy (the score, lower is better)",
             params=[
                 timestep_param("timestep_mode", "fixed:1",
                                f"{TIMESTEP_MODES}: t of the training objective and the metric [ref fixed:1]"),
                 timestep_param("metric_timestep_mode", None, "overrides timestep_mode for the metric only"),
                 Param("pixel_range", "str", "[0,1]", choices=PIXEL_RANGES,
                       help="x_0 as the scenario gives it ([0,1] with normalisation: none, inferred [ref]) or "
                            "mapped to [-1,1] as 2x-1"),
             ])


@hookimpl
def register_architectures(register):
    dropout = Param("dropout", "float", 0.0, min=0.0, max=1.0, help="UNet resnet dropout [ref 0; 0.1 optional]")
    register("unet-tiny", factory="plugins.denoising:build_unet_tiny", params=[dropout], version="1",
             tasks=("denoising",),
             description="diffusers UNet2DModel (16, 32, 32), attention at the middle level, ~280k parameters; "
                         "image_size a multiple of 4")
    register("unet-ddpm-cifar10", factory="plugins.denoising:build_unet_ddpm_cifar10", params=[dropout], version="1",
             tasks=("denoising",),
             description="diffusers UNet2DModel in the google/ddpm-cifar10-32 layout (128, 256, 256, 256), "
                         "~35.7M parameters at 3 channels; image_size a multiple of 8")
