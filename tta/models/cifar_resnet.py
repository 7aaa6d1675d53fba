"""Pre-activation CIFAR ResNets: ResNet-26 of the TTT (Sun et al., ICML 2020) and TENT
(Wang et al., ICLR 2021) papers, and the small ResNet-8 / ResNet-20 of the same family.

Architecture (He et al., "Identity Mappings in Deep Residual Networks", CIFAR variant): a 3x3
convolution to 16 channels, three stages of N pre-activation basic blocks (BN-ReLU-conv3x3 twice)
with 16·w, 32·w and 64·w channels (w the width factor; stages 2 and 3 halve the resolution), a
final BN-ReLU, global average pooling and a linear classifier; depth = 6N + 2 (N = 4 gives 26).
A shortcut that changes shape is parameter-free: 2x2 average pooling followed by zero channels,
as in the TTT release. Parameter names follow that release (``conv1``, ``layer1.0.bn1``, ...,
``bn``, ``fc``), so its BatchNorm checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tta._errors import TTAError


class ZeroPadShortcut(nn.Module):
    """Shortcut without parameters: average-pool by ``stride``, then append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise TTAError(f"cannot shrink {in_channels} to {out_channels} channels")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, added to the (possibly downsampled) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        reshape = stride != 1 or in_channels != out_channels
        self.downsample = ZeroPadShortcut(in_channels, out_channels, stride) if reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + out


class CifarResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs; ``depth`` = 6N + 2, ``width`` multiplies 16/32/64."""

    def __init__(
        self, depth: int = 26, num_classes: int = 10, width: int = 1, in_channels: int = 3
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise TTAError(
                f"CIFAR ResNet depth must be 6N+2 with N >= 1 (8, 14, 20, 26, ...), got {depth}"
            )
        if width < 1:
            raise TTAError(f"width must be a positive integer, got {width}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        channels = 16
        stages = []
        for index, (planes, stride) in enumerate(
            ((16 * width, 1), (32 * width, 2), (64 * width, 2))
        ):
            layers = []
            for b in range(blocks):
                layers.append(PreActBlock(channels, planes, stride if b == 0 else 1))
                channels = planes
            stages.append((f"layer{index + 1}", nn.Sequential(*layers)))
        for name, stage in stages:
            self.add_module(name, stage)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He initialisation with fan-out, the usual choice for these networks.
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        # Global average pooling; equal to the 8x8 average pooling of the papers at 32x32 input.
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)
