"""Converting published weights: minimal reference modules written from the Open-Sora 1.0 STDiT and PixArt-alpha
architectures (their parameter names and forward math: explicit softmax attention, block-diagonal cross-attention
over the concatenated valid caption tokens, numpy sin-cos tables), random-initialised, saved, converted and
compared numerically with this repository's STDiT."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainer.convert import convert, load_state_dict, main as convert_main
from trainer.model import STDiT

D, HEADS, C_IN, C_TXT, L = 64, 4, 4, 24, 6


# ----------------------------------------------------------------- reference building blocks

def ref_sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def ref_sincos_2d(dim, gh_n, gw_n, scale=1.0, base_size=None):
    gh = np.arange(gh_n, dtype=np.float32) / scale
    gw = np.arange(gw_n, dtype=np.float32) / scale
    if base_size is not None:
        gh, gw = gh * (base_size / gh_n), gw * (base_size / gw_n)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, gw_n, gh_n)  # width first, as the originals
    return np.concatenate([ref_sincos_1d(dim // 2, grid[0]), ref_sincos_1d(dim // 2, grid[1])], axis=1)


class RefMlp(nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(i, h), nn.GELU(approximate="tanh"), nn.Linear(h, o)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)).float().softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, D))


class RefCrossAttention(nn.Module):
    """All queries of the batch in one sequence; keys = the valid caption tokens of all samples, concatenated;
    a block-diagonal mask keeps each sample to its own caption."""

    def __init__(self):
        super().__init__()
        self.q_linear, self.kv_linear, self.proj = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)

    def forward(self, x, cond, y_lens):
        B, N, _ = x.shape
        q = self.q_linear(x).view(-1, HEADS, D // HEADS).transpose(0, 1)  # (h, B*N, d)
        k, v = self.kv_linear(cond).view(-1, 2, HEADS, D // HEADS).permute(1, 2, 0, 3)  # (h, sum L, d) each
        allowed = torch.zeros(B * N, sum(y_lens), dtype=torch.bool)
        start = 0
        for b, n in enumerate(y_lens):
            allowed[b * N:(b + 1) * N, start:start + n] = True
            start += n
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D // HEADS)
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        return self.proj((attn @ v).transpose(0, 1).reshape(B, N, D))


class RefTimestep(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))

    def forward(self, t):
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class RefCaption(nn.Module):
    def __init__(self):
        super().__init__()
        self.y_proj = RefMlp(C_TXT, D, D)
        self.register_buffer("y_embedding", torch.randn(L, C_TXT) / C_TXT**0.5)

    def forward(self, y):
        return self.y_proj(y)


class RefFinal(nn.Module):
    def __init__(self, patch_volume, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, patch_volume * out_ch)
        self.scale_shift_table = nn.Parameter(torch.randn(2, D) / D**0.5)

    def forward(self, x, t):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class RefBlock(nn.Module):
    def __init__(self, temporal):
        super().__init__()
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn, self.cross_attn = RefAttention(), RefCrossAttention()
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = RefMlp(D, 4 * D, D)
        self.scale_shift_table = nn.Parameter(torch.randn(6, D) / D**0.5)
        if temporal:
            self.attn_temp = RefAttention()

    def forward(self, x, y, t, y_lens, d_t=1, tpe=None):
        B, N, _ = x.shape
        d_s = N // d_t
        sh1, sc1, g1, sh2, sc2, g2 = (self.scale_shift_table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)
        x_m = self.norm1(x) * (1 + sc1) + sh1
        x_s = self.attn(x_m.reshape(B * d_t, d_s, D)).reshape(B, N, D)
        x = x + g1 * x_s
        if hasattr(self, "attn_temp"):
            x_t = x.reshape(B, d_t, d_s, D).permute(0, 2, 1, 3).reshape(B * d_s, d_t, D)
            if tpe is not None:
                x_t = x_t + tpe
            x_t = self.attn_temp(x_t).reshape(B, d_s, d_t, D).permute(0, 2, 1, 3).reshape(B, N, D)
            x = x + g1 * x_t
        x = x + self.cross_attn(x, y, y_lens)
        return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + sh2)


def ref_caption_tokens(y_embedder, y, mask):
    y = y_embedder(y)  # (B, L, D)
    return y[mask.bool()].view(1, -1, D), mask.sum(1).tolist()


class RefOpenSoraSTDiT(nn.Module):
    def __init__(self, input_size, patch=(1, 2, 2), depth=2, space_scale=0.5, time_scale=1.0):
        super().__init__()
        self.input_size, self.patch = input_size, patch
        self.grid = [input_size[i] // patch[i] for i in range(3)]
        self.register_buffer("pos_embed", torch.from_numpy(
            ref_sincos_2d(D, self.grid[1], self.grid[2], space_scale)).float()[None])
        self.register_buffer("pos_embed_temporal", torch.from_numpy(
            ref_sincos_1d(D, np.arange(self.grid[0]) / time_scale)).float()[None])
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv3d(C_IN, D, patch, patch)
        self.t_embedder = RefTimestep()
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.y_embedder = RefCaption()
        self.blocks = nn.ModuleList([RefBlock(temporal=True) for _ in range(depth)])
        self.final_layer = RefFinal(math.prod(patch), 2 * C_IN)

    def forward(self, x, timestep, y, mask):
        B = x.shape[0]
        nt, nh, nw = self.grid
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2)
        x = (x.view(B, nt, nh * nw, D) + self.pos_embed).view(B, -1, D)
        t = self.t_embedder(timestep)
        t0 = self.t_block(t)
        y, y_lens = ref_caption_tokens(self.y_embedder, y, mask)
        for i, block in enumerate(self.blocks):
            x = block(x, y, t0, y_lens, d_t=nt, tpe=self.pos_embed_temporal if i == 0 else None)
        x = self.final_layer(x, t)
        pt, ph, pw = self.patch
        x = x.view(B, nt, nh, nw, pt, ph, pw, 2 * C_IN).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, 2 * C_IN, nt * pt, nh * ph, nw * pw)


class RefPixArt(nn.Module):
    def __init__(self, input_size=16, patch=2, depth=2, lewei_scale=1.0):
        super().__init__()
        self.patch, n = patch, input_size // patch
        self.register_buffer("pos_embed", torch.from_numpy(
            ref_sincos_2d(D, n, n, lewei_scale, base_size=n)).float()[None])
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(C_IN, D, patch, patch)
        self.t_embedder = RefTimestep()
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.y_embedder = RefCaption()
        self.blocks = nn.ModuleList([RefBlock(temporal=False) for _ in range(depth)])
        self.final_layer = RefFinal(patch * patch, 2 * C_IN)

    def forward(self, x, timestep, y, mask):
        B, _, H, W = x.shape
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        t = self.t_embedder(timestep)
        t0 = self.t_block(t)
        y, y_lens = ref_caption_tokens(self.y_embedder, y, mask)
        for block in self.blocks:
            x = block(x, y, t0, y_lens)
        x = self.final_layer(x, t)
        h, w, p = H // self.patch, W // self.patch, self.patch
        x = x.view(B, h, w, p, p, 2 * C_IN).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, 2 * C_IN, h * p, w * p)


def randomise(module):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


def caption(B=2):
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0
    return torch.randn(B, L, C_TXT, generator=g), mask


# ----------------------------------------------------------------- tests

def test_opensora_stdit_forward_matches_after_conversion(tmp_path):
    ref = randomise(RefOpenSoraSTDiT(input_size=(4, 8, 12), space_scale=0.5, time_scale=1.0))
    torch.save({"model": ref.state_dict()}, tmp_path / "opensora.pth")
    model = convert(load_state_dict(tmp_path / "opensora.pth"), num_heads=HEADS).eval()
    assert model.config.space_scale == 0.5 and model.config.time_scale == 1.0 and model.config.pred_sigma
    x = torch.randn(2, C_IN, 4, 8, 12, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([37.0, 801.0])
    y, mask = caption()
    with torch.no_grad():
        expected, got = ref(x, t, y, mask), model(x, t, y, mask)
    assert got.shape == expected.shape == (2, 2 * C_IN, 4, 8, 12)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_pixart_image_model_is_reproduced_frame_by_frame(tmp_path):
    ref = randomise(RefPixArt(input_size=16, lewei_scale=1.0))
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "pixart.pth")
    model = convert(load_state_dict(tmp_path / "pixart.pth"), num_heads=HEADS).eval()
    assert model.config.base_size == 8 and model.config.space_scale == 1.0
    frames = torch.randn(2, C_IN, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([5.0, 500.0])
    y, mask = caption()
    with torch.no_grad():
        got = model(frames, t, y, mask)  # temporal attention is zero-initialised: frames are independent
        for k in range(3):
            expected = ref(frames[:, :, k], t, y, mask)
            assert torch.allclose(got[:, :, k], expected, atol=1e-4, rtol=1e-4), (got[:, :, k] - expected).abs().max()


def test_converted_folder_loads_alone_and_bad_checkpoints_fail_clearly(tmp_path, capsys):
    ref = randomise(RefOpenSoraSTDiT(input_size=(2, 4, 4), depth=1))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    assert convert_main([str(tmp_path / "w.pth"), str(tmp_path / "out"), "--num-heads", str(HEADS)]) == 0
    loaded = STDiT.from_pretrained(tmp_path / "out")
    assert loaded.config.depth == 1 and loaded.config.hidden_size == D
    torch.save({"something": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not an Open-Sora 1.0 STDiT or PixArt"):
        convert(load_state_dict(tmp_path / "bad.pth"))
    assert convert_main([str(tmp_path / "missing.pth"), str(tmp_path / "o2")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    sd = ref.state_dict()
    sd["csize_embedder.mlp.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="PixArt-MS"):
        convert(sd, num_heads=HEADS)
    with pytest.raises(ValueError, match="--num-heads"):
        convert(ref.state_dict())  # hidden 64 is not a multiple of 72: the head count must be given


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("space_scale,time_scale", [(0.5, 1.0), (1.0, 2 / 3)])
def test_scales_are_exact_from_half_precision_tables(dtype, space_scale, time_scale):
    ref = RefOpenSoraSTDiT(input_size=(6, 8, 12), depth=1, space_scale=space_scale, time_scale=time_scale)
    sd = {k: (v.to(dtype) if k.startswith("pos_embed") else v) for k, v in ref.state_dict().items()}
    model = convert(sd, num_heads=HEADS)
    assert model.config.space_scale == space_scale  # exactly: 2/3 is 0.6666666666666666, not 0.6667
    assert model.config.time_scale == time_scale


def test_missing_position_tables_need_the_scales(tmp_path, capsys):
    ref = randomise(RefOpenSoraSTDiT(input_size=(4, 8, 12), depth=1, space_scale=0.5, time_scale=2 / 3))
    full = ref.state_dict()
    no_space = {k: v for k, v in full.items() if k != "pos_embed"}
    with pytest.raises(ValueError, match="--space-scale"):
        convert(no_space, num_heads=HEADS)
    no_time = {k: v for k, v in full.items() if k != "pos_embed_temporal"}
    with pytest.raises(ValueError, match="--time-scale"):
        convert(no_time, num_heads=HEADS)
    torch.save({k: v for k, v in full.items() if not k.startswith("pos_embed")}, tmp_path / "bare.pth")
    assert convert_main([str(tmp_path / "bare.pth"), str(tmp_path / "o"), "--num-heads", str(HEADS)]) == 2
    assert "--space-scale" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "bare.pth"), str(tmp_path / "o"), "--num-heads", str(HEADS),
                         "--space-scale", "0.5", "--time-scale", "2/3"]) == 0
    model = STDiT.from_pretrained(tmp_path / "o").eval()
    assert model.config.space_scale == 0.5 and model.config.time_scale == 2 / 3
    x = torch.randn(2, C_IN, 4, 8, 12, generator=torch.Generator().manual_seed(7))
    y, mask = caption()
    with torch.no_grad():  # the given scales reproduce the original's tables
        expected, got = ref(x, torch.tensor([37.0, 801.0]), y, mask), model(x, torch.tensor([37.0, 801.0]), y, mask)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    given = convert(full, num_heads=HEADS, space_scale=1.0)  # a flag wins over the table
    assert given.config.space_scale == 1.0 and given.config.time_scale == 2 / 3
    pixart = {k: v for k, v in randomise(RefPixArt(input_size=16)).state_dict().items() if k != "pos_embed"}
    with pytest.raises(ValueError, match="--space-scale"):
        convert(pixart, num_heads=HEADS)
    with pytest.raises(ValueError, match="--base-size"):
        convert(pixart, num_heads=HEADS, space_scale=1.0)
    assert convert(pixart, num_heads=HEADS, space_scale=1.0, base_size=8).config.base_size == 8
