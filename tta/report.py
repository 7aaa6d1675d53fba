"""Result files a person reads at a glance: results.json, results.csv, summary.md, errors.png.

A run with ``seeds`` shows every number as mean ± sample standard deviation (ddof = 1) over its
seeds: ``±`` in summary.md, ``*_std`` columns in results.csv, error bars in errors.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tta._io import write_json, write_text
from tta._render import csv_text, md_table, number, png_figure
from tta.run_config import baseline


def short_domain(name: str) -> str:
    """'gaussian_noise-5' → 'gauss-5': column headers that fit a terminal."""
    base, sep, sev = name.rpartition("-")
    base = base if sep else name
    words = base.split("_")
    short = words[0][:5] if len(words) > 1 else base[:8]
    return f"{short}-{sev}" if sep else short


def multi_seed(results: dict[str, Any]) -> bool:
    """Whether ``results`` come from a run with ``seeds`` (numbers are means with a std)."""
    return "seeds" in results


def error_table(results: dict[str, Any]) -> str:
    """Markdown table: methods × domains (error %), then the mean and Δ mean vs source; with
    ``seeds``, each entry is mean ± std over the seeds."""
    domains = results["stream"]["domains"]
    head = ["method", *(short_domain(d) for d in domains), "mean", "Δ vs source"]
    multi = multi_seed(results)
    rows = []
    for m in results["methods"]:
        # With seeds every number carries its std over the seeds; without, there is none.
        cells = [m["label"]]
        cells += [
            number(m["errors"][d], m["errors_std"][d] if multi else None)
            if d in m["errors"]
            else "-"
            for d in domains
        ]
        cells += [
            number(m["mean_error"], m["mean_error_std"] if multi else None),
            number(m["delta_vs_source"], m["delta_vs_source_std"] if multi else None, signed=True),
        ]
        rows.append(cells)
    return "\n".join(md_table(head, rows))


def timing_table(results: dict[str, Any]) -> str:
    """Markdown table: each method's throughput and wall time."""
    rows = [
        [m["label"], f"{m['images_per_second']:.0f}", f"{m['seconds']:.1f}"]
        for m in results["methods"]
    ]
    return "\n".join(md_table(["method", "images/s", "wall time (s)"], rows))


def describe_stream(results: dict[str, Any]) -> str:
    s, st = results["config"]["stream"], results["stream"]
    ls = st["label_stats"]
    order = f"dirichlet (δ = {s['delta']})" if s["order"] == "dirichlet" else s["order"]
    if multi_seed(results):
        seeds = results["seeds"]
        seed = f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), one stream each; per seed "
    else:
        seed = f"seed {results['seed']}; "
    return (
        f"Stream: {order} order, {s['schedule']} schedule, batch size {s['batch_size']}, "
        f"{seed}{st['num_samples']} samples in {st['num_batches']} batches over "
        f"{len(st['domains'])} domains. Label correlation: "
        f"{ls['mean_distinct_labels_per_batch']:.2f} distinct labels per batch on average, "
        f"{100 * ls['consecutive_same_label_fraction']:.0f}% of consecutive samples share a label."
    )


def nonfinite_warnings(results: dict[str, Any]) -> list[str]:
    """One line per method whose logits were not all finite for some samples (counted as
    errors); none when every logit was finite."""
    lines = []
    for m in results["methods"]:
        total = m.get("nonfinite_total", 0)
        if total:
            where = ", ".join(f"{d}: {n}" for d, n in m["nonfinite"].items() if n)
            lines.append(
                f"**Warning**: {m['label']} returned non-finite logits (NaN or inf) for {total} "
                f"of {m['images']} samples ({where}); they are counted as errors."
            )
    return lines


