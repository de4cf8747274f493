"""Objectives and samplers: sign conventions checked with exact (oracle) predictors, CFG arithmetic, losses."""

import math

import pytest
import torch

from trainer.diffusion import DDPM, RectifiedFlow, build_diffusion, guided, spaced_timesteps
from trainer.model import build_stdit


class VelocityOracle(torch.nn.Module):
    """The exact rectified-flow velocity towards one known clean sample x0: v = (x_s - x0) / s."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, timestep, y, mask=None, force_drop=None):
        s = (timestep / 1000).view(-1, 1, 1, 1, 1).clamp_min(1e-6)
        return (x - self.x0) / s


class EpsilonOracle(torch.nn.Module):
    """The exact DDPM noise for one known clean sample: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def __init__(self, x0, scheduler):
        super().__init__()
        self.x0, self.abar = x0, scheduler.alphas_cumprod

    def forward(self, x, timestep, y, mask=None, force_drop=None):
        a = self.abar[timestep.round().long()].view(-1, 1, 1, 1, 1)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


def test_rectified_flow_sampler_reaches_the_data_with_an_exact_velocity():
    x0 = torch.rand(2, 3, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    for shift in (1.0, 3.0):
        out = RectifiedFlow(shift=shift).sample(VelocityOracle(x0), noise, torch.zeros(2, 1, 4), None, steps=7,
                                                cfg_scale=1.0)
        assert torch.allclose(out, x0, atol=1e-4)


def test_ddpm_sampler_reaches_the_data_with_an_exact_epsilon():
    ddpm = DDPM()
    x0 = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    out = ddpm.sample(EpsilonOracle(x0, ddpm.scheduler), torch.randn_like(x0), torch.zeros(1, 1, 4), None, steps=10,
                      cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-3)


def test_resolution_shift_makes_large_inputs_noisier():
    rf = RectifiedFlow(shift="auto", base_tokens=64)
    assert rf.shift_for(torch.zeros(1, 4, 1, 8, 8)) == 1.0
    assert rf.shift_for(torch.zeros(1, 4, 4, 16, 16)) == pytest.approx(4.0)
    s = torch.tensor([0.25, 0.5])
    assert (rf.apply_shift(s, 4.0) > s).all() and rf.apply_shift(torch.tensor([1.0]), 4.0).item() == 1.0


def test_cfg_combines_conditional_and_null_predictions():
    torch.manual_seed(0)
    model = build_stdit("STDiT-T/2", in_channels=3, caption_channels=8, model_max_length=4, pred_sigma=True).eval()
    with torch.no_grad():
        for p in model.final_layer.parameters():
            p.normal_(0, 0.1)
        x, t, y = torch.randn(2, 3, 2, 4, 4), torch.tensor([300.0, 600.0]), torch.randn(2, 4, 8)
        cond = model(x, t, y, force_drop=torch.tensor([False, False]))[:, :3]
        null = model(x, t, y, force_drop=torch.tensor([True, True]))[:, :3]
        assert torch.allclose(guided(model, x, t, y, None, 1.0)[:, :3], cond, atol=1e-5)
        assert torch.allclose(guided(model, x, t, y, None, 4.5)[:, :3], null + 4.5 * (cond - null), atol=1e-5)


@pytest.mark.parametrize("name", ["rflow", "ddpm"])
def test_losses_train_a_tiny_model(name):
    torch.manual_seed(0)
    model = build_stdit("STDiT-T/2", in_channels=3, caption_channels=8, model_max_length=4)
    diffusion = build_diffusion(name)
    x0 = torch.rand(4, 3, 2, 8, 8) * 2 - 1
    y = torch.randn(4, 4, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        loss = diffusion.loss(model, x0, y, None, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))  # no NaN
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5
    with pytest.raises(ValueError, match="unknown diffusion"):
        build_diffusion("score-sde")


def test_cfg_on_the_first_channels_only_keeps_the_conditional_rest():
    torch.manual_seed(0)
    model = build_stdit("STDiT-T/2", in_channels=4, caption_channels=8, model_max_length=4, pred_sigma=True).eval()
    with torch.no_grad():
        for p in model.final_layer.parameters():
            p.normal_(0, 0.1)
        x, t, y = torch.randn(2, 4, 2, 4, 4), torch.tensor([300.0, 600.0]), torch.randn(2, 4, 8)
        cond = model(x, t, y, force_drop=torch.tensor([False, False]))  # (2, 8, ...): eps and variance
        null = model(x, t, y, force_drop=torch.tensor([True, True]))
        out = guided(model, x, t, y, None, 4.5, cfg_channels=3)  # DiT's choice: 3 of 4 latent channels
        assert torch.allclose(out[:, :3], null[:, :3] + 4.5 * (cond[:, :3] - null[:, :3]), atol=1e-5)
        assert torch.allclose(out[:, 3:], cond[:, 3:], atol=1e-6)  # 4th latent channel and the variance
        full = guided(model, x, t, y, None, 4.5)  # default: every latent channel, variance conditional
        assert torch.allclose(full[:, :4], null[:, :4] + 4.5 * (cond[:, :4] - null[:, :4]), atol=1e-5)
        assert torch.allclose(full[:, 4:], cond[:, 4:], atol=1e-6)
        for bad in (0, 5):
            with pytest.raises(ValueError, match="cfg_channels"):
                guided(model, x, t, y, None, 4.5, cfg_channels=bad)


def test_spaced_timesteps_are_iddpms():
    ts = spaced_timesteps(1000, 100)
    assert len(ts) == 100 and ts[0] == 999 and ts[-7:] == [61, 50, 40, 30, 20, 10, 0]
    assert spaced_timesteps(1000, 1000) == list(range(999, -1, -1))


class LearnedVarianceOracle(EpsilonOracle):
    """Exact epsilon plus a variance output of -1: the posterior variance (IDDPM's learned_range minimum)."""

    def forward(self, x, timestep, y, mask=None, force_drop=None):
        eps = super().forward(x, timestep, y, mask, force_drop)
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)


