"""ImageNet-C-style runs: the per-method path against one pass, with and without decoding workers.

    python benchmarks/imagenet_c_stream.py [--images 2000] [--model resnet18|tiny]
        [--e2e-images N] [--workers 2] [--batch-size 64]

Writes a synthetic folder in the ImageNet-C layout to a temporary directory (2 corruptions x
severity 5 x ``--images`` JPEGs of 224 x 224, 10 classes; smooth random colour fields with
noise, JPEG quality 85 as the release), then measures, each in a fresh process:

- decoding throughput: every batch of the stream read with the default ImageNet-C view
  (resize 256, centre crop 224) in-process and with ``--workers`` processes;
- a run of 8 methods (source, tbn, alpha-bn, rbn, unmix-tns, tent, eta, lame) on a network with
  random weights: the per-method path runs had before (every method reads the whole stream
  again, in-process), one pass (``tta.evaluate``, ``data.workers: 0``) and one pass with
  ``--workers`` decoding processes. The numbers of the three are compared (they must be equal).

``--model tiny`` stands in for a GPU, on which the network takes a small fraction of the time
decoding takes; ``resnet18`` on a CPU is bound by the network instead. Peak RSS is the main
process's, plus the largest worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tta.data.loader import default_workers  # noqa: E402

CORRUPTIONS = ["gaussian_noise", "fog"]
CLASSES = 10
METHODS = ["tbn", "alpha-bn", "rbn", "unmix-tns", "tent", "eta", "lame"]  # and source


def write_folder(root: Path, images: int, seed: int = 0) -> None:
    """``images`` JPEGs per corruption, 224 x 224, spread over ``CLASSES`` wnid folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    per_class = -(-images // CLASSES)
    for c in CORRUPTIONS:
        written = 0
        for k in range(CLASSES):
            folder = root / c / "5" / f"n{k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(min(per_class, images - written)):
                field = rng.uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
                smooth = nn.functional.interpolate(
                    torch.from_numpy(field), size=(224, 224), mode="bilinear"
                )[0].permute(1, 2, 0)
                x = smooth.numpy() + rng.normal(0, 25, (224, 224, 3))
                name = f"ILSVRC2012_val_{k * per_class + i:08d}.JPEG"
                Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(folder / name, quality=85)
                written += 1


class TinyNet(nn.Module):
    """A cheap network for 224 x 224 inputs (two strided convolutions with BN, a classifier)."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 7, stride=4, padding=3),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=4, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def network(kind: str) -> nn.Module:
    import tta

    if kind == "tiny":
        return TinyNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tta.load_model("torchvision:resnet18", seed=0)


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest child process."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def domains(root: Path, images: int):
    from tta.data import ImageNetC
    from tta.evaluation import SubsetDomain, subset_rows

    out = ImageNetC(root, corruptions=CORRUPTIONS, severities=[5])
    return [SubsetDomain(d, subset_rows(len(d), images, 0)) for d in out]


def measure_decode(root: Path, workers: int, batch: int, images: int) -> dict:
    from tta.data import make_stream
    from tta.data.loader import read_batches

    stream = make_stream(domains(root, images), "iid", 0.1, "reset_each_shift", batch, 0)
    start = time.perf_counter()
    n = 0
    with read_batches(stream.segments(), workers) as batches:
        for b in batches:
            n += len(b.y)
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_second": n / seconds}


def config(root: Path, out: Path, workers: int, batch: int, images: int) -> dict:
    return {
        "name": "bench",
        "output": str(out),
        "device": "cpu",
        "data": {
            "source": "imagenet-c",
            "root": str(root),
            "corruptions": CORRUPTIONS,
            "num_samples": images,
            "workers": workers,
        },
        "stream": {"order": "iid", "schedule": "reset_each_shift", "batch_size": batch},
        "methods": METHODS,
    }


def measure_old_path(root: Path, kind: str, batch: int, images: int) -> dict:
    """What ``evaluate`` did before one pass: for each method and segment, a fresh copy that
    reads its segment itself."""
    from tta.config import method_entries
    from tta.data import make_stream
    from tta.evaluation import run_unit
    from tta.methods.base import RunContext

    model = network(kind)
    stream = make_stream(domains(root, images), "iid", 0.1, "reset_each_shift", batch, 0)
    context = RunContext(seed=0, batch_size=batch, device=torch.device("cpu"), num_classes=1000)
    names = stream.domain_names
    start = time.perf_counter()
    errors = {}
    for spec in method_entries(METHODS):
        wrong, seen = np.zeros(len(names)), np.zeros(len(names))
        for segment in stream.segments():
            adapted = spec.adapt(model, context)
            unit = run_unit(adapted, segment, len(names), torch.device("cpu"), spec.label)
            wrong += unit["wrong"]
            seen += unit["seen"]
        errors[spec.label] = {n: 100.0 * w / c for n, w, c in zip(names, wrong, seen)}
    return {"seconds": time.perf_counter() - start, "errors": errors}


def measure_one_pass(root: Path, kind: str, workers: int, batch: int, images: int) -> dict:
    import tta

    model = network(kind)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        res = tta.evaluate(config(root, Path(tmp) / "run", workers, batch, images), model=model)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "errors": {m["label"]: m["errors"] for m in res["methods"]}}


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    root = Path(args.root)
    if args.what == "decode":
        out = measure_decode(root, args.workers, args.batch_size, args.images)
    elif args.what == "old":
        out = measure_old_path(root, args.model, args.batch_size, args.e2e_images)
    else:
        out = measure_one_pass(root, args.model, args.workers, args.batch_size, args.e2e_images)
    own, workers = peak_rss_mb()
    print(json.dumps({**out, "rss_mb": own, "worker_rss_mb": workers}))


def run_child(args: argparse.Namespace, root: Path, what: str, workers: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--root", str(root)]
    cmd += ["--workers", str(workers), "--batch-size", str(args.batch_size)]
    cmd += ["--images", str(args.images), "--e2e-images", str(args.e2e_images)]
    cmd += ["--model", args.model]
    cmd += [] if args.threads is None else ["--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs per corruption")
    parser.add_argument(
        "--e2e-images",
        type=int,
        default=None,
        help="images per corruption in the timed runs (default: all)",
    )
    parser.add_argument("--model", choices=("resnet18", "tiny"), default="resnet18")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the decoding comparison (0: none)"
    )
    parser.add_argument("--skip-runs", action="store_true", help="only the decoding comparison")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default torch's)",
    )
    parser.add_argument("--keep", type=str, default=None, help="folder for the images (kept)")
    parser.add_argument("--child", choices=("decode", "old", "one"), default=None)
    parser.add_argument("--root", type=str, default=None)
    args = parser.parse_args()
    args.e2e_images = args.e2e_images or args.images
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        args.what = args.child
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp) / "imagenet-c"
        if not root.is_dir():
            start = time.perf_counter()
            write_folder(root, args.images)
            print(f"wrote {2 * args.images} JPEGs in {time.perf_counter() - start:.0f} s")
        print(
            f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}), torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads)"
        )
        if args.rounds > 0:
            # Alternate the two readers over several rounds: other jobs on the machine change its
            # speed from minute to minute, and a ratio within one round is what compares them.
            rounds = [
                (run_child(args, root, "decode", 0), run_child(args, root, "decode", args.workers))
                for _ in range(args.rounds)
            ]
            ratios = [w["images_per_second"] / i["images_per_second"] for i, w in rounds]
            print(
                f"\n| reading 2 x {args.images} JPEGs (resize 256, crop 224), {args.rounds} rounds "
                "| images/s (median) | peak RSS |"
            )
            print("|---|---|---|")
            dec0 = [i for i, _ in rounds]
            decw = [w for _, w in rounds]
            med = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
            print(
                f"| in-process | {med(dec0, 'images_per_second'):.0f} | {med(dec0, 'rss_mb'):.0f} MB |"
            )
            print(
                f"| {args.workers} workers | {med(decw, 'images_per_second'):.0f} "
                f"({float(np.median(ratios)):.2f}x; rounds: "
                f"{', '.join(f'{r:.2f}x' for r in ratios)}) | {med(decw, 'rss_mb'):.0f} MB + "
                f"{med(decw, 'worker_rss_mb'):.0f} MB per worker |"
            )
        if args.skip_runs:
            return
        old = run_child(args, root, "old", 0)
        one = run_child(args, root, "one", 0)
        pooled = run_child(args, root, "one", args.workers)
        rows = [("per method (before)", old), ("one pass", one)]
        rows.append((f"one pass + {args.workers} workers", pooled))
        default = default_workers()
        if default not in (0, args.workers):
            fallback = run_child(args, root, "one", default)
            plural = "s" if default != 1 else ""
            rows.append((f"one pass + {default} worker{plural} (the default here)", fallback))
        same = all(r["errors"] == old["errors"] for _, r in rows)
        print(
            f"\n| 8 methods, {args.model}, 2 x {args.e2e_images} images, batch "
            f"{args.batch_size} | seconds | speed-up | peak RSS |"
        )
        print("|---|---|---|---|")
        for label, r in rows:
            print(
                f"| {label} | {r['seconds']:.1f} | {old['seconds'] / r['seconds']:.2f}x | "
                f"{r['rss_mb']:.0f} MB |"
            )
        print(f"\nsame numbers on every path: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
