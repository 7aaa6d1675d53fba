"""Input normalisation as the first stage of a model (docs/algorithms.md §5).

Data stays in [0, 1]; the per-channel mean/std a network was trained with travel with the network as
buffers, so a checkpoint and its normalisation cannot drift apart. Putting normalisation in the
wrong place is the most common silent error in test-time adaptation code.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import nn

from tta._errors import TTAError

Stats = Optional[Union[float, Sequence[float], torch.Tensor]]

# Reference values, for convenience; pass them explicitly as ``mean=`` / ``std=``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _as_vector(name: str, value: Stats) -> Optional[torch.Tensor]:
    if value is None:
        return None
    vec = torch.as_tensor(value, dtype=torch.float32).flatten().clone()
    if vec.numel() == 0:
        raise TTAError(f"{name} is empty; give one value per channel or a single value")
    if not torch.isfinite(vec).all():
        raise TTAError(f"{name} must be finite, got {vec.tolist()}")
    return vec


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on (B, C, ...) input; the identity when no stats are set.

    ``mean`` and ``std`` are buffers (in the ``state_dict``) and are absent when the identity is
    used, so a checkpoint of an unnormalised model carries no normalisation keys.
    """

    mean: Optional[torch.Tensor]
    std: Optional[torch.Tensor]

    def __init__(self, mean: Stats = None, std: Stats = None) -> None:
        super().__init__()
        m, s = _as_vector("mean", mean), _as_vector("std", std)
        if (m is None) != (s is None):
            raise TTAError(
                "give both mean and std for input normalisation, or neither (raw [0, 1] input); "
                f"got mean={None if m is None else m.tolist()}, "
                f"std={None if s is None else s.tolist()}"
            )
        if s is not None and not (s > 0).all():
            raise TTAError(f"std must be positive, got {s.tolist()}")
        if m is not None and s is not None and m.numel() != s.numel():
            if m.numel() == 1:
                m = m.expand_as(s).clone()
            elif s.numel() == 1:
                s = s.expand_as(m).clone()
            else:
                raise TTAError(
                    f"mean has {m.numel()} values but std has {s.numel()}; give one per channel"
                )
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    @property
    def is_identity(self) -> bool:
        return self.mean is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        channels = x.shape[1] if x.dim() > 1 else 0
        if self.mean.numel() not in (1, channels):
            raise TTAError(
                f"input has {channels} channels but the normalisation has "
                f"{self.mean.numel()} values"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = self.mean.to(dtype=x.dtype).view(shape)
        std = self.std.to(dtype=x.dtype).view(shape)
        return (x - mean) / std

    def stats(self) -> tuple[Optional[list[float]], Optional[list[float]]]:
        """(mean, std) as plain lists, or (None, None) for the identity."""
        if self.mean is None or self.std is None:
            return None, None
        return self.mean.tolist(), self.std.tolist()

    def extra_repr(self) -> str:
        if self.mean is None or self.std is None:
            return "identity"
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class NormalizedModel(nn.Sequential):
    """A network that takes images in [0, 1]: ``normalize`` first, then ``model``.

    ``spec`` and ``num_classes`` record how the network was built so that checkpoints saved from
    it can be reloaded by :func:`tta.models.load_model`.
    """

    normalize: Normalize
    model: nn.Module

    def __init__(
        self,
        model: nn.Module,
        mean: Stats = None,
        std: Stats = None,
        spec: Optional[str] = None,
        num_classes: Optional[int] = None,
        arch_options: Optional[dict] = None,
    ) -> None:
        super().__init__(OrderedDict([("normalize", Normalize(mean, std)), ("model", model)]))
        self.spec = spec
        self.num_classes = num_classes
        self.arch_options = dict(arch_options or {})
