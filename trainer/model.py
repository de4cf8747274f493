"""STDiT: the spatial-temporal diffusion transformer of Open-Sora 1.0, written compactly.

Sections in DiT's order: embedders, attention, block, final layer, model, position embeddings, sizes.
Parameter names follow Open-Sora 1.0 / PixArt-alpha (`x_embedder`, `t_block`, `y_embedder.y_proj.fc1`,
`blocks.N.attn_temp.qkv`, ...) so that published checkpoints map onto this model by name (see convert.py).

Shapes: B batch, C channels, T frames, H/W pixels (or latent pixels), D hidden size,
nt/nh/nw patch-grid sizes, S = nh * nw spatial tokens, N = nt * S tokens, L text tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch.utils.checkpoint import checkpoint


def approx_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


#################################################################################
#                                   Embedders                                   #
#################################################################################

class PatchEmbed3D(nn.Module):
    """(B, C, T, H, W) video -> (B, N, D) tokens; pads T/H/W up to a multiple of the patch."""

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor):
        pt, ph, pw = self.patch_size
        _, _, T, H, W = x.shape
        x = F.pad(x, (0, -W % pw, 0, -H % ph, 0, -T % pt))  # (B, C, T', H', W')
        x = self.proj(x)  # (B, D, nt, nh, nw)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D), (nt, nh, nw)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps (0..1000 scale) -> (B, D) through a sinusoid and an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos first, as GLIDE/DiT
        return F.pad(emb, (0, dim % 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.sinusoid(t, self.frequency_size).to(self.mlp[0].weight.dtype)  # (B, 256)
        return self.mlp(freq)  # (B, D)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = approx_gelu()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Text-encoder tokens (B, L, C_text) -> (B, L, D); `drop` swaps in the learned null caption (CFG)."""

    def __init__(self, caption_channels: int, hidden_size: int, token_num: int):
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.y_embedding = nn.Parameter(torch.randn(token_num, caption_channels) / caption_channels**0.5)

    def forward(self, y: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            null = self.y_embedding[: y.shape[1]].to(y.dtype)[None]  # (1, L, C_text)
            y = torch.where(drop[:, None, None], null, y)  # (B, L, C_text)
        return self.y_proj(y)  # (B, L, D)


#################################################################################
#                                   Attention                                   #
#################################################################################

class Attention(nn.Module):
    """Multi-head self-attention over the second axis of (B', n, D)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bp, n, D = x.shape
        qkv = self.qkv(x).view(Bp, n, 3, self.num_heads, D // self.num_heads)  # (B', n, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B', h, n, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B', h, n, d)
        return self.proj(x.transpose(1, 2).reshape(Bp, n, D))  # (B', n, D)


class CrossAttention(nn.Module):
    """Video tokens attend to text tokens; `mask` (B, L) is True for real (non-padding) text tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """A caption whose mask row is all zeros has no tokens to attend to: its attention output is zero,
        so the branch adds only the output projection's bias (the caption contributes nothing)."""
        B, N, D = x.shape
        h, d = self.num_heads, D // self.num_heads
        q = self.q_linear(x).view(B, N, h, d).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv_linear(y).view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)  # 2 x (B, h, L, d)
        attn_mask, empty = None, None
        if mask is not None:
            empty = ~mask.any(1)  # (B,)
            attn_mask = (mask | empty[:, None])[:, None, None, :]  # (B, 1, 1, L); no row fully masked (NaN)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d)
        if empty is not None:
            x = x.masked_fill(empty[:, None, None, None], 0.0)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


#################################################################################
#                                     Block                                     #
#################################################################################

