"""``context-bn``: normalise with the statistics of designated context samples of the domain.

From "Closing the Domain Gap in Biomedical Imaging by In-Context Control Samples" (CS-ARM-BN):
when every domain comes with samples known to belong to it (control wells of a plate, reference
scans of a scanner, calibration images of a site), the statistics of those samples describe the
domain better than the batch under test, whose composition (few classes, a handful of images) can
be anything. ``adapted.set_context(x)`` passes the context images through the network once; each
layer takes the mean and biased variance of its input over them (normalising them with those
values, so deeper layers see context-normalised features, as a BatchNorm in train mode would) and
keeps them. Test batches are then normalised with the kept statistics: a sample's output depends
only on the context, never on its batch-mates, and batch size 1 works.

Use it when such samples exist per domain; otherwise ``tbn``, ``rbn`` or ``unmix-tns`` estimate
the statistics from the test stream itself. In runs, ``data.context_per_domain: N`` holds out the
first N samples of each domain as its context (not scored).
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from tta.norms.base import AdaptiveNorm, batch_stats
from tta.registry import NormMethod, register_norm


class ContextBatchNorm(AdaptiveNorm):
    """Normalise with the statistics of the last context set (``collecting`` while it is set)."""

    needs_source_stats = False

    def __init__(self, bn: _BatchNorm, name: str = "", post=None):
        super().__init__(bn, name, post)
        like = next((t for t in (bn.weight, bn.running_mean) if t is not None), None)
        kw = {"dtype": like.dtype, "device": like.device} if like is not None else {}
        self.register_buffer("context_mean", torch.zeros(self.num_features, **kw))
        self.register_buffer("context_var", torch.ones(self.num_features, **kw))
        self.collecting = False

    def adapt_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.collecting:
            if x.numel() // x.shape[1] < 2:
                raise ValueError(
                    f"context-bn layer {self.layer_name!r} needs more than one value per channel "
                    f"to take the context statistics, got input of shape {tuple(x.shape)}; give "
                    "more than one context image"
                )
            mean, var = batch_stats(x)
            self.context_mean.copy_(mean)
            self.context_var.copy_(var)
            return self.normalize(x, mean, var)
        return self.normalize(x, self.context_mean, self.context_var)


register_norm(
    NormMethod(
        name="context-bn",
        layer=ContextBatchNorm,
        description="context BN (CS-ARM-BN): statistics of designated context samples per domain",
        needs_batchnorm=True,
    )
)