def summary_markdown(results: dict[str, Any]) -> str:
    domains = results["stream"]["domains"]
    legend = ", ".join(f"{short_domain(d)} = {d}" for d in domains)
    warned = "".join(f"{line}\n\n" for line in nonfinite_warnings(results))
    spread = (
        " Each entry is the mean ± sample standard deviation (ddof = 1) over the "
        f"{len(results['seeds'])} seeds; Δ is taken per seed, then averaged."
        if multi_seed(results)
        else ""
    )
    return (
        f"# {results['name']}: online error (%)\n\n{describe_stream(results)}\n\n"
        f"{error_table(results)}\n\n{warned}Columns: {legend}. Δ is the method's mean error "
        f"minus the `source` baseline's on the identical stream (negative = adaptation helps)."
        f"{spread}\n\n"
        f"{timing_table(results)}\n\nVersions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + "\n"
    )


def results_csv(results: dict[str, Any]) -> str:
    """One row per method × domain; with ``seeds``, the error and Δ are means over the seeds
    with their sample std (ddof = 1) in ``error_std`` / ``delta_std``, and ``seeds`` counts them
    (each seed's numbers are in results.json, ``per_seed``)."""
    if multi_seed(results):
        return _results_csv_seeds(results)
    source = baseline(results["methods"])["errors"]
    rows = [
        [m["label"], d, f"{e:.4f}", f"{source[d]:.4f}", f"{e - source[d]:.4f}", m["samples"][d]]
        for m in results["methods"]
        for d, e in m["errors"].items()
    ]
    return csv_text(
        ["method", "domain", "error", "source_error", "delta_vs_source", "samples"], rows
    )


def _results_csv_seeds(results: dict[str, Any]) -> str:
    head = [
        "method",
        "domain",
        "error",
        "error_std",
        "source_error",
        "delta_vs_source",
        "delta_std",
        "samples",
        "seeds",
    ]
    source = baseline(results["methods"])["errors"]
    n = len(results["seeds"])
    rows = [
        [
            m["label"],
            d,
            f"{e:.4f}",
            f"{m['errors_std'][d]:.4f}",
            f"{source[d]:.4f}",
            f"{m['delta_per_domain'][d]:.4f}",
            f"{m['delta_per_domain_std'][d]:.4f}",
            m["samples"][d],
            n,
        ]
        for m in results["methods"]
        for d, e in m["errors"].items()
    ]
    return csv_text(head, rows)


def plot_errors(results: dict[str, Any], path: Path) -> None:
    """Per-domain error of every method; the source baseline is the thick dashed black line, so
    points below it are domains where adaptation helps."""
    domains = results["stream"]["domains"]
    xs = range(len(domains))
    multi = multi_seed(results)
    with png_figure(path, (max(6.0, 0.6 * len(domains) + 3), 4.2)) as ax:
        for m in results["methods"]:
            ys = [m["errors"].get(d, float("nan")) for d in domains]
            es = [m["errors_std"].get(d, float("nan")) for d in domains] if multi else None
            if m is baseline(results["methods"]):
                style = {"fmt": "k--", "lw": 2.5, "label": "source (no adaptation)", "zorder": 3}
            else:
                mean = number(m["mean_error"], m["mean_error_std"] if multi else None)
                style = {"fmt": "o-", "lw": 1.2, "ms": 4, "label": f"{m['label']} ({mean})"}
            if multi:
                ax.errorbar(xs, ys, yerr=es, capsize=2, **style)
            else:
                fmt = style.pop("fmt")
                ax.plot(xs, ys, fmt, **style)
        ax.set_xticks(list(xs), [short_domain(d) for d in domains], rotation=45, ha="right")
        ax.set_ylabel("online error (%)")
        spread = f", bars: std over {len(results['seeds'])} seeds" if multi else ""
        ax.set_title(f"{results['name']}: error per domain (mean in legend{spread})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")


def write_reports(out: Path, results: dict[str, Any]) -> None:
    """Write a finished run's four result files into ``out``."""
    write_json(out / "results.json", results)
    write_text(out / "results.csv", results_csv(results))
    write_text(out / "summary.md", summary_markdown(results))
    plot_errors(results, out / "errors.png")
