"""STDiT: the spatial-temporal diffusion transformer of Open-Sora 1.0, written compactly.

Sections in DiT's order: embedders, attention, block, final layer, model, position embeddings, sizes.
Parameter names follow Open-Sora 1.0 / PixArt-alpha (`x_embedder`, `t_block`, `y_embedder.y_proj.fc1`,
`blocks.N.attn_temp.qkv`, ...) so that published checkpoints map onto this model by name (see convert.py).

Shapes: B batch, C channels, T frames, H/W pixels (or latent pixels), D hidden size,
nt/nh/nw patch-grid sizes, S = nh * nw spatial tokens, N = nt * S tokens, L text tokens; n = N / P the tokens
of one process under sequence parallelism (P processes, trainer/parallel.py), else n = N.

`conditioning` picks how the caption reaches the blocks (Open-Sora's three structures; each a few lines below):
- `cross_attn` (Open-Sora 1.0's STDiT, the default): every block's video tokens attend to the caption tokens.
- `adaln`: DiT's adaLN-zero. The pooled caption (T5: mean over its real tokens; CLIP: its pooled output, the
  end-of-text token's state) is projected and added to the timestep embedding; each block's shift, scale and
  gate come from that sum through its own zero-initialised linear layer, so every block starts as the identity.
- `in_context`: token concatenation. The projected caption tokens are prepended to the keys and values of each
  block's spatial attention (every frame sees them, the padding masked out); their own outputs would be dropped
  before anything else reads them, so they are never computed: the final layer sees video tokens only.
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


CONDITIONINGS = ("cross_attn", "adaln", "in_context")
POOLINGS = ("mean", "last")  # T5: the mean of the real tokens; CLIP: the last real token (its pooled output)


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
        return self.y_proj(self.substitute(y, drop))  # (B, L, D)

    def substitute(self, y: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
        if drop is not None:
            null = self.y_embedding[: y.shape[1]].to(y.dtype)[None]  # (1, L, C_text)
            y = torch.where(drop[:, None, None], null, y)  # (B, L, C_text)
        return y  # (B, L, C_text)


def pool_caption(y: torch.Tensor, mask: torch.Tensor | None, how: str = "mean") -> torch.Tensor:
    """(B, L, C) text-encoder tokens -> (B, C): the mean of the real tokens (T5), or the last real one (CLIP's
    pooled output is its end-of-text token's final state, the last token its mask keeps). An empty caption
    (no real token) pools to zeros under `mean` and to its first token under `last`."""
    if mask is None:
        return y.mean(1) if how == "mean" else y[:, -1]  # (B, C)
    if how == "mean":
        m = mask.to(y.dtype)[..., None]  # (B, L, 1)
        return (y * m).sum(1) / m.sum(1).clamp(min=1)  # (B, C)
    last = (mask.long().cumsum(1).argmax(1))  # (B,) index of the last real token (0 when none)
    return y[torch.arange(y.shape[0], device=y.device), last]  # (B, C)


#################################################################################
#                                   Attention                                   #
#################################################################################

class Attention(nn.Module):
    """Multi-head self-attention within each frame (`spatial`) or each position over time (`temporal`).

    Tokens come in the model's order (frame-major). Under sequence parallelism `sp` swaps this process's tokens
    of every head for every token of its share of the heads around the attention product (Ulysses), so the
    product sees whole frames and whole time lines. `context` (B, L, D) tokens are extra keys and values of
    every frame (in-context conditioning), `context_mask` (B, L) True for the real ones."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, nt: int, axis: str = "spatial", sp=None, context=None,
                context_mask=None) -> torch.Tensor:
        B, n, D = x.shape
        h, d = self.num_heads, D // self.num_heads
        qkv = self.qkv(x).view(B, n, 3, h, d)  # (B, n, 3, h, d)
        if sp is not None:
            qkv = sp.seq_to_heads(qkv)  # (B, N, 3, h/P, d)
        N, hp = qkv.shape[1], qkv.shape[3]
        S = N // nt
        if axis == "spatial":
            qkv = qkv.reshape(B * nt, S, 3, hp, d)  # (B*nt, S, 3, h', d)
        else:
            qkv = qkv.view(B, nt, S, 3, hp, d).transpose(1, 2).reshape(B * S, nt, 3, hp, d)  # (B*S, nt, 3, h', d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B', h', m, d)
        attn_mask = None
        if context is not None:  # in-context: the caption's keys and values join every frame's
            kv = F.linear(context, self.qkv.weight[D:], self.qkv.bias[D:]).view(B, -1, 2, h, d)  # (B, L, 2, h, d)
            if sp is not None:
                kv = sp.local_heads(kv, dim=3)  # (B, L, 2, h/P, d)
            ck, cv = kv.permute(2, 0, 3, 1, 4).repeat_interleave(nt, dim=1)  # 2 x (B*nt, h', L, d)
            k, v = torch.cat([ck, k], 2), torch.cat([cv, v], 2)  # 2 x (B*nt, h', L+S, d)
            if context_mask is not None:
                keep = torch.cat([context_mask, context_mask.new_ones(B, S)], 1)  # (B, L+S)
                attn_mask = keep.repeat_interleave(nt, dim=0)[:, None, None, :]  # (B*nt, 1, 1, L+S)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B', h', m, d)
        if axis == "spatial":
            x = x.transpose(1, 2).reshape(B, N, hp, d)  # (B, N, h', d)
        else:
            x = x.view(B, S, hp, nt, d).permute(0, 3, 1, 2, 4).reshape(B, N, hp, d)  # (B, N, h', d)
        if sp is not None:
            x = sp.heads_to_seq(x)  # (B, n, h, d)
        return self.proj(x.reshape(B, n, D))  # (B, n, D)


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
    """Spatial attention, temporal attention, cross-attention, MLP; adaLN-single modulation and gates.

    `adaln`: no cross-attention; shift/scale/gate from the block's own zero-initialised linear layer of
    c = t + pooled caption (DiT's adaLN-zero). `in_context`: no cross-attention; the caption tokens are keys
    and values of the spatial attention."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, conditioning: str = "cross_attn"):
        super().__init__()
        self.conditioning = conditioning
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(hidden_size, num_heads)
        self.attn_temp = Attention(hidden_size, num_heads)
        if conditioning == "cross_attn":
            self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        if conditioning == "adaln":
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(self, x, y, t_mod, mask, nt: int, tpe=None, sp=None):
        """x (B, n, D); y (B, L, D) caption tokens; t_mod (B, 6D) (`adaln`: c (B, D)); tpe (n, D) or None."""
        B, n, D = x.shape
        if self.conditioning == "adaln":
            t_mod = self.adaLN_modulation(t_mod)  # (B, 6D)
            table = 0
        else:
            table = self.scale_shift_table[None]  # (1, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            table + t_mod.view(B, 6, D)).chunk(6, dim=1)  # 6 x (B, 1, D)
        # spatial attention: frames are independent (in_context: each frame also sees the caption tokens)
        x_s = modulate(self.norm1(x), shift_msa, scale_msa)  # (B, n, D)
        context = (y, mask) if self.conditioning == "in_context" else (None, None)
        x = x + gate_msa * self.attn(x_s, nt, "spatial", sp, *context)  # (B, n, D)
        # temporal attention: each spatial position over time (Open-Sora 1.0: no norm, same gate)
        x_t = x if tpe is None else x + tpe  # (B, n, D)
        x = x + gate_msa * self.attn_temp(x_t, nt, "temporal", sp)  # (B, n, D)
        if self.conditioning == "cross_attn":  # cross-attention to the caption (ungated, zero-init output proj.)
            x = x + self.cross_attn(x, y, mask)  # (B, n, D)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, n, D)
        return x


#################################################################################
#                                  Final layer                                  #
#################################################################################

class FinalLayer(nn.Module):
    """`adaln`: shift and scale from a zero-initialised linear layer of c (DiT's), else t plus a learned table."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int, adaln: bool = False):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        if adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "adaLN_modulation"):
            shift, scale = self.adaLN_modulation(t)[:, None].chunk(2, dim=2)  # 2 x (B, 1, D)
        else:
            shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # 2 x (B, 1, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, n, pt*ph*pw*C_out)


#################################################################################
#                                     STDiT                                     #
#################################################################################

class STDiT(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 4, patch_size=(1, 2, 2), hidden_size: int = 1152, depth: int = 28,
                 num_heads: int = 16, mlp_ratio: float = 4.0, caption_channels: int = 4096,
                 model_max_length: int = 120, class_dropout_prob: float = 0.1, pred_sigma: bool = False,
                 space_scale: float = 1.0, time_scale: float = 1.0, base_size: int | None = None,
                 conditioning: str = "cross_attn", text_pooling: str = "mean"):
        super().__init__()
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads} and by 4")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {', '.join(CONDITIONINGS)}")
        if text_pooling not in POOLINGS:
            raise ValueError(f"unknown text_pooling {text_pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.sequence_parallel = None  # set by trainer.parallel: this process's share of every sample's tokens
        self.patch_size = tuple(patch_size)
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.gradient_checkpointing = False
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        if conditioning != "adaln":  # adaln: each block has its own modulation layer
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, model_max_length)
        self.blocks = nn.ModuleList([STDiTBlock(hidden_size, num_heads, mlp_ratio, conditioning)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels,
                                      adaln=conditioning == "adaln")
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # patch embedding like a Linear
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], *([self.t_block[1]] if hasattr(self, "t_block")
                    else []), self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:  # zero-init where Open-Sora does: new branches start as identity
            for lin in (getattr(block, "cross_attn", None), block.attn_temp):
                if lin is not None:
                    nn.init.zeros_(lin.proj.weight)
                    nn.init.zeros_(lin.proj.bias)
        adaln = [b.adaLN_modulation[-1] for b in self.blocks if hasattr(b, "adaLN_modulation")]
        if hasattr(self.final_layer, "adaLN_modulation"):
            adaln.append(self.final_layer.adaLN_modulation[-1])
        for lin in adaln:  # adaLN-zero (DiT): every gate starts at 0, so every block starts as the identity
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
        D, S, sp = x.shape[-1], nh * nw, self.sequence_parallel
        pos = spatial_pos_embed(D, nh, nw, self.config.space_scale, self.config.base_size)
        x = (x.view(B, nt, S, D) + pos.to(x))  # (B, nt, S, D)
        x = x.view(B, -1, D)  # (B, N, D)
        tpe = temporal_pos_embed(D, nt, self.config.time_scale).to(x).repeat_interleave(S, 0)  # (N, D), per token
        if sp is not None:
            x, tpe = sp.split(x, dim=1), sp.split(tpe, dim=0)  # (B, n, D), (n, D): this process's tokens
        t = self.t_embedder(timestep)  # (B, D)
        if mask is not None:
            mask = caption_mask(mask, B, y.shape[1])  # (B, L) bool
        drop = force_drop
        if drop is None and self.training:  # always in the graph while training (DDP needs every parameter)
            drop = torch.rand(B, device=x.device) < self.config.class_dropout_prob  # (B,)
        if self.config.conditioning == "adaln":  # the pooled caption joins the timestep: c drives every block
            pooled = pool_caption(self.y_embedder.substitute(y, drop), mask, self.config.text_pooling)  # (B, C_text)
            t = t + self.y_embedder.y_proj(pooled)  # (B, D)
            t_mod, y = t, None  # (B, D)
        else:
            t_mod = self.t_block(t)  # (B, 6D)
            y = self.y_embedder(y, drop)  # (B, L, D)
        for i, block in enumerate(self.blocks):
            block_tpe = tpe if i == 0 else None  # Open-Sora 1.0 adds it in the first block only
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, y, t_mod, mask, nt, block_tpe, sp, use_reentrant=False)
            else:
                x = block(x, y, t_mod, mask, nt, block_tpe, sp)  # (B, n, D)
        x = self.final_layer(x, t)  # (B, n, pt*ph*pw*C_out)
        if sp is not None:
            x = sp.gather(x, dim=1)  # (B, N, pt*ph*pw*C_out)
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
