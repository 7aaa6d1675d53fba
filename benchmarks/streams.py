"""Throughput and memory of a mixed, Dirichlet-ordered CIFAR-10-C stream (no model).

Writes a CIFAR-10-C-layout folder of random uint8 images (default full size: 15 corruptions x
50,000 images, about 2.3 GB) into a temporary directory, then iterates a mixed stream of the
severity-5 domains (15 x 10,000 images) ordered by Dirichlet(delta) over the pooled labels and cut
into batches, forming every float batch. Reports images per second and peak resident memory.

    python benchmarks/streams.py                   # full size, warm page cache
    python benchmarks/streams.py --cold            # drop the files from the page cache first
    python benchmarks/streams.py --n 5000          # small folder for a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from tta.data import CIFARC, CORRUPTIONS, make_stream


def _rss_mb(field: str = "VmRSS") -> float:
    """Current resident memory (MB) from /proc/self/status; RssFile counts mapped file pages."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def write_folder(root: str, n: int, corruptions: list[str], seed: int, chunk: int = 2000) -> None:
    """Random CIFAR-C-layout files, written in chunks so the writer's memory stays small."""
    rng = np.random.default_rng(seed)
    labels = np.tile(rng.integers(0, 10, n // 5, dtype=np.uint8), 5)
    _write_npy(os.path.join(root, "labels.npy"), labels.shape, [labels])
    for c in corruptions:
        shape = (n, 32, 32, 3)
        blocks = (
            np.frombuffer(rng.bytes(min(chunk, n - i) * 3072), np.uint8) for i in range(0, n, chunk)
        )
        _write_npy(os.path.join(root, f"{c}.npy"), shape, blocks)


def _write_npy(path: str, shape: tuple[int, ...], blocks) -> None:
    """Stream blocks of uint8 into an .npy file under a temporary name, then rename it."""
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for block in blocks:
            f.write(np.ascontiguousarray(block).tobytes())
    os.replace(tmp, path)


def drop_cache(root: str) -> None:
    """Ask the kernel to evict the folder's files from the page cache (a cold read)."""
    for name in os.listdir(root):
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50000, help="images per corruption file (5 severities)")
    p.add_argument("--corruptions", type=int, default=15, help="how many corruptions (1..15)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="existing or new folder to use instead of a temporary one")
    p.add_argument("--cold", action="store_true", help="evict the files from the page cache first")
    args = p.parse_args()
    if args.n % 5 or args.n <= 0:
        p.error(f"--n must be a positive multiple of 5, got {args.n}")
    corruptions = list(CORRUPTIONS[: args.corruptions])

    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.mkdtemp(prefix="tta-streams-")
        root = tmp
    try:
        if not all(os.path.exists(os.path.join(root, f"{c}.npy")) for c in corruptions):
            os.makedirs(root, exist_ok=True)
            t = time.perf_counter()
            write_folder(root, args.n, corruptions, args.seed)
            print(f"wrote {len(corruptions)} x {args.n} images in {time.perf_counter() - t:.1f} s")
        if args.cold:
            drop_cache(root)
        rss_start = _rss_mb()

        t = time.perf_counter()
        domains = CIFARC(root, corruptions, severities=[5])
        stream = make_stream(domains, "dirichlet", args.delta, "mixed", args.batch_size, args.seed)
        t_build = time.perf_counter() - t
        stats = stream.label_stats()

        t = time.perf_counter()
        images = 0
        for batch in stream:
            images += batch.x.shape[0]
        t_iter = time.perf_counter() - t

        print(f"stream: {len(domains)} domains, {images} images, {stream.num_batches} batches")
        print(
            f"label stats: {stats['mean_distinct_labels_per_batch']:.2f} distinct labels/batch, "
            f"{stats['consecutive_same_label_fraction']:.3f} consecutive same-label fraction"
        )
        print(f"build (read labels, Dirichlet order): {t_build:.2f} s")
        print(f"iterate: {t_iter:.2f} s = {images / t_iter:,.0f} images/s")
        print(
            f"RSS: {rss_start:.0f} MB before, {_rss_mb():.0f} MB after "
            f"({_rss_mb('RssFile'):.0f} MB of it mapped file pages); peak {_peak_rss_mb():.0f} MB"
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
