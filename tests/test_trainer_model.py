"""STDiT: zero-init semantics, odd shapes, masks, checkpointing, save/load round trip."""

import copy

import pytest
import torch

from trainer.model import STDIT_SIZES, STDiT, build_stdit, spatial_pos_embed


def tiny(**kw) -> STDiT:
    torch.manual_seed(0)
    params = dict(in_channels=3, caption_channels=16, model_max_length=6)
    params.update(kw)
    return build_stdit("STDiT-T/2", **params)


def perturb(model: STDiT) -> STDiT:
    """Give the zero-initialised layers random weights so every path contributes to the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def inputs(B=2, C=3, T=4, H=8, W=8, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, T, H, W, generator=g), torch.tensor([10.0, 700.0])[:B],
            torch.randn(B, L, 16, generator=g))


def test_zero_output_and_identity_branches_at_init():
    model = tiny().eval()
    x, t, y = inputs()
    assert torch.count_nonzero(model(x, t, y)) == 0  # final layer is zero-initialised
    for block in model.blocks:  # temporal attention and cross-attention start as identity branches
        assert torch.count_nonzero(block.attn_temp.proj.weight) == 0
        assert torch.count_nonzero(block.cross_attn.proj.weight) == 0
        assert torch.count_nonzero(block.attn.proj.weight) > 0


@pytest.mark.parametrize("patch,shape", [((1, 2, 2), (5, 9, 11)), ((2, 4, 4), (3, 7, 10)), ((1, 2, 2), (1, 2, 2))])
def test_odd_sizes_keep_their_shape(patch, shape):
    model = perturb(tiny(patch_size=patch, pred_sigma=True)).eval()
    x, t, y = inputs(T=shape[0], H=shape[1], W=shape[2])
    out = model(x, t, y)
    assert out.shape == (2, 6, *shape)  # learned sigma doubles the channels
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_padding_mask_equals_truncated_caption():
    model = perturb(tiny()).eval()
    x, t, y = inputs()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    full = model(x, t, y, mask)
    short = model(x[:1], t[:1], y[:1, :3], torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(full[:1], short, atol=1e-5)
    garbage = y.clone()
    garbage[0, 3:] = 100.0  # padding content must not matter
    assert torch.allclose(model(x, t, garbage, mask), full, atol=1e-5)
    empty = model(x, t, y, torch.zeros(2, 6, dtype=torch.bool))  # an empty caption does not produce NaN
    assert torch.isfinite(empty).all()


def test_force_drop_uses_the_null_caption():
    model = perturb(tiny()).eval()
    x, t, y = inputs()
    drop = torch.tensor([True, True])
    a = model(x, t, y, force_drop=drop)
    b = model(x, t, torch.randn_like(y), force_drop=drop)
    assert torch.allclose(a, b)
    assert not torch.allclose(a, model(x, t, y))


def test_temporal_attention_mixes_frames_spatial_does_not():
    model = perturb(tiny()).eval()
    x, t, y = inputs()
    x2 = x.clone()
    x2[:, :, 0] += 1.0  # change frame 0 only
    d = (model(x, t, y) - model(x2, t, y)).abs().amax(dim=(0, 1, 3, 4))
    assert (d > 1e-4).all()  # every frame sees the change through temporal attention
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn_temp.proj.weight)
        torch.nn.init.zeros_(block.attn_temp.proj.bias)
    d = (model(x, t, y) - model(x2, t, y)).abs().amax(dim=(0, 1, 3, 4))
    assert d[0] > 1e-4 and (d[1:] == 0).all()  # without it, frames are independent images


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, y = inputs()
    grads = []
    for ckpt in (False, True):  # caption dropout is forced off: both runs see the same inputs
        model = perturb(tiny()).train()
        if ckpt:
            model.enable_gradient_checkpointing()
        model(x, t, y, force_drop=torch.tensor([False, False])).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_save_load_round_trip(tmp_path):
    model = perturb(tiny(space_scale=0.5, time_scale=2.0, patch_size=(1, 2, 2))).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = STDiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.space_scale == 0.5 and tuple(loaded.config.patch_size) == (1, 2, 2)
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_sizes_registry_and_bad_input():
    assert STDIT_SIZES["STDiT-XL/2"] == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=(1, 2, 2))
    with pytest.raises(ValueError, match="unknown model size"):
        build_stdit("STDiT-Q/9")
    with pytest.raises(ValueError, match="divisible"):
        build_stdit("STDiT-T/2", hidden_size=66)
    pe = spatial_pos_embed(8, 2, 3)
    assert pe.shape == (6, 8) and torch.allclose(pe[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))


def test_an_all_zero_mask_row_is_a_caption_that_contributes_nothing():
    model = perturb(tiny()).eval()
    x, t, y = inputs()
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0] = False  # sample 0: no caption tokens at all
    out = model(x, t, y, mask)
    assert torch.isfinite(out).all()
    garbage = y.clone()
    garbage[0] = 100.0
    assert torch.equal(model(x, t, garbage, mask)[0], out[0])  # its caption content does not matter
    silent = copy.deepcopy(model)
    for block in silent.blocks:  # cross-attention output = its projection's bias alone
        torch.nn.init.zeros_(block.cross_attn.proj.weight)
    assert torch.allclose(out[0], silent(x, t, y, mask)[0], atol=1e-6)
    assert not torch.allclose(out[1], silent(x, t, y, mask)[1], atol=1e-4)  # a real caption does contribute


def test_open_soras_half_batch_caption_mask_is_repeated_for_the_null_half():
    model = perturb(tiny()).eval()
    x, t, y = inputs(B=2)
    x4, t4, y4 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y])
    drop = torch.tensor([False, False, True, True])  # Open-Sora's CFG batch: [conditional; null]
    half = torch.ones(2, 6, dtype=torch.long)
    half[1, 2:] = 0
    full = model(x4, t4, y4, half.repeat(2, 1), force_drop=drop)
    assert torch.equal(model(x4, t4, y4, half, force_drop=drop), full)
    with pytest.raises(ValueError, match="3 rows for 4 captions"):
        model(x4, t4, y4, torch.ones(3, 6), force_drop=drop)
