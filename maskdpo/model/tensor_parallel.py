"""Megatron-style tensor parallelism, applied from outside to plain model modules.

The model code (maskdpo.model.llama) knows nothing of ranks. `parallelize` walks a built module (a
pipeline stage) and swaps, in place and under the same parameter names:
  q, k, v, gate, up     -> ShardedLinear, COLUMN  (output rows split; q, k and v biases with them)
  o, down               -> ShardedLinear, ROW     (input columns split; output all-reduced)
  the attention and MLP inputs -> copied into the tensor region: identity forward, and in backward
                           one all-reduce of the input's gradient per block (q, k and v, or gate and
                           up, each hold part of it; autograd sums those parts on the rank first), as
                           Megatron's and torchtitan's column-parallel inputs do: per layer 2
                           all-reduces forward (o, down) and 2 backward, not 5
  the embedding         -> VocabParallelEmbedding (vocabulary rows split; output all-reduced)
  the LM head's weight  -> its vocabulary shard   (the fused head exchanges per-row statistics with
                           vocab_shard=, never logits; it all-reduces the hidden states' gradient)
  norms                 -> unchanged, replicated  (their gradients agree on every rank)
  the q and k norms     -> RegionNorm, replicated (Qwen3: one weight shared by every head, each rank
                           applying it to its own heads: its gradient is summed over the group, one
                           all-reduce each in backward, so every rank steps with the whole gradient)
Which rows and columns a rank holds is maskdpo.model.shards' rule (tensor_split sizes, no padding).
Each sharded parameter carries `tensor_model_parallel = True` (DeepSpeed then counts it once per
rank in the gradient norm, and replicated ones once) and `tp_slice = (dim, start, stop)` within the
full tensor (what the checkpoint loader reads and the HF export gathers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .llama import Attention, DecoderLayer, Embedding, RMSNorm, rms_norm
from .shards import COLUMN, ROW, VOCAB, shard_slice, splits


@dataclass(frozen=True)
class TensorParallel:
    group: object
    """The torch.distributed group of this rank's tensor-parallel peers."""
    rank: int
    """This rank's index in the group."""
    size: int
    """T, the number of tensor-parallel ranks."""


class _CopyToRegion(torch.autograd.Function):
    """Identity forward; the backward sums the input's gradient over the group (each rank's shard
    of the next layer contributes part of it)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromRegion(torch.autograd.Function):
    """All-reduce forward (each rank holds a partial sum); identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _shard_parameter(owner: nn.Module, weight: torch.Tensor, split: str, tp: TensorParallel) -> nn.Parameter:
    """This rank's shard of `weight` (real or meta) as a new parameter; `owner` (the module that will
    hold it as .weight) remembers where the shard sits, so that the marks survive a re-creation of
    the parameter (to_empty from the meta device makes new ones: mark_shards again)."""
    owner.tp_slice = shard_slice(split, tuple(weight.shape), tp.size, tp.rank)
    dim, start, stop = owner.tp_slice
    shard = nn.Parameter(weight.detach().narrow(dim, start, stop - start).clone(), requires_grad=weight.requires_grad)
    _mark(shard, owner.tp_slice)
    return shard


def _mark(param: nn.Parameter, where: tuple[int, int, int]) -> None:
    param.tensor_model_parallel = True  # DeepSpeed: a model-parallel parameter (norms, gradient clipping)
    param.partition_dim = where[0]
    param.tp_slice = where


def mark_shards(module: nn.Module) -> None:
    """Put the shard marks back on every sharded parameter of `module` (after to_empty)."""
    for sub in module.modules():
        where = getattr(sub, "tp_slice", None)
        if where is not None:
            _mark(sub.weight, where)
            if getattr(sub, "bias", None) is not None:
                _mark(sub.bias, (0, where[1], where[2]))


class ShardedLinear(nn.Module):
    """This rank's shard of a linear layer. split=COLUMN: output rows [start, stop), and the bias's
    same rows if there is one; the input's gradient is summed over the group here, or, with
    reduce_input_grad=False, once for every layer that reads the same input by whoever copied it
    into the region (copy_to_region); split=ROW: input columns [start, stop), the output summed over
    the group (each rank holds a partial sum; no bias, which would be added T times)."""

    def __init__(self, linear: nn.Linear, tp: TensorParallel, split: str, reduce_input_grad: bool = True):
        super().__init__()
        if split not in (COLUMN, ROW):
            raise ValueError(f"ShardedLinear: split must be {COLUMN!r} or {ROW!r}; got {split!r}")
        if split == ROW and linear.bias is not None:
            raise ValueError("ShardedLinear: a row-parallel layer with a bias is not implemented")
        self.split = split
        self.reduce_input_grad = reduce_input_grad and split == COLUMN
        self.weight = _shard_parameter(self, linear.weight, split, tp)
        self.bias = None
        if linear.bias is not None:
            _, start, stop = self.tp_slice
            self.bias = nn.Parameter(linear.bias.detach()[start:stop].clone(), requires_grad=linear.bias.requires_grad)
            _mark(self.bias, (0, start, stop))
        self.group = tp.group

    def forward(self, x):
        if self.split == COLUMN:
            return F.linear(_CopyToRegion.apply(x, self.group) if self.reduce_input_grad else x, self.weight, self.bias)
        return _ReduceFromRegion.apply(F.linear(x, self.weight), self.group)


