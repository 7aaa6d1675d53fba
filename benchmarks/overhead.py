"""Time per batch of every method relative to plain ``model.eval()`` inference.

All methods (and the plain model) run interleaved in one process, round-robin batch by batch, so
machine noise hits each of them alike; the table reports the median time per batch divided by the
plain model's median. Default network: WRN-16-4 at 32×32 (CIFAR-style).

    python benchmarks/overhead.py                 # batch sizes 64 and 1
    python benchmarks/overhead.py --repeats 30 --batch-sizes 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import tta
from tta.models.wide_resnet import WideResNet
from tta.norms import UnMixTNS

STATS_METHODS = ["source", "tbn", "alpha-bn", "rbn", "unmix-tns", "iabn", "context-bn"]
GRADIENT_METHODS = [
    "tent",
    "core",
    "eta",
    "eata",
    "sar",
    "deyo",
    "lame",
    "note",
    "rotta",
    "roid",
    "cotta",
]
# Filters that keep every sample: the cost of a batch on which every sample updates (the same
# batch repeats, so ETA's redundancy filter would otherwise drop it after the first round, and
# this random network is not confident enough for the default entropy margins).
_ALL_RELIABLE = {"entropy_margin": 1.0}
WORST_CASE = {
    "eta": {**_ALL_RELIABLE, "d_margin": 1.0},
    "eata": {**_ALL_RELIABLE, "d_margin": 1.0},
    "sar": _ALL_RELIABLE,
    "deyo": {**_ALL_RELIABLE, "plpd_threshold": -1.0},
    # CoTTA averages its 32 augmented views whenever the source model's confidence is below
    # ap; ap = 1 makes that every batch. NOTE and RoTTA update every 64 samples: at batch 64
    # every batch pays one update.
    "cotta": {"ap": 1.0},
}


def network(seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = WideResNet(depth=16, widen_factor=4, num_classes=10)
    for m in net.modules():  # non-trivial source statistics, as a trained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    with torch.no_grad():  # confident predictions, so entropy filters keep samples as on a
        net.fc.weight.mul_(30.0)  # trained network (EATA, SAR, DeYO update only on those)
    return net.eval()


def measure(batch_size: int, repeats: int, methods: list[str]) -> dict[str, float]:
    net = network()
    x = torch.rand(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def plain(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(inp)

    runners = {"plain": plain}
    source = torch.rand(batch_size * 2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    context = tta.RunContext(batch_size=batch_size, source_images=source)
    for name in methods:
        runners[name] = tta.adapt(net, name, context, **WORST_CASE.get(name, {}))
        if runners[name].uses_context:  # context-bn: statistics of 2·B context images, once
            runners[name].set_context(source)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats + 3):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            if r >= 3:  # warm-up rounds are not counted
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    return {"plain_ms": base * 1e3, **{n: statistics.median(times[n]) / base for n in methods}}


class NaiveMixture(UnMixTNS):
    """UnMix-TNS with the mixture statistics computed as written in docs/algorithms.md §1 steps 3-4, through
    (B, K, C) tensors (as the official code does), for comparison with our (B, K) x (K, C) form."""

    def mixture_stats(self, inst_mean, inst_var, p):
        pk = p[:, :, None]
        mu_hat = (1 - pk) * self.component_mean[None] + pk * inst_mean[:, None]
        var_hat = (1 - pk) * self.component_var[None] + pk * inst_var[:, None]
        mean = mu_hat.mean(1)
        return mean, var_hat.mean(1) + (mu_hat * mu_hat).mean(1) - mean * mean


def compare_mixture(batch_size: int, k: int, repeats: int) -> float:
    """Time per batch of the naive (B, K, C) UnMix-TNS divided by ours, interleaved."""
    net = network()
    ours = tta.adapt(net, "unmix-tns", num_components=k, batch_size=batch_size)
    naive = copy.deepcopy(ours)
    for layer in naive.model.modules():
        if isinstance(layer, UnMixTNS):
            layer.__class__ = NaiveMixture
    x = torch.rand(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"ours": [], "naive": []}
    for r in range(repeats + 3):
        for name, run in (("ours", ours), ("naive", naive)):
            start = time.perf_counter()
            run(x)
            if r >= 3:
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["naive"]) / statistics.median(times["ours"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, WRN-16-4 at 32x32")
    print("| batch | plain ms/batch | " + " | ".join(STATS_METHODS + GRADIENT_METHODS) + " |")
    print("|---" * (2 + len(STATS_METHODS) + len(GRADIENT_METHODS)) + "|")
    for bs in args.batch_sizes:
        methods = STATS_METHODS + (GRADIENT_METHODS if bs > 1 else [])
        res = measure(bs, args.repeats, methods)
        cells = [f"{res[m]:.2f}x" if m in res else "-" for m in STATS_METHODS + GRADIENT_METHODS]
        print(f"| {bs} | {res['plain_ms']:.1f} | " + " | ".join(cells) + " |")
    print("\nUnMix-TNS, (B, K, C) form of the reference code vs ours (time ratio, >1: ours faster)")
    print("| batch | K | naive / ours |\n|---|---|---|")
    for bs in args.batch_sizes:
        for k in (16, 128):
            print(f"| {bs} | {k} | {compare_mixture(bs, k, args.repeats):.2f}x |")


if __name__ == "__main__":
    main()
