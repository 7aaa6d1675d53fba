"""Rendering a merged sweep (see ``collect``): sweep.csv, sweep.md and sweep.png.

Tables, numbers and figures are written with the same helpers as a run's own report files
(``tta._render``), so a sweep and its cells show numbers alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tta._render import csv_text, md_escape, md_row, md_rule, md_table, number, png_figure
from tta.plugin_table import plugin_table
from tta.run_config import SOURCE
from tta.sweep.plan import canonical, value_text


def sweep_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """One line per cell × seed × method × domain; errors to four decimals, grid values as
    they are."""
    head = ["cell", *keys, "method", "domain", "error", "source_error", "delta_vs_source"]
    return csv_text(
        [*head, "samples"],
        (
            [
                *(
                    f"{r[h]:.4f}" if isinstance(r[h], float) and h not in keys else r[h]
                    for h in head
                ),
                r["samples"],
            ]
            for r in rows
        ),
    )


def sweep_markdown(
    merged: dict[str, Any], results: dict[str, Any], plan: Optional[dict[str, Any]]
) -> str:
    """Methods × settings table (mean ± std over seeds, Δ vs source), cells, failures."""
    settings, methods = merged["settings"], merged["methods"]
    seeded = merged.get("seeded", "seed" in merged["grid_keys"])
    lines = [f"# {merged['name']}: sweep of {len(results) + len(merged['failed'])} cells", ""]
    if plan:
        grid = "; ".join(
            f"{k} ∈ {{{', '.join(value_text(v) for v in vs)}}}" for k, vs in plan["grid"].items()
        )
        lines += [
            f"Grid: {md_escape(grid)}."
            + (f" Excluded: {md_escape(canonical(plan['exclude']))}." if plan["exclude"] else ""),
            "",
        ]
    lines += [
        f"Cells: {len(results)} finished, {len(merged['failed'])} failed, "
        f"{len(merged['missing'])} not run.",
        "",
        "## Mean online error (%) over domains" + (": mean ± std over seeds" if seeded else ""),
        "",
        "Each entry: the method's error averaged over the domains"
        + (
            ", then mean ± sample standard deviation (n − 1) over the seeds of the setting"
            if seeded
            else ""
        )
        + "; in brackets the difference to `source` on the identical streams (negative = "
        "adaptation helps).",
        "",
    ]
    if settings:
        lines += [*_settings_table(settings, methods, seeded), ""]
    lines += _plugin_tables(settings)
    lines += _cells_table(merged, results)
    if merged["failed"]:
        lines += [
            "## Failed cells",
            "",
            "Each was tried the number of times shown and left without results; rerun the sweep "
            "to try again (finished cells are kept). Details: failures.json.",
            "",
            *md_table(
                ["cell", "attempts", "last error"],
                (
                    [cid, str(f["attempts"]), md_escape(f["errors"][-1])]
                    for cid, f in merged["failed"].items()
                ),
            ),
            "",
        ]
    return "\n".join(lines)


def _settings_table(
    settings: dict[str, dict[str, Any]], methods: list[str], seeded: bool
) -> list[str]:
    """Methods × settings: mean error (± std over seeds), Δ vs source in brackets, and
    ``[n=…]`` where a method has fewer runs than the setting has seeds."""
    head = ["method"]
    for label, group in settings.items():
        n = group.get("seeds", len(group["cells"]))
        head.append(md_escape(label) + (f" ({n} seed{'s' if n != 1 else ''})" if seeded else ""))
    rows = []
    for method in methods:
        row = [md_escape(method)]
        for group in settings.values():
            e = group["methods"].get(method)
            if e is None:
                row.append("-")
                continue
            text = number(e["mean"], e["std"] if e["n"] > 1 else None)
            if method != SOURCE:
                text += f" ({number(e['delta_mean'], signed=True)})"
            if e["n"] < group.get("seeds", len(group["cells"])):
                text += f" [n={e['n']}]"
            row.append(text)
        rows.append(row)
    return md_table(head, rows)


def _plugin_tables(settings: dict[str, dict[str, Any]]) -> list[str]:
    """The plug-in section (each method with its own norm and another), where a setting has
    such pairs; no lines otherwise."""
    tables = {label: plugin_table(g.get("runs", [])) for label, g in settings.items()}
    if not any(tables.values()):
        return []
    lines = [
        "## Plug-in table: each method with its own norm and with another norm underneath",
        "",
        "The layout of the UnMix-TNS paper: mean online error (%) over domains, mean ± std "
        "over seeds; Δ = (other norm − own norm), paired by seed (negative = the other norm "
        "helps).",
        "",
    ]
    for label, table in tables.items():
        if table:
            lines += [f"### {md_escape(label)}", "", table, ""]
    return lines


def _cells_table(merged: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """Every cell: done (with its wall time and each method's mean error), failed or not run."""
    methods = merged["methods"]
    # With no finished cell there are no method columns; the lines then end in an empty cell
    # (``| cell | status |  |``), as sweep.md always had.
    empty = ["-" for _ in methods] or [""]
    lines = [
        "## Cells",
        "",
        md_row(["cell", "status", *([md_escape(m) for m in methods] or [""])]),
        md_rule(len(methods) + 2),
    ]
    for cid, res in results.items():
        spread = "per_seed" in res
        errs = {
            m["label"]: number(m["mean_error"], m["mean_error_std"] if spread else None)
            for m in res["methods"]
        }
        done = f"done ({res['wall_seconds']:.1f} s)"
        lines.append(md_row([cid, done, *([errs.get(m, "-") for m in methods] or [""])]))
    lines += [md_row([cid, "FAILED", *empty]) for cid in merged["failed"]]
    lines += [md_row([cid, "not run", *empty]) for cid in merged["missing"]]
    lines.append("")
    return lines


def plot_sweep(merged: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per setting, one bar per method (mean error, std over seeds as
    error bars); the ``source`` bar is hatched grey."""
    settings, methods = merged["settings"], merged["methods"]
    labels = list(settings)
    width = 0.8 / max(1, len(methods))
    figsize = (max(6.0, 1.2 * len(labels) * max(1, len(methods)) ** 0.5 + 3), 4.5)
    with png_figure(path, figsize) as ax:
        for j, method in enumerate(methods):
            xs, ys, es = [], [], []
            for i, label in enumerate(labels):
                e = settings[label]["methods"].get(method)
                if e is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(e["mean"])
                    es.append(e["std"])
            style = {"color": "0.7", "hatch": "//", "edgecolor": "0.3"} if method == SOURCE else {}
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=method, **style)
        ax.set_xticks(range(len(labels)), [lab.replace(", ", "\n") for lab in labels], fontsize=7)
        ax.set_ylabel("mean online error (%)")
        ax.set_title(f"{merged['name']}: error per setting (bars: std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        if methods:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
