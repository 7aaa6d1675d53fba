"""WideResNet (Zagoruyko & Komodakis, BMVC 2016) with RobustBench's module names.

WRN-28-10 is the CIFAR source model of most test-time adaptation papers (RobustBench's
``Standard``, used by TENT, CoTTA, UnMix-TNS, ...). Module names and ``state_dict`` keys equal
RobustBench's: ``conv1``, ``block{1,2,3}.layer.{i}.{bn1,relu1,conv1,bn2,relu2,conv2,convShortcut}``,
``bn1``, ``relu``, ``fc``, so a RobustBench checkpoint loads unchanged. RobustBench ``Standard``
takes raw [0, 1] input (no normalisation).

Blocks are pre-activation. Where a block changes shape, the BN-ReLU output feeds both the residual
branch and the 1x1 ``convShortcut``; elsewhere the shortcut is the raw input. The head is BN-ReLU,
global average pooling (the 8x8 pooling of the original at 32x32 input) and a linear layer.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tta._errors import TTAError


class WideBasicBlock(nn.Module):
    """Pre-activation basic block; ``convShortcut`` is set only when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equalInOut = in_planes == out_planes and stride == 1
        self.convShortcut: Optional[nn.Conv2d] = (
            None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(activated) + out


class NetworkBlock(nn.Module):
    """A stage of ``num_blocks`` blocks held in ``self.layer`` (RobustBench's naming)."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1
                )
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: depth = 6N + 4, stage widths 16k, 32k, 64k after a 16-channel stem."""

    def __init__(
        self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10, bias_last: bool = True
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise TTAError(
                f"WideResNet depth must be 6N+4 with N >= 1 (10, 16, 22, 28, ...), got {depth}"
            )
        if widen_factor < 1:
            raise TTAError(f"widen_factor must be a positive integer, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)
        self.nChannels = widths[3]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)
