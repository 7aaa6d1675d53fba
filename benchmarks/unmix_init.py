"""UnMix-TNS initialisation study: init random (the paper's) vs centered, K ∈ {1, 4, 16}.

On the demo's source model (resnet8 trained on the MNIST-5k training digits, cached like
``tta demo``), over several seeds, on three streams of the held-out digits, all continual with
batch 64:

- i.i.d.: the demo's corruptions at severity 5 (its digits per domain), i.i.d. order;
- Dirichlet: the same domains, Dirichlet (δ = 0.1) label-correlated order;
- clean: the same held-out digits, uncorrupted, i.i.d. order.

A seed sets the corruption noise, the stream order, the subset of digits (with --num-samples) and
UnMix-TNS's initial draw, exactly as a run config's ``seed`` does; every row of one seed sees the
identical stream. Prints a Markdown table of mean online error (mean over domains), mean ± sample
std (ddof = 1) over the seeds, with ``source`` for reference. K = 1 is the same for both inits
(one component at the source statistics), so it runs once.

    python benchmarks/unmix_init.py                      # the README table
    python benchmarks/unmix_init.py --seeds 0 1 --num-samples 200  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# benchmarks/corruptions.py would shadow the `corruptions` package when run as a script.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tta  # noqa: E402
from tta.data import ArrayDomain, make_stream  # noqa: E402
from tta.demo import DEMO_CORRUPTIONS, DEMO_NUM_SAMPLES, source_model  # noqa: E402
from tta.evaluation import corrupted_domains, run_unit, subset_rows  # noqa: E402
from tta.methods.base import RunContext  # noqa: E402
from tta.models.data import mnist5k  # noqa: E402

STREAMS = ("iid", "dirichlet", "clean")
TITLES = {"iid": "i.i.d.", "dirichlet": "Dirichlet", "clean": "clean"}


def streams_for(seed: int, images: np.ndarray, labels: np.ndarray, n: int | None):
    if n:
        rows = subset_rows(len(labels), n, seed)
        images, labels = images[rows], labels[rows]
    corrupted = corrupted_domains(images, labels, DEMO_CORRUPTIONS, [5], seed)
    clean = [ArrayDomain(images, labels, "clean")]
    return {
        "iid": make_stream(corrupted, "iid", 0.1, "continual", 64, seed),
        "dirichlet": make_stream(corrupted, "dirichlet", 0.1, "continual", 64, seed),
        "clean": make_stream(clean, "iid", 0.1, "continual", 64, seed),
    }


def mean_error(model, method: str, seed: int, stream, **options) -> float:
    context = RunContext(seed=seed, batch_size=64)
    adapted = tta.adapt(model, method, context, **options)
    names = stream.domain_names
    wrong = np.zeros(len(names))
    seen = np.zeros(len(names))
    for segment in stream.segments():
        unit = run_unit(adapted, segment, len(names), torch.device("cpu"), method)
        wrong += unit["wrong"]
        seen += unit["seen"]
    return float(np.mean(100.0 * wrong / seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument(
        "--num-samples",
        type=int,
        default=DEMO_NUM_SAMPLES,
        help=f"digits per domain, of 1,000 (default {DEMO_NUM_SAMPLES}, as the demo)",
    )
    parser.add_argument("--epochs", type=int, default=6, help="source model epochs (as the demo)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = tta.load_model(checkpoint=str(source_model(args.epochs)))
    _, _, images, labels = mnist5k()
    rows = [("source", None, {})]
    for k in args.ks:
        inits = ("random",) if k == 1 else ("random", "centered")
        for init in inits:
            rows.append((f"{init}" if k > 1 else "either", k, {"init": init, "num_components": k}))
    results: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for seed in args.seeds:
        streams = streams_for(seed, images, labels, args.num_samples)
        for name, k, options in rows:
            key = name if k is None else f"{name} K={k}"
            method = "source" if k is None else "unmix-tns"
            for s in STREAMS:
                err = mean_error(model, method, seed, streams[s], **options)
                results.setdefault(key, {}).setdefault(s, []).append(err)
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)

    def cell(v: list[float]) -> str:
        std = np.std(v, ddof=1) if len(v) > 1 else 0.0
        return f"{np.mean(v):.1f} ± {std:.1f}"

    n = args.num_samples or 1000
    print(
        f"\nMean online error (%), mean ± std (ddof = 1) over {len(args.seeds)} seeds "
        f"({', '.join(map(str, args.seeds))}); {n} digits per domain, batch 64, continual; "
        f"{time.perf_counter() - start:.0f} s\n"
    )
    print("| init | K | " + " | ".join(TITLES[s] for s in STREAMS) + " |")
    print("|---|---|" + "---|" * len(STREAMS))
    for key, by_stream in results.items():
        init, _, k = key.partition(" K=")
        print(f"| {init} | {k or '–'} | " + " | ".join(cell(by_stream[s]) for s in STREAMS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "num_samples": n, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
