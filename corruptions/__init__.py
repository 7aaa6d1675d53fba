"""corruptions: the 15 + 4 corruptions of Hendrycks & Dietterich (ICLR 2019) at five severities,
batched in torch, on images of any size, with the parameters of the published generators:
CIFAR-10-C (32x32), Tiny-ImageNet-C (64x64) and ImageNet-C (224x224; any other size too).

    import corruptions, torch
    out = corruptions.corrupt(images, "fog", 5, generator=torch.Generator().manual_seed(1))
    out = corruptions.corrupt(images, "fog", 5, params="tiny")   # force a table

Standalone: depends only on torch, numpy and Pillow, never on ``tta``.
"""

from __future__ import annotations

from corruptions.api import GROUPS, chunk_size, corrupt, names, seed_for, table_name
from corruptions.params import PARAM_CHOICES

__all__ = ["GROUPS", "PARAM_CHOICES", "chunk_size", "corrupt", "names", "seed_for", "table_name"]