class STDiTBlock(nn.Module):
    """Spatial attention, temporal attention, cross-attention, MLP; adaLN-single modulation and gates."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads)
        self.attn_temp = Attention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(self, x, y, t_mod, mask, nt: int, tpe=None):
        B, N, D = x.shape
        S = N // nt
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t_mod.view(B, 6, D)).chunk(6, dim=1)  # 6 x (B, 1, D)
        # spatial attention: frames are independent
        x_s = modulate(self.norm1(x), shift_msa, scale_msa).reshape(B * nt, S, D)  # (B*nt, S, D)
        x = x + gate_msa * self.attn(x_s).view(B, N, D)  # (B, N, D)
        # temporal attention: each spatial position over time (Open-Sora 1.0: no norm, same gate)
        x_t = x.view(B, nt, S, D).transpose(1, 2).reshape(B * S, nt, D)  # (B*S, nt, D)
        if tpe is not None:
            x_t = x_t + tpe  # (B*S, nt, D)
        x_t = self.attn_temp(x_t).view(B, S, nt, D).transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        x = x + gate_msa * x_t  # (B, N, D)
        # cross-attention to the caption (ungated, zero-init output projection)
        x = x + self.cross_attn(x, y, mask)  # (B, N, D)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)
        return x


#################################################################################
#                                  Final layer                                  #
#################################################################################

class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # 2 x (B, 1, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, pt*ph*pw*C_out)


#################################################################################
#                                     STDiT                                     #
#################################################################################

class STDiT(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 4, patch_size=(1, 2, 2), hidden_size: int = 1152, depth: int = 28,
                 num_heads: int = 16, mlp_ratio: float = 4.0, caption_channels: int = 4096,
                 model_max_length: int = 120, class_dropout_prob: float = 0.1, pred_sigma: bool = False,
                 space_scale: float = 1.0, time_scale: float = 1.0, base_size: int | None = None):
        super().__init__()
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads} and by 4")
        self.patch_size = tuple(patch_size)
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.gradient_checkpointing = False
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, model_max_length)
        self.blocks = nn.ModuleList([STDiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # patch embedding like a Linear
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1],
                    self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:  # zero-init where Open-Sora does: new branches start as identity
            for lin in (block.cross_attn.proj, block.attn_temp.proj):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.final_layer.linear.weight)  # zero output at init
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W); timestep (B,) on the 0..1000 scale; y (B, L, C_text) or (B, 1, L, C_text);
        mask (B, L) 1 for real text tokens (see `caption_mask`); force_drop (B,) bool: use the null caption."""
        B, _, T, H, W = x.shape
        if y.dim() == 4:
            y = y.squeeze(1)  # (B, L, C_text)
        if timestep.dim() == 0:
            timestep = timestep.expand(B)
        x, (nt, nh, nw) = self.x_embedder(x)  # (B, N, D)
        D = x.shape[-1]
        pos = spatial_pos_embed(D, nh, nw, self.config.space_scale, self.config.base_size)
        x = (x.view(B, nt, nh * nw, D) + pos.to(x))  # (B, nt, S, D)
        x = x.view(B, -1, D)  # (B, N, D)
        t = self.t_embedder(timestep)  # (B, D)
        t_mod = self.t_block(t)  # (B, 6D)
        drop = force_drop
        if drop is None and self.training:  # always in the graph while training (DDP needs every parameter)
            drop = torch.rand(B, device=x.device) < self.config.class_dropout_prob  # (B,)
        y = self.y_embedder(y, drop)  # (B, L, D)
        if mask is not None:
            mask = caption_mask(mask, B, y.shape[1])  # (B, L) bool
        tpe = temporal_pos_embed(D, nt, self.config.time_scale).to(x)[None]  # (1, nt, D)
        for i, block in enumerate(self.blocks):
            block_tpe = tpe if i == 0 else None  # Open-Sora 1.0 adds it in the first block only
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, y, t_mod, mask, nt, block_tpe, use_reentrant=False)
            else:
                x = block(x, y, t_mod, mask, nt, block_tpe)  # (B, N, D)
        x = self.final_layer(x, t)  # (B, N, pt*ph*pw*C_out)
        return self.unpatchify(x, (nt, nh, nw), (T, H, W))  # (B, C_out, T, H, W)

    def unpatchify(self, x: torch.Tensor, grid, size) -> torch.Tensor:
        B = x.shape[0]
        (nt, nh, nw), (pt, ph, pw), C = grid, self.patch_size, self.out_channels
        x = x.view(B, nt, nh, nw, pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, C, nt * pt, nh * ph, nw * pw)  # (B, C, T', H', W')
        T, H, W = size
        return x[:, :, :T, :H, :W]  # crop the patch padding

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        pt, ph, pw = self.patch_size
        return -(-frames // pt) * -(-height // ph) * -(-width // pw)


def caption_mask(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """The (B, L) bool caption mask for a batch of B captions.

    Open-Sora 1.0's sampler passes the mask of the conditional captions only (B/2 rows) with a classifier-free
    guidance batch [conditional; null]: its model repeats the rows for the null half, so the null caption is
    masked like its conditional one. A mask with B/k rows is accepted the same way; any other row count is
    refused. A row of all zeros is an empty caption (see CrossAttention)."""
    if mask.dim() == 3 and mask.shape[1] == 1:
        mask = mask.squeeze(1)  # (B, 1, L) as Open-Sora's tokenizer output
    if mask.dim() != 2 or mask.shape[1] != length:
        raise ValueError(f"caption mask of shape {tuple(mask.shape)} does not fit captions of {length} tokens")
    rows = mask.shape[0]
    if rows != batch:
        if rows == 0 or batch % rows:
            raise ValueError(f"caption mask has {rows} rows for {batch} captions: give one row per caption (or "
                             f"half as many for a classifier-free guidance batch, repeated for the null half)")
        mask = mask.repeat(batch // rows, 1)  # (B, L)
    return mask.bool()


#################################################################################
#                         Sine/cosine position embeddings                       #
#################################################################################

def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin | cos] of pos * 10000^(-2i/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def spatial_pos_embed(dim: int, nh: int, nw: int, scale: float = 1.0, base_size: int | None = None) -> torch.Tensor:
    """(nh*nw, dim), tokens row-major; the first half of the channels encodes the column, the second the row."""
    gh = torch.arange(nh, dtype=torch.float32) / scale
    gw = torch.arange(nw, dtype=torch.float32) / scale
    if base_size is not None:  # PixArt-style: the grid always spans base_size positions
        gh, gw = gh * (base_size / nh), gw * (base_size / nw)
    row, col = torch.meshgrid(gh, gw, indexing="ij")  # (nh, nw) each
    return torch.cat([sincos_1d(dim // 2, col.flatten()), sincos_1d(dim // 2, row.flatten())], dim=1)


def temporal_pos_embed(dim: int, nt: int, scale: float = 1.0) -> torch.Tensor:
    return sincos_1d(dim, torch.arange(nt, dtype=torch.float64) / scale)  # (nt, dim); float64 as Open-Sora


#################################################################################
#                                     Sizes                                     #
#################################################################################

STDIT_SIZES: dict[str, dict] = {
    "STDiT-XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=(1, 2, 2)),
    "STDiT-B/2": dict(depth=12, hidden_size=768, num_heads=12, patch_size=(1, 2, 2)),
    "STDiT-S/2": dict(depth=12, hidden_size=384, num_heads=6, patch_size=(1, 2, 2)),
    "STDiT-T/2": dict(depth=2, hidden_size=64, num_heads=4, patch_size=(1, 2, 2)),  # tests and CPU demos
}


def build_stdit(size: str | None = None, **kwargs) -> STDiT:
    """`build_stdit("STDiT-S/2", in_channels=3, caption_channels=32)`; explicit kwargs override the size."""
    if size is not None and size not in STDIT_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(STDIT_SIZES)}")
    params = dict(STDIT_SIZES.get(size, {}))
    params.update({k: v for k, v in kwargs.items() if v is not None})
    if "patch_size" in params:
        params["patch_size"] = tuple(params["patch_size"])
    return STDiT(**params)
