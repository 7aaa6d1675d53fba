"""Throughput of the corruptions package on CPU, and against bethgelab's ``imagecorruptions``.

Prints the wall time of every corruption at one severity (default 5) on N synthetic uint8
images of one size (the uint8 path, as ``tta corrupt`` uses it), then, at 32x32, the wall time to
generate the full set: 19 corruptions x 5 severities x N images. Images are made here; nothing is
downloaded.

    python benchmarks/corruptions.py                     # 32x32, N = 10,000 (the issue's measurement)
    python benchmarks/corruptions.py --num-images 500    # quick check
    python benchmarks/corruptions.py --size 224 --num-images 200 --compare   # the 224x224 row

``--compare`` also runs ``imagecorruptions.corrupt`` (one image per call, its only mode) on the
same images, corruptions and severity in the same process, and prints both times and the speed-up
and, for the corruptions that draw nothing at random (``DETERMINISTIC``), the largest difference
between the two uint8 outputs and the share of values that differ (this package with the
``imagenet`` table, which ``imagecorruptions`` uses at every size).
That package (v1.1.2, 2019) needs OpenCV and scikit-image, which tta does not depend on; install
them for the benchmark only, e.g. into a folder put on the path for this command alone:

    pip install --no-deps imagecorruptions   # tta's frost textures come from it already
    pip install --target /tmp/icdeps --no-deps scikit-image opencv-python-headless \\
        lazy_loader imageio tifffile "setuptools<81"
    PYTHONPATH=/tmp/icdeps python benchmarks/corruptions.py --size 224 --num-images 200 --compare

It predates numpy 2 and scikit-image 0.19, so two renamed APIs are mapped back before it runs
(``np.float_`` to ``np.float64``; ``gaussian(..., multichannel=True)`` to ``channel_axis=-1``);
nothing in its algorithms is changed. Both sides run on one thread (torch inside ``corrupt()``,
``cv2.setNumThreads`` for OpenCV).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

# This script shares its name with the package: drop its own folder from the import path so that
# ``import corruptions`` finds the package (in the repository root above) rather than this file.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import corruptions  # noqa: E402


def make_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour images with some texture, (n, size, size, 3) uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear")
    x = (0.8 * coarse + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def timed(images: np.ndarray, name: str, severity: int, seed: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    corruptions.corrupt(images, name, severity, torch.Generator().manual_seed(seed))
    return time.perf_counter() - wall, time.process_time() - cpu


def load_imagecorruptions(threads: int):
    """``imagecorruptions.corrupt`` with the two renamed numpy / scikit-image APIs mapped back."""
    warnings.filterwarnings("ignore")
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # removed in numpy 2; the package's fog uses it
    try:
        import cv2
        import imagecorruptions
        from imagecorruptions import corruptions as reference
        from skimage.filters import gaussian
    except ImportError as err:
        sys.exit(
            f"--compare needs imagecorruptions with OpenCV and scikit-image ({err}); see this "
            "script's docstring for an install that leaves tta's environment alone"
        )
    cv2.setNumThreads(threads)

    def gaussian_compat(*args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(*args, **kwargs)

    reference.gaussian = gaussian_compat
    return imagecorruptions.corrupt


#: Corruptions that draw nothing at random: their uint8 outputs are compared with the reference's.
DETERMINISTIC = (
    "defocus_blur",
    "zoom_blur",
    "gaussian_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
    "saturate",
)


def compare(images: np.ndarray, severity: int, threads: int) -> None:
    """Per-corruption wall time of both packages on the same images, in one process; for the
    deterministic corruptions also the differences of the uint8 outputs (this package with the
    ``imagenet`` table, which ``imagecorruptions`` uses at every size)."""
    reference = load_imagecorruptions(threads)
    np.random.seed(0)  # imagecorruptions draws from numpy's global generator
    n, size = len(images), images.shape[1]
    print(
        f"\n| corruption (severity {severity}, {n} images {size}x{size}) | corruptions s | "
        "imagecorruptions s | speed-up | max abs diff (uint8) | values differing |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    ours_total = theirs_total = 0.0
    for name in corruptions.names():
        ours, _ = timed(images, name, severity, 0)
        start = time.perf_counter()
        theirs_out = [reference(image, severity=severity, corruption_name=name) for image in images]
        theirs = time.perf_counter() - start
        ours_total, theirs_total = ours_total + ours, theirs_total + theirs
        diff = "random | random"
        if name in DETERMINISTIC:
            out = corruptions.corrupt(images, name, severity, params="imagenet").astype(int)
            delta = np.abs(out - np.stack(theirs_out).astype(int))
            diff = f"{delta.max()} | {100 * np.mean(delta > 0):.3g}%"
        print(f"| {name} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.1f}x | {diff} |", flush=True)
    print(
        f"| all 19 | {ours_total:.2f} | {theirs_total:.2f} | **{theirs_total / ours_total:.1f}x** "
        "| | |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-images", type=int, default=None, help="default 10,000 at 32x32, 200 otherwise"
    )
    parser.add_argument("--size", type=int, default=32, help="image side (default 32)")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--skip-full", action="store_true", help="only the per-corruption table")
    parser.add_argument(
        "--compare", action="store_true", help="also time imagecorruptions on the same images"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=corruptions.api.CPU_THREADS,
        help="torch CPU threads inside corrupt() (corruptions.api.CPU_THREADS, default 1)",
    )
    args = parser.parse_args()
    corruptions.api.CPU_THREADS = args.threads
    n = args.num_images or (10_000 if args.size == 32 else 200)

    images = make_images(n, args.size)
    table = corruptions.table_name(args.size, args.size)
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s) inside corrupt(), N = {n}, {args.size}x{args.size} "
        f"({table} parameters)"
    )
    # warm up caches (matrices, frost textures) outside the timings
    for name in corruptions.names():
        corruptions.corrupt(images[:2], name, args.severity)

    if args.compare:
        compare(images, args.severity, args.threads or 1)
        return

    print(f"\n| corruption (severity {args.severity}) | wall s | CPU s | images/s (wall) |")
    print("|---|---:|---:|---:|")
    total = total_cpu = 0.0
    for name in corruptions.names():
        t, c = timed(images, name, args.severity, 0)
        total, total_cpu = total + t, total_cpu + c
        print(f"| {name} | {t:.2f} | {c:.2f} | {n / t:,.0f} |")
    print(f"| all 19 | {total:.2f} | {total_cpu:.2f} | {19 * n / total:,.0f} |")

    if not args.skip_full and args.size == 32:
        wall, cpu = time.perf_counter(), time.process_time()
        for name in corruptions.names():
            for severity in range(1, 6):
                timed(images, name, severity, severity)
        full, full_cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"\nfull set, 19 x 5 x {n:,} images: {full:.1f} s wall, "
            f"{full_cpu:.1f} s CPU ({95 * n / full:,.0f} images/s)"
        )


if __name__ == "__main__":
    main()
