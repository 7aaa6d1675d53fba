"""``unmix-tns``: Un-Mixing Test-Time Normalization Statistics (Tomar et al., ICLR 2024).

Each layer keeps K statistics components. Every sample is normalised with its own mixture of the
components and its instance statistics, weighted by how close its instance mean is to each
component, so its output does not depend on its batch-mates; the components then move towards the
instance statistics assigned to them. Follows the official code, with which the paper agrees.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from tta._errors import TTAError
from tta.norms.base import AdaptiveNorm, instance_stats
from tta.options import Option, at_least_one, in_range, positive
from tta.registry import NormMethod, register_norm

if TYPE_CHECKING:
    from tta.methods.base import RunContext


INITS = ("random", "centered")


def initial_components(
    mean: torch.Tensor,
    var: torch.Tensor,
    k: int,
    spread: float,
    generator: torch.Generator,
    init: str = "random",
) -> tuple[torch.Tensor, torch.Tensor]:
    """μ_k = μ_s + sqrt(a0·K/(K−1))·σ_s·ε_k, σ²_k = (1−a0)·σ²_s; K = 1 keeps the source stats.

    ``init="random"`` (the paper's and the official code's): ε_k ~ N(0, 1) i.i.d. per (k, c), so
    the equal-weight mixture of the components has mean μ_s and variance σ²_s only in
    expectation; each layer gets a random bias of its own.

    ``init="centered"``: the same draw, re-centred and rescaled per channel over the K
    components, ε ← (ε − mean_k ε) / std_k(ε) with the unbiased std (ddof = 1), so that
    Σ_k ε_k = 0 and Σ_k ε_k² = K − 1. Then exactly, in every layer and channel:

        mean_k μ_k = μ_s,
        (1/K)·Σ_k σ²_k + (1/K)·Σ_k (μ_k − μ_s)² = (1−a0)·σ²_s + a0·K/(K−1)·σ²_s·(K−1)/K = σ²_s,

    i.e. the equal-weight mixture of the initial components has exactly the source mean and
    variance (the second term is the biased variance over k of the component means), and a clean
    input starts close to source BN. Noise is drawn on the CPU (float32), so the same seed gives
    the same components on every device; centring is done in float64.
    """
    if init not in INITS:
        raise TTAError(f"unmix-tns option 'init' must be one of {list(INITS)}, got {init!r}")
    if k == 1:
        return mean[None].clone(), var[None].clone()
    noise = torch.randn(k, mean.shape[0], generator=generator, dtype=torch.float32)
    if init == "centered":
        noise = noise.double()
        noise = noise - noise.mean(0, keepdim=True)
        noise = noise / noise.std(0, unbiased=True, keepdim=True)
    noise = noise.to(device=mean.device, dtype=mean.dtype)
    means = mean + math.sqrt(spread * k / (k - 1)) * var.sqrt() * noise
    return means, ((1.0 - spread) * var).expand(k, -1).clone()


class UnMixTNS(AdaptiveNorm):
    """Per-sample mixture normalisation with K online-updated components."""

    def __init__(
        self,
        bn: _BatchNorm,
        name: str = "",
        post=None,
        num_components: int = 16,
        temperature: float = 0.07,
        init_spread: float = 0.5,
        batch_size: Optional[int] = None,
        max_batch_size: int = 64,
        generator: Optional[torch.Generator] = None,
        init: str = "random",
    ):
        super().__init__(bn, name, post)
        self.temperature = float(temperature)
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        means, variances = initial_components(
            self.source_mean, self.source_var, num_components, init_spread, generator, init
        )
        # One (K, 2C) buffer [μ_k | σ²_k]: one product serves both halves in every step below.
        self.register_buffer("components", torch.cat([means, variances], dim=1))

    @property
    def component_mean(self) -> torch.Tensor:
        """μ_k, shape (K, C) (a view of ``components``)."""
        return self.components[:, : self.num_features]

    @property
    def component_var(self) -> torch.Tensor:
        """σ²_k, shape (K, C) (a view of ``components``)."""
        return self.components[:, self.num_features :]

    @property
    def num_components(self) -> int:
        return self.components.shape[0]

    def update_rate(self, batch: int) -> float:
        """λ = 1 − (1 − m)^(B / B_max), B the stream's batch size (the input's when not given)."""
        b = self.batch_size or batch
        return 1.0 - (1.0 - self.bn_momentum) ** (b / self.max_batch_size)

    def assignments(self, inst_mean: torch.Tensor) -> torch.Tensor:
        """p_bk = softmax_k(cosine(μ̃_b, μ_k) / τ), shape (B, K); no gradient."""
        sim = F.normalize(inst_mean, dim=1) @ F.normalize(self.component_mean, dim=1).T
        return torch.softmax(sim / self.temperature, dim=1)

    def mixture_stats(
        self, inst_mean: torch.Tensor, inst_var: torch.Tensor, p: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the equal-weight mixture of μ̂_bk = (1−p)μ_k + p·μ̃_b (and σ̂²).

        Written with (B, K) × (K, C) products instead of a (B, K, C) tensor:
        mean_k μ̂ = ((1−p)·μ_K + μ̃)/K since Σ_k p = 1, and
        mean_k μ̂² = ((1−p)²·μ_K² + μ̃⊙(2p(1−p)·μ_K + Σ_k p²·μ̃))/K.
        Only μ̃ and σ̃² carry gradients; the component terms are constants (``p`` has none).
        """
        c, k = self.num_features, p.shape[1]
        q = 1.0 - p
        mu = self.component_mean
        base = q @ self.components  # [Σ(1−p)μ_k | Σ(1−p)σ²_k]
        square = (q * q) @ (mu * mu)
        cross = (2.0 * p * q) @ mu
        pp = (p * p).sum(1, keepdim=True)
        mean = (base[:, :c] + inst_mean) / k
        second = torch.addcmul(square, inst_mean, torch.addcmul(cross, pp, inst_mean))
        var = (base[:, c:] + inst_var + second) / k
        return mean, torch.addcmul(var, mean, mean, value=-1.0)

    @torch.no_grad()
    def update_components(
        self, inst_mean: torch.Tensor, inst_var: torch.Tensor, p: torch.Tensor
    ) -> None:
        """μ_k += λ·mean_b p_bk(μ̃_b − μ_k), σ²_k likewise (divided by B, not by Σ_b p_bk).

        Done as components·(1 − λ·Σ_b p_bk/B) + (λ/B)·pᵀ·[μ̃ | σ̃²], the same update rearranged.
        """
        w = p.T * (self.update_rate(p.shape[0]) / p.shape[0])  # (K, B)
        keep = 1.0 - w.sum(1, keepdim=True)
        self.components.mul_(keep).addmm_(w, torch.cat([inst_mean, inst_var], dim=1))

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (B, C): no positions to take instance statistics over (as official)
            return self.normalize(x, self.source_mean, self.source_var)
        # Statistics in float32 also under autocast (bf16/fp16 runs): the components are float32
        # state, and a half-precision matmul would round their update.
        with torch.autocast(x.device.type, enabled=False):
            # moments() returns float32 for half inputs; a .half() network keeps half components
            dtype = self.components.dtype
            inst_mean, inst_var = (s.to(dtype) for s in instance_stats(x))
            with torch.no_grad():
                p = self.assignments(inst_mean)
            mean, var = self.mixture_stats(inst_mean, inst_var, p)
            self.update_components(inst_mean.detach(), inst_var.detach(), p)
        return self.normalize(x, mean, var)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_components={self.num_components}"


