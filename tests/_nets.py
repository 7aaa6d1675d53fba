"""Small networks shared by the method tests (imported after putting tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """conv-BN-ReLU twice, global average pooling, a linear layer to 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def make_net(seed: int = 0, scale: float = 0.7, random_gamma: bool = True) -> Net:
    """A ``Net`` in float64, eval mode, every value drawn from one generator seeded ``seed``, in
    this order: every parameter (standard normal · ``scale``), then for bn1 and bn2 in turn the
    running mean (0.3 · normal), the running variance (0.5 + uniform) and, with
    ``random_gamma``, the BatchNorm weight (1 + 0.3 · normal, drawn over the earlier value)."""
    g = torch.Generator().manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for bn in (net.bn1, net.bn2):
            bn.running_mean.copy_(0.3 * torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
            if random_gamma:
                bn.weight.copy_(1.0 + 0.3 * torch.randn(bn.num_features, generator=g))
    return net.double().eval()
