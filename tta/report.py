"""Result files a person reads at a glance: results.json, results.csv, summary.md, errors.png."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tta._io import atomic_write, write_json, write_text


def short_domain(name: str) -> str:
    """'gaussian_noise-5' → 'gauss-5': column headers that fit a terminal."""
    base, sep, sev = name.rpartition("-")
    base = base if sep else name
    words = base.split("_")
    short = words[0][:5] if len(words) > 1 else base[:8]
    return f"{short}-{sev}" if sep else short


def _fmt(value: float, signed: bool = False) -> str:
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def error_table(results: dict[str, Any]) -> str:
    """Markdown table: methods × domains (error %), then the mean and Δ mean vs source."""
    domains = results["stream"]["domains"]
    head = ["method", *(short_domain(d) for d in domains), "mean", "Δ vs source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in results["methods"]:
        cells = [m["label"], *(_fmt(m["errors"][d]) if d in m["errors"] else "-" for d in domains)]
        cells += [_fmt(m["mean_error"]), _fmt(m["delta_vs_source"], signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(results: dict[str, Any]) -> str:
    lines = ["| method | images/s | wall time (s) |", "|---|---|---|"]
    for m in results["methods"]:
        ips = m["images_per_second"]
        lines.append(f"| {m['label']} | {ips:.0f} | {m['seconds']:.1f} |")
    return "\n".join(lines)


def describe_stream(results: dict[str, Any]) -> str:
    s, st = results["config"]["stream"], results["stream"]
    ls = st["label_stats"]
    order = f"dirichlet (δ = {s['delta']})" if s["order"] == "dirichlet" else s["order"]
    return (
        f"Stream: {order} order, {s['schedule']} schedule, batch size {s['batch_size']}, "
        f"seed {results['seed']}; {st['num_samples']} samples in {st['num_batches']} batches over "
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
    return (
        f"# {results['name']}: online error (%)\n\n{describe_stream(results)}\n\n"
        f"{error_table(results)}\n\n{warned}Columns: {legend}. Δ is the method's mean error "
        f"minus the `source` baseline's on the identical stream (negative = adaptation helps).\n\n"
        f"{timing_table(results)}\n\nVersions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + "\n"
    )


def results_csv(results: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "domain", "error", "source_error", "delta_vs_source", "samples"])
    source = results["methods"][0]["errors"]
    for m in results["methods"]:
        for d, e in m["errors"].items():
            writer.writerow(
                [
                    m["label"],
                    d,
                    f"{e:.4f}",
                    f"{source[d]:.4f}",
                    f"{e - source[d]:.4f}",
                    m["samples"][d],
                ]
            )
    return buf.getvalue()


def plot_errors(results: dict[str, Any], path: Path) -> None:
    """Per-domain error of every method; the source baseline is the thick dashed black line, so
    points below it are domains where adaptation helps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = results["stream"]["domains"]
    xs = range(len(domains))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(domains) + 3), 4.2))
    for m in results["methods"]:
        ys = [m["errors"].get(d, float("nan")) for d in domains]
        if m["name"] == "source" and m["label"] == "source":
            ax.plot(xs, ys, "k--", lw=2.5, label="source (no adaptation)", zorder=3)
        else:
            ax.plot(xs, ys, "o-", lw=1.2, ms=4, label=f"{m['label']} ({m['mean_error']:.1f})")
    ax.set_xticks(list(xs), [short_domain(d) for d in domains], rotation=45, ha="right")
    ax.set_ylabel("online error (%)")
    ax.set_title(f"{results['name']}: error per domain (mean in legend)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_reports(out: Path, results: dict[str, Any]) -> None:
    write_json(out / "results.json", results)
    write_text(out / "results.csv", results_csv(results))
    write_text(out / "summary.md", summary_markdown(results))
    plot_errors(results, out / "errors.png")