def _prepare(options: dict[str, Any], context: RunContext) -> dict[str, Any]:
    """One seeded generator per wrapped model; layers draw from it in module order. Unset
    ``seed`` and ``batch_size`` come from the run context (its seed, the stream's batch size)."""
    seed = options.pop("seed")
    seed = context.seed if seed is None else seed
    if options["batch_size"] is None:
        options["batch_size"] = context.batch_size
    return {**options, "generator": torch.Generator().manual_seed(seed)}


register_norm(
    NormMethod(
        name="unmix-tns",
        layer=UnMixTNS,
        description="UnMix-TNS: per-sample mixture of K online statistics components",
        options={
            "num_components": Option(16, int, "K, statistics components per layer", at_least_one),
            "temperature": Option(0.07, float, "softmax temperature τ of the assignment", positive),
            "init_spread": Option(
                0.5, float, "a0, spread of the initial components", in_range(0, 1)
            ),
            "init": Option(
                "random",
                str,
                "initial components: random (the paper's draw) or centered (the mixture has "
                "exactly the source mean and variance)",
                choices=INITS,
            ),
            "batch_size": Option(
                None,
                int,
                "stream batch size B in λ (default: the run's, else each input's)",
                at_least_one,
                True,
            ),
            "max_batch_size": Option(64, int, "B_max in λ (16 for ImageNet)", at_least_one),
            "seed": Option(
                None, int, "seed of the initial components (default: the run's, 0)", nullable=True
            ),
        },
        prepare=_prepare,
    )
)
