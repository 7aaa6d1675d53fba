"""Common ground for every layer that replaces a BatchNorm: its affine, its source statistics,
whatever the original did after normalising, and the normalisation itself."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Per-sample statistics on inputs of at least this many values use batch_norm's inference kernel.
_BATCH_NORM_MIN_NUMEL = 1 << 16


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Batch and spatial dims of a (B, C, *spatial) tensor: what batch statistics average over."""
    return (0, *range(2, x.dim()))


def moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over ``dims`` (differentiable).

    Computed from the sums of x and x² (var = E[x²] − E[x]²): on CPU these plain reductions run
    many times faster than ``torch.var_mean``'s one-pass kernel (benchmarks/overhead.py). The form
    loses precision only when |mean| is hundreds of times the std, which BatchNorm inputs are not.
    Half-precision inputs are summed in float32 (their x² sums would overflow float16) and the
    statistics stay float32, like the layers' affine and source statistics (as autocast keeps
    BatchNorm in float32).
    """
    n = 1
    for d in dims:
        n *= x.shape[d]
    inv = 1.0 / n
    low = x.dtype in (torch.float16, torch.bfloat16)
    xs = x.float() if low else x
    mean = xs.sum(dims) * inv
    var = ((xs * xs).sum(dims) * inv - mean * mean).clamp_min(0.0)
    return mean, var


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over batch and spatial dims: (C,) each."""
    return moments(x, reduce_dims(x))


def instance_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and biased variance over spatial dims: (B, C) each."""
    return moments(x, tuple(range(2, x.dim())))


def normalize(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """y = γ·(x − μ)/sqrt(σ² + ε) + β with μ, σ² of shape (C,) or per sample (B, C).

    Without gradients this runs ``F.batch_norm``'s inference kernel, the one BatchNorm's eval
    forward uses (per-sample statistics by viewing the input as one sample of B·C channels).
    Statistics that carry gradients go through the same scale-and-shift arithmetic written out.
    """
    # Statistics of half-precision inputs are float32 (``moments``); they meet the affine in its
    # own dtype: float32 under autocast, half in a network converted with .half().
    dtype = weight.dtype if weight is not None else x.dtype
    if mean.dtype != dtype:
        mean, var = mean.to(dtype), var.to(dtype)
    if mean.dim() == 2 and mean.shape[0] == 1:  # one sample: plain per-channel statistics
        mean, var = mean[0], var[0]
    per_sample = mean.dim() == 2
    constant = not (torch.is_grad_enabled() and (mean.requires_grad or var.requires_grad))
    # Small per-sample inputs: the written-out form below beats batch_norm's fixed cost.
    if constant and (not per_sample or x.numel() >= _BATCH_NORM_MIN_NUMEL):
        if not per_sample:
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        b = x.shape[0]
        flat = x.reshape(1, -1, *x.shape[2:])
        w = weight.expand(b, -1).reshape(-1) if weight is not None else None
        bb = bias.expand(b, -1).reshape(-1) if bias is not None else None
        y = F.batch_norm(flat, mean.reshape(-1), var.reshape(-1), w, bb, False, 0.0, eps)
        return y.reshape(x.shape)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (mean.shape[0] if per_sample else 1, mean.shape[-1]) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape))


class AdaptiveNorm(nn.Module):
    """Base class of the BatchNorm replacements.

    Copies the original layer's γ, β (``None`` when ``affine=False``), ε and momentum, keeps its
    running statistics as ``source_mean`` / ``source_var`` and applies ``post`` after normalising
    (timm's BatchNormAct2d follows its affine with dropout and an activation).
    """

    needs_source_stats = True

    def __init__(self, bn: _BatchNorm, name: str = "", post: Optional[nn.Module] = None):
        super().__init__()
        self.layer_name = name
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.bn_momentum = 0.1 if bn.momentum is None else float(bn.momentum)
        if bn.affine:
            self.weight = nn.Parameter(bn.weight.detach().clone())
            self.bias = nn.Parameter(bn.bias.detach().clone())
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if bn.running_mean is None or bn.running_var is None:
            if self.needs_source_stats:
                raise ValueError(
                    f"BatchNorm layer {name or type(bn).__name__!r} has no running statistics "
                    f"(track_running_stats=False), but {type(self).__name__} needs the source "
                    "statistics; use a method that needs none (e.g. 'tbn') or a model whose "
                    "BatchNorm layers track running statistics"
                )
            self.register_buffer("source_mean", None)
            self.register_buffer("source_var", None)
        else:
            self.register_buffer("source_mean", bn.running_mean.detach().clone())
            self.register_buffer("source_var", bn.running_var.detach().clone())
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"layer {self.layer_name!r} expects input (B, {self.num_features}, ...), "
                f"got shape {tuple(x.shape)}"
            )
        y = self.adapt_and_normalize(x)
        return self.post(y) if self.post is not None else y

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return normalize(x, mean, var, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"
