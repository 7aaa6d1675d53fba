"""GPU check in one go: the CUDA tests, then images/s of every method on standard networks.

    python benchmarks/gpu_check.py [--batches 10] [--skip-tests]

1. ``pytest -m cuda tests/test_cuda.py``: every method on CUDA equals the CPU to 1e-4 in fp32,
   reset and state round trips on CUDA, no host sync in the scoring loop
   (``torch.cuda.set_sync_debug_mode("error")``).
2. Images/s per method (random weights, random inputs already on the GPU, so the number is the
   method's own speed): WRN-28-10 at 32 x 32 with batches of 64 and 200, ResNet-50 at 224 x 224
   with batches of 64, each in fp32 and bf16 (autocast, as ``precision: bf16`` runs).

Takes under 5 minutes on a current GPU. Without CUDA it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import torch  # noqa: E402

import tta  # noqa: E402
from tta.evaluation import autocast  # noqa: E402
from tta.methods.base import RunContext  # noqa: E402
from tta.registry import METHODS, NORMS  # noqa: E402

#: (label, model spec, classes, image size, batch size)
NETWORKS = [
    ("WRN-28-10", "wrn28_10", 10, 32, 64),
    ("WRN-28-10", "wrn28_10", 10, 32, 200),
    ("ResNet-50", "torchvision:resnet50", 1000, 224, 64),
]


def built_in_methods() -> list[str]:
    """Every method tta ships, but context-bn (it needs context images per domain)."""
    names = [n for n, m in NORMS.items() if m.layer.__module__.startswith("tta.")]
    names += [n for n, c in METHODS.items() if c.__module__.startswith("tta.")]
    return [n for n in names if n != "context-bn"]


def images_per_second(
    model: torch.nn.Module, method: str, size: int, batch: int, precision: str, batches: int
) -> float:
    """Adapt on ``batches`` random batches (after two warm-up ones) and time them on the GPU."""
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    xs = [
        torch.rand(batch, 3, size, size, generator=gen, device=device) for _ in range(batches + 2)
    ]
    context = RunContext(
        seed=0, batch_size=batch, device=device, num_classes=None, source_images=xs[0][:32]
    )
    adapted = tta.adapt(model, method, context).to(device)
    with autocast(device, precision):
        for x in xs[:2]:
            adapted(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    with autocast(device, precision):
        for x in xs[2:]:
            adapted(x)
    end.record()
    end.synchronize()
    return batch * batches / (start.elapsed_time(end) / 1000.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--skip-tests", action="store_true", help="only the throughput table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; nothing to check (skipped).")
        return 0
    began = time.perf_counter()
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    status = 0
    if not args.skip_tests:
        root = os.path.dirname(_here)
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], cwd=root
        )
        print(f"pytest -m cuda: {'passed' if status == 0 else f'FAILED (status {status})'}")
    torch.backends.cudnn.benchmark = True
    methods = built_in_methods()
    print("\nimages/s per method (random weights and inputs on the GPU)")
    for name, spec, classes, size, batch in NETWORKS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: expected here
            model = tta.load_model(spec, num_classes=classes)
        for precision in ("fp32", "bf16"):
            cells = []
            for method in methods:
                try:
                    speed = images_per_second(model, method, size, batch, precision, args.batches)
                    cells.append(f"{method} {speed:,.0f}")
                except Exception as err:  # report and go on: one method must not hide the rest
                    cells.append(f"{method} FAILED ({type(err).__name__}: {str(err)[:80]})")
                torch.cuda.empty_cache()
            print(f"{name} {size}px batch {batch} {precision}: " + " | ".join(cells))
    print(f"\ngpu_check took {time.perf_counter() - began:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