def test_ddpm_learned_variance_samples_and_its_bound_is_least_at_the_true_variance():
    ddpm = DDPM()
    x0 = torch.rand(1, 3, 2, 4, 4) * 2 - 1
    out = ddpm.sample(LearnedVarianceOracle(x0, ddpm.scheduler), torch.randn_like(x0), torch.zeros(1, 1, 4), None,
                      steps=10, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-3)
    t = torch.tensor([10])  # early: the posterior variance is well below beta_t
    noise = torch.randn_like(x0)
    xt = ddpm.scheduler.add_noise(x0, noise, t)
    vb = {v: ddpm.vb_loss(x0, xt, t, noise, torch.full_like(x0, v)).item() for v in (-1.0, 0.0, 1.0)}
    assert abs(vb[-1.0]) < 1e-6 < vb[0.0] < vb[1.0]  # exact mean: KL is 0 only at the true posterior variance
    from torch.distributions import Normal, kl_divergence
    post = ddpm.post_logvar[10].exp().sqrt().item()
    beta = ddpm.scheduler.betas[10].sqrt().item()
    expected = kl_divergence(Normal(0.0, post), Normal(0.0, beta)).item() / math.log(2.0)
    assert vb[1.0] == pytest.approx(expected, rel=1e-4)  # v = 1: the variance is beta_t


def test_ddpm_trains_a_learned_variance_with_per_sample_generators():
    torch.manual_seed(0)
    model = build_stdit("STDiT-T/2", in_channels=3, caption_channels=8, model_max_length=4, pred_sigma=True)
    x0, y = torch.rand(2, 3, 2, 8, 8) * 2 - 1, torch.randn(2, 4, 8)
    gens = [torch.Generator().manual_seed(k) for k in (1, 2)]
    loss = DDPM().loss(model, x0, y, None, generator=gens, drop=torch.tensor([False, True]))
    loss.backward()
    w = model.final_layer.linear.weight.grad.view(-1, 6, model.config.hidden_size)  # (patch, C_out, D)
    assert torch.isfinite(loss) and w[:, 3:].abs().sum() > 0  # the variance channels get a gradient
    again = DDPM().loss(model, x0, y, None, generator=[torch.Generator().manual_seed(k) for k in (1, 2)],
                        drop=torch.tensor([False, True]))
    assert again.item() == loss.item()  # the noise comes from the per-sample generators alone
