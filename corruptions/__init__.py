"""corruptions: the 15 + 4 CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019) at five
severities, batched in torch with the 32x32 parameters of the published generator.

    import corruptions, torch
    out = corruptions.corrupt(images, "fog", 5, generator=torch.Generator().manual_seed(1))

Standalone: depends only on torch, numpy and Pillow, never on ``tta``.
"""

from __future__ import annotations

from corruptions.api import GROUPS, corrupt, names, seed_for

__all__ = ["GROUPS", "corrupt", "names", "seed_for"]
