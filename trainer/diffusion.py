"""Training objectives and samplers: rectified flow (default) and DDPM epsilon (diffusers' DDPMScheduler).

Both present the model with timesteps on a 0..1000 scale, so a checkpoint trained with one keeps a meaningful
timestep embedding under the other. Classifier-free guidance batches the conditional and the null-caption pass.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F


class Diffusion:
    """One objective: `loss(model, x0, y, mask)` for training, `sample(...)` for generation."""

    name = "base"

    def loss(self, model, x0: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, model, noise: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, steps: int = 30,
               cfg_scale: float = 4.0, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


def randn(shape, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Normal noise drawn on the generator's device (reproducible on CPU), moved to `like`'s device/dtype."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev).to(device=like.device, dtype=like.dtype)


def guided(model, x: torch.Tensor, timestep: torch.Tensor, y, mask, cfg_scale: float) -> torch.Tensor:
    """The model's prediction with classifier-free guidance; only the first C channels (learned sigma dropped)."""
    C = x.shape[1]
    if cfg_scale == 1.0:
        return model(x, timestep, y, mask, force_drop=torch.zeros(len(x), dtype=torch.bool, device=x.device))[:, :C]
    B = len(x)
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x.device)
    out = model(torch.cat([x, x]), torch.cat([timestep, timestep]), torch.cat([y, y]),
                None if mask is None else torch.cat([mask, mask]), force_drop=drop)[:, :C]  # (2B, C, T, H, W)
    cond, uncond = out.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


class RectifiedFlow(Diffusion):
    """x_s = (1 - s) x0 + s noise, s in [0, 1]; the model predicts the velocity noise - x0.

    Training draws s from a logit-normal, then applies the resolution-aware shift
    s' = k s / (1 + (k - 1) s) with k = sqrt(tokens / base_tokens) (more tokens -> noisier timesteps),
    as in SD3 and Open-Sora 1.2. Sampling integrates the ODE from s=1 to s=0 with Euler steps on the same shift.
    """

    name = "rflow"

    def __init__(self, logit_mean: float = 0.0, logit_std: float = 1.0, shift: float | str = "auto",
                 base_tokens: int = 4096):
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.shift, self.base_tokens = shift, base_tokens

    def shift_for(self, x: torch.Tensor) -> float:
        if self.shift != "auto":
            return float(self.shift)
        tokens = math.prod(x.shape[2:])  # frames * latent pixels; a proxy for the model's token count
        return max(1.0, math.sqrt(tokens / self.base_tokens))

    @staticmethod
    def apply_shift(s: torch.Tensor, k: float) -> torch.Tensor:
        return k * s / (1 + (k - 1) * s)

    def loss(self, model, x0, y, mask, generator=None):
        B = len(x0)
        z = randn((B,), x0.float(), generator)
        s = self.apply_shift(torch.sigmoid(self.logit_mean + self.logit_std * z), self.shift_for(x0))  # (B,)
        noise = randn(x0.shape, x0, generator)
        sb = s.view(B, *[1] * (x0.dim() - 1)).to(x0.dtype)
        xs = (1 - sb) * x0 + sb * noise  # (B, C, T, H, W)
        pred = model(xs, s * 1000, y, mask)[:, : x0.shape[1]]
        return F.mse_loss(pred.float(), (noise - x0).float())

    @torch.no_grad()
    def sample(self, model, noise, y, mask, steps=30, cfg_scale=4.0, generator=None):
        s = self.apply_shift(torch.linspace(1.0, 0.0, steps + 1), self.shift_for(noise))
        x = noise
        for i in range(steps):
            t = torch.full((len(x),), float(s[i]) * 1000, device=x.device)
            v = guided(model, x, t, y, mask, cfg_scale)
            x = x + (s[i + 1] - s[i]).item() * v  # Euler step toward s=0
        return x


class DDPM(Diffusion):
    """Epsilon prediction with diffusers' DDPMScheduler (linear betas 1e-4..2e-2, as Open-Sora 1.0/PixArt)."""

    name = "ddpm"

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       beta_start=1e-4, beta_end=2e-2, clip_sample=False)

    def loss(self, model, x0, y, mask, generator=None):
        B = len(x0)
        n = self.scheduler.config.num_train_timesteps
        dev = generator.device if generator is not None else x0.device
        t = torch.randint(0, n, (B,), generator=generator, device=dev).to(x0.device)
        noise = randn(x0.shape, x0, generator)
        xt = self.scheduler.add_noise(x0, noise, t)
        pred = model(xt, t.float() * (1000 / n), y, mask)[:, : x0.shape[1]]
        return F.mse_loss(pred.float(), noise.float())

    @torch.no_grad()
    def sample(self, model, noise, y, mask, steps=30, cfg_scale=4.0, generator=None):
        from diffusers import DDPMScheduler

        sched = DDPMScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(steps, device=noise.device)
        n = sched.config.num_train_timesteps
        x = noise
        for t in sched.timesteps:
            tt = torch.full((len(x),), float(t) * (1000 / n), device=x.device)
            eps = guided(model, x, tt, y, mask, cfg_scale)
            x = sched.step(eps, t, x, generator=generator).prev_sample
        return x


DIFFUSIONS: dict[str, type[Diffusion]] = {"rflow": RectifiedFlow, "ddpm": DDPM}


def build_diffusion(name: str = "rflow", **kwargs) -> Diffusion:
    """The objective by name; options that belong to another objective (a config's `shift` when switching
    to ddpm) are ignored."""
    if name not in DIFFUSIONS:
        raise ValueError(f"unknown diffusion {name!r}; choose one of {sorted(DIFFUSIONS)}")
    accepted = inspect.signature(DIFFUSIONS[name]).parameters
    return DIFFUSIONS[name](**{k: v for k, v in kwargs.items() if k in accepted})
