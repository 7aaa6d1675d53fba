"""Result files a person reads at a glance: results.json, results.csv, summary.md, errors.png.

A run with ``seeds`` shows every number as mean ± sample standard deviation (ddof = 1) over its
seeds: ``±`` in summary.md, ``*_std`` columns in results.csv, error bars in errors.png.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from tta._io import write_json, write_text
from tta._render import csv_text, md_table, number, png_figure
from tta.evaluation.results import RunResult


def short_domain(name: str) -> str:
    """'gaussian_noise-5' → 'gauss-5': column headers that fit a terminal."""
    base, sep, sev = name.rpartition("-")
    base = base if sep else name
    words = base.split("_")
    short = words[0][:5] if len(words) > 1 else base[:8]
    return f"{short}-{sev}" if sep else short


Results = Union[RunResult, Mapping[str, Any]]


def _typed(results: Results) -> RunResult:
    return results if isinstance(results, RunResult) else RunResult.from_dict(results)


def error_table(results: Results) -> str:
    """Markdown table: methods × domains (error %), then the mean and Δ mean vs source; with
    ``seeds``, each entry is mean ± std over the seeds."""
    r = _typed(results)
    domains = r.result.stream["domains"]
    head = ["method", *(short_domain(d) for d in domains), "mean", "Δ vs source"]
    rows = []
    for m in r.methods:
        # With seeds every number carries its std over the seeds (the *_std fields); without,
        # those are None and numbers show alone.
        stds = m.errors_std or {}
        cells = [m.label]
        cells += [number(m.errors[d], stds.get(d)) if d in m.errors else "-" for d in domains]
        cells += [
            number(m.mean_error, m.mean_error_std),
            number(m.delta_vs_source, m.delta_vs_source_std, signed=True),
        ]
        rows.append(cells)
    return "\n".join(md_table(head, rows))


def timing_table(results: Results) -> str:
    """Markdown table: each method's throughput and wall time."""
    rows = []
    for m in _typed(results).methods:
        ips = m.images_per_second  # None when no time was measured
        rows.append([m.label, "-" if ips is None else f"{ips:.0f}", f"{m.seconds:.1f}"])
    return "\n".join(md_table(["method", "images/s", "wall time (s)"], rows))


def describe_stream(results: Results) -> str:
    r = _typed(results)
    s, st = r.config["stream"], r.result.stream
    ls = st["label_stats"]
    order = f"dirichlet (δ = {s['delta']})" if s["order"] == "dirichlet" else s["order"]
    if r.over_seeds:
        seed = f"{len(r.seeds)} seeds ({', '.join(map(str, r.seeds))}), one stream each; per seed "
    else:
        seed = f"seed {r.seed}; "
    return (
        f"Stream: {order} order, {s['schedule']} schedule, batch size {s['batch_size']}, "
        f"{seed}{st['num_samples']} samples in {st['num_batches']} batches over "
        f"{len(st['domains'])} domains. Label correlation: "
        f"{ls['mean_distinct_labels_per_batch']:.2f} distinct labels per batch on average, "
        f"{100 * ls['consecutive_same_label_fraction']:.0f}% of consecutive samples share a label."
    )


def nonfinite_warnings(results: Results) -> list[str]:
    """One line per method whose logits were not all finite for some samples (counted as
    errors); none when every logit was finite."""
    lines = []
    for m in _typed(results).methods:
        if m.nonfinite_total:
            where = ", ".join(f"{d}: {n}" for d, n in m.nonfinite.items() if n)
            lines.append(
                f"**Warning**: {m.label} returned non-finite logits (NaN or inf) for "
                f"{m.nonfinite_total} of {m.images} samples ({where}); they are counted as errors."
            )
    return lines


def summary_markdown(results: Results) -> str:
    r = _typed(results)
    legend = ", ".join(f"{short_domain(d)} = {d}" for d in r.result.stream["domains"])
    warned = "".join(f"{line}\n\n" for line in nonfinite_warnings(r))
    spread = (
        " Each entry is the mean ± sample standard deviation (ddof = 1) over the "
        f"{len(r.seeds)} seeds; Δ is taken per seed, then averaged."
        if r.over_seeds
        else ""
    )
    return (
        f"# {r.name}: online error (%)\n\n{describe_stream(r)}\n\n"
        f"{error_table(r)}\n\n{warned}Columns: {legend}. Δ is the method's mean error "
        f"minus the `source` baseline's on the identical stream (negative = adaptation helps)."
        f"{spread}\n\n"
        f"{timing_table(r)}\n\nVersions: "
        + ", ".join(f"{k} {v}" for k, v in r.versions.items())
        + "\n"
    )


def results_csv(results: Results) -> str:
    """One row per method × domain; with ``seeds``, the error and Δ are means over the seeds
    with their sample std (ddof = 1) in ``error_std`` / ``delta_std``, and ``seeds`` counts them
    (each seed's numbers are in results.json, ``per_seed``)."""
    r = _typed(results)
    source = r.source.errors
    if not r.over_seeds:
        head = ["method", "domain", "error", "source_error", "delta_vs_source", "samples"]
        rows = [
            [m.label, d, f"{e:.4f}", f"{source[d]:.4f}", f"{e - source[d]:.4f}", m.samples[d]]
            for m in r.methods
            for d, e in m.errors.items()
        ]
        return csv_text(head, rows)
    head = ["method", "domain", "error", "error_std", "source_error", "delta_vs_source"]
    head += ["delta_std", "samples", "seeds"]
    rows = [
        [
            m.label,
            d,
            f"{e:.4f}",
            f"{m.errors_std[d]:.4f}",
            f"{source[d]:.4f}",
            f"{m.delta_per_domain[d]:.4f}",
            f"{m.delta_per_domain_std[d]:.4f}",
            m.samples[d],
            len(r.seeds),
        ]
        for m in r.methods
        for d, e in m.errors.items()
    ]
    return csv_text(head, rows)


def plot_errors(results: Results, path: Path) -> None:
    """Per-domain error of every method; the source baseline is the thick dashed black line, so
    points below it are domains where adaptation helps."""
    r = _typed(results)
    domains = r.result.stream["domains"]
    xs = range(len(domains))
    multi = r.over_seeds
    with png_figure(path, (max(6.0, 0.6 * len(domains) + 3), 4.2)) as ax:
        for m in r.methods:
            ys = [m.errors.get(d, float("nan")) for d in domains]
            if m is r.source:
                style = {"fmt": "k--", "lw": 2.5, "label": "source (no adaptation)", "zorder": 3}
            else:
                mean = number(m.mean_error, m.mean_error_std)
                style = {"fmt": "o-", "lw": 1.2, "ms": 4, "label": f"{m.label} ({mean})"}
            if multi:
                es = [m.errors_std.get(d, float("nan")) for d in domains]
                ax.errorbar(xs, ys, yerr=es, capsize=2, **style)
            else:
                fmt = style.pop("fmt")
                ax.plot(xs, ys, fmt, **style)
        ax.set_xticks(list(xs), [short_domain(d) for d in domains], rotation=45, ha="right")
        ax.set_ylabel("online error (%)")
        spread = f", bars: std over {len(r.seeds)} seeds" if multi else ""
        ax.set_title(f"{r.name}: error per domain (mean in legend{spread})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")


def write_reports(out: Path, results: Results) -> None:
    """Write a finished run's four result files into ``out``."""
    r = _typed(results)
    write_json(out / "results.json", r.as_dict())
    write_text(out / "results.csv", results_csv(r))
    write_text(out / "summary.md", summary_markdown(r))
    plot_errors(r, out / "errors.png")
