"""Training objectives and samplers: rectified flow (default) and DDPM (Open-Sora 1.0 / PixArt's IDDPM settings).

Both present the model with timesteps on a 0..1000 scale, so a checkpoint trained with one keeps a meaningful
timestep embedding under the other. Classifier-free guidance batches the conditional and the null-caption pass.

Randomness: `generator` is one `torch.Generator` for the batch, or a list with one per sample. The trainer
passes one per sample, seeded from the sample's clip and the step, so the noise a clip gets does not depend on
how the batch is split over processes (one process with batch 4 and two with batch 2 train the same weights).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F


class Diffusion:
    """One objective: `loss(model, x0, y, mask)` for training, `sample(...)` for generation."""

    name = "base"

    def loss(self, model, x0: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, generator=None,
             drop: torch.Tensor | None = None) -> torch.Tensor:
        """`drop` (B,) bool: samples trained on the null caption (None: the model's own caption dropout)."""
        raise NotImplementedError

    def sample(self, model, noise: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, steps: int = 30,
               cfg_scale: float = 4.0, generator: torch.Generator | None = None,
               cfg_channels: int | None = None) -> torch.Tensor:
        raise NotImplementedError


def randn(shape, like: torch.Tensor, generator=None) -> torch.Tensor:
    """Normal noise drawn on the generator's device (reproducible on CPU), moved to `like`'s device/dtype;
    with a list of generators, row i comes from generator i."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([randn(shape[1:], like, g) for g in generator])
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev).to(device=like.device, dtype=like.dtype)


def guided(model, x: torch.Tensor, timestep: torch.Tensor, y, mask, cfg_scale: float,
           cfg_channels: int | None = None) -> torch.Tensor:
    """The model's output with classifier-free guidance on its first `cfg_channels` channels (None: every
    channel of x, the latent channels); the other channels (the rest of the latents, a learned variance)
    are the conditional prediction's, as in Open-Sora 1.0's and DiT's samplers."""
    C = x.shape[1] if cfg_channels is None else int(cfg_channels)
    if not 0 < C <= x.shape[1]:
        raise ValueError(f"cfg_channels must be in 1..{x.shape[1]} (the latent channels), got {cfg_channels}")
    if cfg_scale == 1.0:
        return model(x, timestep, y, mask, force_drop=torch.zeros(len(x), dtype=torch.bool, device=x.device))
    B = len(x)
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x.device)
    out = model(torch.cat([x, x]), torch.cat([timestep, timestep]), torch.cat([y, y]),
                None if mask is None else torch.cat([mask, mask]), force_drop=drop)  # (2B, C_out, T, H, W)
    cond, uncond = out.chunk(2)
    return torch.cat([uncond[:, :C] + cfg_scale * (cond[:, :C] - uncond[:, :C]), cond[:, C:]], dim=1)


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

    def loss(self, model, x0, y, mask, generator=None, drop=None):
        B = len(x0)
        z = randn((B,), x0.float(), generator)
        s = self.apply_shift(torch.sigmoid(self.logit_mean + self.logit_std * z), self.shift_for(x0))  # (B,)
        noise = randn(x0.shape, x0, generator)
        sb = s.view(B, *[1] * (x0.dim() - 1)).to(x0.dtype)
        xs = (1 - sb) * x0 + sb * noise  # (B, C, T, H, W)
        pred = model(xs, s * 1000, y, mask, force_drop=drop)[:, : x0.shape[1]]
        return F.mse_loss(pred.float(), (noise - x0).float())

    @torch.no_grad()
    def sample(self, model, noise, y, mask, steps=30, cfg_scale=4.0, generator=None, cfg_channels=None):
        s = self.apply_shift(torch.linspace(1.0, 0.0, steps + 1), self.shift_for(noise))
        x = noise
        for i in range(steps):
            t = torch.full((len(x),), float(s[i]) * 1000, device=x.device)
            v = guided(model, x, t, y, mask, cfg_scale, cfg_channels)[:, : x.shape[1]]
            x = x + (s[i + 1] - s[i]).item() * v  # Euler step toward s=0
        return x


