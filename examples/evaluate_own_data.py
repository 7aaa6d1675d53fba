"""Your own images, labels and network, from arrays to a scored table of every method.

Copy this file and replace ``my_data()`` and ``MyNet`` by yours. What tta needs:

- images as a uint8 numpy array (N, H, W) grey or (N, H, W, 3) RGB, or float (N, C, H, W) in
  [0, 1]; labels as integers 0..K-1, one per image;
- a ``torch.nn.Module`` with BatchNorm layers that takes [0, 1] images (put any normalisation
  inside it) and returns logits (B, K). Its first convolution decides the channels: grey images
  are repeated to RGB for a 3-channel model, RGB is turned into grey for a 1-channel one.

Run:  python examples/evaluate_own_data.py            (writes runs/own-data-iid, -dirichlet)
      python examples/evaluate_own_data.py --small    (a quick check, as CI runs it)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import corruptions
import tta
from tta.data import ArrayDomain, make_stream


def my_data(n: int, size: int = 32, classes: int = 4, seed: int = 0):
    """Stand-in for your data: grey (N, H, W) uint8 images of four textures, with labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    patterns = [np.sin(8 * xx), np.sin(8 * yy), np.sin(8 * (xx + yy)), np.sin(8 * (xx - yy))]
    images = np.stack([patterns[k] for k in labels]) * 0.4 + 0.5
    images = images + rng.normal(0, 0.05, images.shape)
    return (images.clip(0, 1) * 255).astype(np.uint8), labels


class MyNet(nn.Module):
    """Stand-in for your network: a small CNN on one-channel images."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def train(net: nn.Module, images: np.ndarray, labels: np.ndarray, steps: int) -> nn.Module:
    """A few steps of plain training, so that the source model is worth adapting."""
    torch.manual_seed(0)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="few images and methods (CI)")
    parser.add_argument("--out", default="runs/own-data", help="output folder prefix")
    args = parser.parse_args()
    n = 96 if args.small else 1000

    train_x, train_y = my_data(2000, seed=1)
    net = train(MyNet(), train_x, train_y, steps=30 if args.small else 300)

    # The test domains: your images as they are, and shifted copies of them.
    test_x, test_y = my_data(n, seed=2)
    gen = torch.Generator().manual_seed(0)
    domains = [ArrayDomain(test_x, test_y, "clean")]
    for name in ("gaussian_noise", "contrast"):
        shifted = corruptions.corrupt(test_x, name, 5, generator=gen)  # RGB uint8 out
        domains.append(ArrayDomain(shifted, test_y, f"{name}-5"))

    methods = ["tbn", "unmix-tns", "tent", "note"]
    if not args.small:
        methods += ["alpha-bn", "rbn", "iabn", "core", "eta", "sar", "deyo", "lame"]
        methods += ["rotta", "roid", {"name": "tent", "norm": "unmix-tns"}]
    for order in ("iid", "dirichlet"):
        config = {
            "name": f"own-data-{order}",
            "output": f"{args.out}-{order}",
            "stream": {"order": order, "schedule": "continual", "batch_size": 32},
            "methods": methods,
        }
        results = tta.evaluate(config, model=net, domains=domains, force=True)
        print(f"\n{order} stream: online error (%) per domain")
        for m in results["methods"]:
            row = ", ".join(f"{d} {e:.1f}" for d, e in m["errors"].items())
            print(f"  {m['label']:>16}: {row} (mean {m['mean_error']:.1f})")

    # A hand-written loop gets the same counting from tta.score.
    stream = make_stream(domains, order="dirichlet", schedule="continual", batch_size=32)
    print("\ntent by hand, Dirichlet stream:", tta.score(tta.adapt(net, "tent"), stream))


if __name__ == "__main__":
    main()
