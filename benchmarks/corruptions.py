"""Throughput of the corruptions package on CPU.

Prints images/s for every corruption at one severity (default 5) on N synthetic 32x32 uint8
images, then the wall time to generate the full set: 19 corruptions x 5 severities x N images
(the uint8 path, as ``tta corrupt`` uses it). Images are made here; nothing is downloaded.

    python benchmarks/corruptions.py                     # N = 10,000 (the issue's measurement)
    python benchmarks/corruptions.py --num-images 500    # quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

# This script shares its name with the package: drop its own folder from the import path so that
# ``import corruptions`` finds the package (in the repository root above) rather than this file.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import corruptions  # noqa: E402


def make_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour images with some texture, (n, 32, 32, 3) uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear")
    x = (0.8 * coarse + 0.2 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def timed(images: np.ndarray, name: str, severity: int, seed: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    corruptions.corrupt(images, name, severity, torch.Generator().manual_seed(seed))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--skip-full", action="store_true", help="only the per-corruption table")
    parser.add_argument(
        "--threads",
        type=int,
        default=corruptions.api.CPU_THREADS,
        help="torch CPU threads inside corrupt() (corruptions.api.CPU_THREADS, default 1)",
    )
    args = parser.parse_args()
    corruptions.api.CPU_THREADS = args.threads

    images = make_images(args.num_images)
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s) inside corrupt(), N = {args.num_images}"
    )
    # warm up caches (matrices, frost textures) outside the timings
    for name in corruptions.names():
        corruptions.corrupt(images[:2], name, args.severity)

    print(f"\n| corruption (severity {args.severity}) | wall s | CPU s | images/s (wall) |")
    print("|---|---:|---:|---:|")
    total = total_cpu = 0.0
    for name in corruptions.names():
        t, c = timed(images, name, args.severity, 0)
        total, total_cpu = total + t, total_cpu + c
        print(f"| {name} | {t:.2f} | {c:.2f} | {args.num_images / t:,.0f} |")
    print(f"| all 19 | {total:.2f} | {total_cpu:.2f} | {19 * args.num_images / total:,.0f} |")

    if not args.skip_full:
        wall, cpu = time.perf_counter(), time.process_time()
        for name in corruptions.names():
            for severity in range(1, 6):
                timed(images, name, severity, severity)
        full, full_cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"\nfull set, 19 x 5 x {args.num_images:,} images: {full:.1f} s wall, "
            f"{full_cpu:.1f} s CPU ({95 * args.num_images / full:,.0f} images/s)"
        )


if __name__ == "__main__":
    main()