class RegionNorm(nn.Module):
    """A replicated RMSNorm applied inside the tensor region to this rank's heads only (Qwen3's q and k
    norms): forward as the norm; backward, its weight's gradient (this rank's heads' part) summed
    over the group, so that it equals the whole model's on every rank."""

    def __init__(self, norm: RMSNorm, tp: TensorParallel):
        super().__init__()
        self.weight, self.eps, self.group = norm.weight, norm.eps, tp.group

    def forward(self, x):
        return rms_norm(x, _CopyToRegion.apply(self.weight, self.group), self.eps)


def copy_to_region(block: nn.Module, tp: TensorParallel) -> None:
    """The first input of `block` (the attention or MLP, whose column-parallel projections all read
    it) enters the tensor region: its gradient is all-reduced once, after autograd has summed what
    every projection of this rank contributes. A forward pre-hook, so the model code stays plain."""
    group = tp.group

    def enter(module, args):
        return (_CopyToRegion.apply(args[0], group), *args[1:])

    block.register_forward_pre_hook(enter)


class VocabParallelEmbedding(nn.Module):
    """Rows [start, stop) of the embedding; ids outside them give 0 here and their row on the rank
    that holds it, and the all-reduce sums the one non-zero contribution."""

    def __init__(self, embedding: nn.Embedding, tp: TensorParallel):
        super().__init__()
        self.weight = _shard_parameter(self, embedding.weight, VOCAB, tp)
        _, self.start, self.stop = self.tp_slice
        self.group = tp.group

    def forward(self, ids):
        outside = (ids < self.start) | (ids >= self.stop)
        local = torch.where(outside, 0, ids - self.start)
        out = F.embedding(local, self.weight).masked_fill(outside[..., None], 0.0)
        return _ReduceFromRegion.apply(out, self.group)


def _parallelize_layer(layer: DecoderLayer, tp: TensorParallel) -> None:
    """Every linear layer split as the family's table says (shards.layer_tensors: its weight's split;
    a bias goes with the rows); the two blocks' inputs copied into the region; the q/k norms, which
    sit inside it, summed in backward."""
    split = splits(layer.architecture)
    for name, linear in [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]:
        kind = split[f"{name}.weight"]
        if linear.bias is not None and split.get(f"{name}.bias") != kind:
            raise ValueError(f"{name}.bias: the table splits it {split.get(f'{name}.bias')!r}, the weight {kind!r}")
        owner, attr = layer.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
        setattr(owner, attr, ShardedLinear(linear, tp, kind, reduce_input_grad=False))  # copy_to_region's
    attn: Attention = layer.self_attn
    attn.heads //= tp.size  # whole heads per rank (shards.check_tensor_parallel)
    attn.kv_heads //= tp.size
    if attn.q_norm is not None:
        attn.q_norm, attn.k_norm = RegionNorm(attn.q_norm, tp), RegionNorm(attn.k_norm, tp)
    copy_to_region(attn, tp)
    copy_to_region(layer.mlp, tp)


def parallelize(module: nn.Module, tp: TensorParallel) -> None:
    """Shard every decoder layer, embedding and LM head inside `module` for this rank (in place)."""
    if tp.size == 1:
        return
    for sub in list(module.modules()):
        if isinstance(sub, DecoderLayer):
            _parallelize_layer(sub, tp)
        elif isinstance(sub, Embedding):
            sub.embed_tokens = VocabParallelEmbedding(sub.embed_tokens, tp)
        elif getattr(sub, "vocab_parallel_head", False):  # the pipeline's LM head (LMHeadPipe)
            sub.lm_head.weight = _shard_parameter(sub.lm_head, sub.lm_head.weight, VOCAB, tp)


def gather_full(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """The whole tensor from every rank's shard of it (`tensor.tp_slice`), on every rank; a replicated
    tensor is returned as it is. Uneven shards are padded to the largest for the all-gather."""
    where = getattr(tensor, "tp_slice", None)
    if where is None or tp.size == 1:
        return tensor
    dim = where[0]
    sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(tp.size)]
    dist.all_gather(sizes, torch.tensor([tensor.shape[dim]], device=tensor.device), group=tp.group)
    sizes = [int(s) for s in sizes]
    local = tensor.detach().contiguous()
    if local.shape[dim] < max(sizes):
        pad = list(local.shape)
        pad[dim] = max(sizes) - local.shape[dim]
        local = torch.cat([local, local.new_zeros(pad)], dim)
    parts = [torch.empty_like(local) for _ in range(tp.size)]
    dist.all_gather(parts, local, group=tp.group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim)