def spaced_timesteps(num_train: int, steps: int) -> list[int]:
    """IDDPM's evenly spaced subset of `steps` timesteps out of `num_train` (both ends included), descending."""
    if steps >= num_train:
        return list(range(num_train))[::-1]
    stride, taken, idx = (num_train - 1) / max(steps - 1, 1), [], 0.0
    for _ in range(steps):
        taken.append(round(idx))
        idx += stride
    return sorted(set(taken), reverse=True)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_nll(x, mean, log_scale):
    """-log p(x) for x in [-1, 1] quantised to 256 levels, under N(mean, exp(log_scale)^2) (IDDPM's decoder)."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    inv = torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv * (x - mean + 1 / 255)), cdf(inv * (x - mean - 1 / 255))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return -torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus, log_mid))


class DDPM(Diffusion):
    """Epsilon prediction on diffusers' DDPMScheduler (linear betas 1e-4..2e-2, 1000 steps), as Open-Sora 1.0
    and PixArt-alpha train it.

    A model that also predicts its variance (`pred_sigma`: twice the latent channels out) is trained as IDDPM
    does: MSE on epsilon plus the variational bound on the variance (the mean detached), and sampled with
    the learned variance ("learned_range") on IDDPM's evenly spaced timesteps.
    """

    name = "ddpm"

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       beta_start=1e-4, beta_end=2e-2, clip_sample=False)
        abar = self.scheduler.alphas_cumprod.double()
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = self.scheduler.betas.double()
        post_var = betas * (1 - abar_prev) / (1 - abar)
        self.post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # clipped at t=0, as IDDPM
        self.log_betas = torch.log(betas)
        self.coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
        self.coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
        self.abar = abar

    def _at(self, table, t, like):
        return table.to(like.device)[t].float().view(-1, *[1] * (like.dim() - 1))

    def vb_loss(self, x0, xt, t, eps, var_out):
        """IDDPM's variational-bound term (bits per dimension) for the learned variance; eps is detached."""
        abar = self._at(self.abar, t, x0)
        x0_pred = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
        mean_pred = self._at(self.coef_x0, t, x0) * x0_pred + self._at(self.coef_xt, t, x0) * xt
        mean_true = self._at(self.coef_x0, t, x0) * x0 + self._at(self.coef_xt, t, x0) * xt
        lo, hi = self._at(self.post_logvar, t, x0), self._at(self.log_betas, t, x0)
        frac = (var_out + 1) / 2
        logvar = frac * hi + (1 - frac) * lo
        kl = normal_kl(mean_true, lo, mean_pred, logvar).flatten(1).mean(1) / math.log(2.0)
        nll = discretized_gaussian_nll(x0, mean_pred, 0.5 * logvar).flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl).mean()

    def loss(self, model, x0, y, mask, generator=None, drop=None):
        B = len(x0)
        n = self.scheduler.config.num_train_timesteps
        if isinstance(generator, (list, tuple)):
            t = torch.cat([torch.randint(0, n, (1,), generator=g, device=g.device) for g in generator])
        else:
            dev = generator.device if generator is not None else x0.device
            t = torch.randint(0, n, (B,), generator=generator, device=dev)
        t = t.to(x0.device)
        noise = randn(x0.shape, x0, generator)
        xt = self.scheduler.add_noise(x0, noise, t)
        out = model(xt, t.float() * (1000 / n), y, mask, force_drop=drop)
        C = x0.shape[1]
        loss = F.mse_loss(out[:, :C].float(), noise.float())
        if out.shape[1] == 2 * C:  # learned variance
            loss = loss + self.vb_loss(x0.float(), xt.float(), t, out[:, :C].detach().float(), out[:, C:].float())
        return loss

    @torch.no_grad()
    def sample(self, model, noise, y, mask, steps=30, cfg_scale=4.0, generator=None, cfg_channels=None):
        from diffusers import DDPMScheduler

        n = self.scheduler.config.num_train_timesteps
        timesteps = spaced_timesteps(n, steps)
        x, C, sched = noise, noise.shape[1], None
        for t in timesteps:
            tt = torch.full((len(x),), float(t) * (1000 / n), device=x.device)
            out = guided(model, x, tt, y, mask, cfg_scale, cfg_channels)  # (B, C or 2C, T, H, W)
            if sched is None:  # the variance: learned when the model predicts it, else the posterior's
                learned = out.shape[1] == 2 * C
                sched = DDPMScheduler.from_config(self.scheduler.config,
                                                  variance_type="learned_range" if learned else "fixed_small")
                sched.set_timesteps(timesteps=timesteps, device=x.device)
            x = sched.step(out if learned else out[:, :C], t, x, generator=generator).prev_sample
        return x


DIFFUSIONS: dict[str, type[Diffusion]] = {"rflow": RectifiedFlow, "ddpm": DDPM}


def build_diffusion(name: str = "rflow", **kwargs) -> Diffusion:
    """The objective by name; options that belong to another objective (a config's `shift` when switching
    to ddpm) are ignored."""
    if name not in DIFFUSIONS:
        raise ValueError(f"unknown diffusion {name!r}; choose one of {sorted(DIFFUSIONS)}")
    accepted = inspect.signature(DIFFUSIONS[name]).parameters
    return DIFFUSIONS[name](**{k: v for k, v in kwargs.items() if k in accepted})
