"""Sequence parallelism (DeepSpeed-Ulysses) over torch.distributed: the P processes of a group share every
sample's tokens.

Each process of a group gets the same samples (same noise, timesteps and caption dropout: train.py draws them
per clip) and keeps the n = N / P tokens of its rank after the patch embedding. Everything per token (the
projections, MLPs, modulations, the cross-attention to the caption, which every process holds whole) runs on
those. Around each spatial and temporal attention product one all-to-all swaps "my tokens, every head" for "every
token, my heads": the product then sees whole frames and whole time lines, for h / P heads (so P must divide the
heads). The final layer's output is gathered to the whole sequence, and every process computes the same loss.

Gradients: a process's backward reaches only its own tokens' share of each parameter's gradient (the all-to-alls'
backward is the reverse all-to-all, exact). The gather's backward scales its slice of the gradient by P, so that
DDP's mean over all W = D x P processes is the mean over the D data-parallel groups of their full-sequence
gradient: what D processes without sequence parallelism compute.

Groups are consecutive ranks ([0, P), [P, 2P), ...); data parallelism runs across them (`data_rank`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllToAll(torch.autograd.Function):
    """Split `x` along `scatter` into P pieces, send piece j to rank j, concatenate what arrives along `gather`."""

    @staticmethod
    def forward(ctx, x, group, scatter: int, gather: int):
        ctx.group, ctx.scatter, ctx.gather = group, scatter, gather
        P = dist.get_world_size(group)
        pieces = [p.contiguous() for p in x.chunk(P, dim=scatter)]
        received = [torch.empty_like(p) for p in pieces]
        dist.all_to_all(received, pieces, group=group)
        return torch.cat(received, dim=gather)

    @staticmethod
    def backward(ctx, grad):
        return _AllToAll.apply(grad, ctx.group, ctx.gather, ctx.scatter), None, None, None


class _Gather(torch.autograd.Function):
    """Concatenate every rank's `x` along `dim`; backward: this rank's slice of the gradient times P (see above)."""

    @staticmethod
    def forward(ctx, x, group, dim: int):
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        P, r = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(P, dim=ctx.dim)[r] * P, None, None


class SequenceShards:
    """What the model calls (`STDiT.sequence_parallel`): split, gather, and the all-to-alls around attention."""

    def __init__(self, group, size: int, rank: int):
        self.group, self.size, self.rank = group, size, rank

    def split(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if x.shape[dim] % self.size:
            raise ValueError(f"{x.shape[dim]} tokens per sample do not split over train.sequence_parallel="
                             f"{self.size} processes: choose buckets whose token count it divides")
        return x.chunk(self.size, dim=dim)[self.rank]  # backward: zeros elsewhere (the other ranks hold those)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return _Gather.apply(x, self.group, dim)

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, 3, h, d) -> (B, N, 3, h/P, d)."""
        return _AllToAll.apply(x, self.group, 3, 1)

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, h/P, d) -> (B, n, h, d)."""
        return _AllToAll.apply(x, self.group, 1, 2)

    def local_heads(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.chunk(self.size, dim=dim)[self.rank]


def check_degree(degree: int, world: int, heads: int) -> str | None:
    """The one-line reason this sequence-parallel degree cannot run, or None."""
    if heads % degree:
        return f"train.sequence_parallel: {degree} processes must divide model.num_heads {heads}"
    if world % degree:
        return (f"train.sequence_parallel: {degree} must divide the number of processes ({world}); the processes "
                "left over train other samples")
    return None


def enable(model, degree: int) -> tuple[int, int]:
    """Shard `model`'s tokens over groups of `degree` consecutive ranks of the default process group; returns
    (data-parallel rank, data-parallel world) for the sampler: the processes of a group read the same batches."""
    if degree == 1:
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for start in range(0, world, degree):  # every process creates every group, in the same order
        group = dist.new_group(list(range(start, start + degree)))
        if start <= rank < start + degree:
            mine = group
    model.sequence_parallel = SequenceShards(mine, degree, rank % degree)
    return rank // degree, world // degree
