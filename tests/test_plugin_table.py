"""The UnMix-TNS plug-in table: pairs, mean ± std over seeds and the paired difference."""

from __future__ import annotations

import numpy as np

from tta.plugin_table import find_pairs, plugin_table
from tta.sweep import sweep_markdown


def entry(label, name, error, **options):
    return {"label": label, "name": name, "options": options, "mean_error": error}


def runs():
    """Three seeds: tent with its own norm (tbn) and over unmix-tns; lame (own norm: source) and
    over unmix-tns; a norm on its own and a tent with other method options (not paired)."""
    errs = {
        "tent": [30.0, 32.0, 31.0],
        "tent+unmix-tns": [25.0, 28.0, 24.0],
        "lame": [40.0, 41.0, 45.0],
        "lame+unmix-tns": [39.0, 44.0, 40.0],
    }
    out = []
    for s in range(3):
        out.append(
            [
                entry("source", "source", 50.0 + s),
                entry("tbn", "tbn", 33.0),
                entry("tent", "tent", errs["tent"][s]),
                entry("tent+unmix-tns", "tent", errs["tent+unmix-tns"][s], norm="unmix-tns"),
                entry("tent-fast", "tent", 20.0, lr=0.1),
                entry("lame", "lame", errs["lame"][s]),
                entry("lame+unmix-tns", "lame", errs["lame+unmix-tns"][s], norm="unmix-tns", k=16),
            ]
        )
    return out, errs


def pm(values, signed=False):
    mean, std = np.mean(values), np.std(values, ddof=1)
    return (f"{mean:+.1f}" if signed else f"{mean:.1f}") + f" ± {std:.1f}"


def test_pairs_match_method_options_and_ignore_norm_options():
    pairs = find_pairs(runs()[0][0])
    got = [(p.method, p.own, p.plugged, p.norm, p.own_norm) for p in pairs]
    assert got == [
        ("tent", "tent", "tent+unmix-tns", "unmix-tns", "tbn"),
        ("lame", "lame", "lame+unmix-tns", "unmix-tns", "source"),
    ]


def test_table_values_are_seed_means_and_paired_differences():
    data, errs = runs()
    table = plugin_table(data)
    lines = table.splitlines()
    assert lines[0] == "| method | own norm | + unmix-tns | Δ |"
    diff_tent = np.subtract(errs["tent+unmix-tns"], errs["tent"])
    diff_lame = np.subtract(errs["lame+unmix-tns"], errs["lame"])
    assert lines[2] == (
        f"| tent (tbn) | {pm(errs['tent'])} | {pm(errs['tent+unmix-tns'])} | "
        f"{pm(diff_tent, signed=True)} |"
    )
    assert lines[3] == (
        f"| lame (source) | {pm(errs['lame'])} | {pm(errs['lame+unmix-tns'])} | "
        f"{pm(diff_lame, signed=True)} |"
    )
    # paired: the std of the differences, not a combination of the columns' stds
    assert f"± {np.std(diff_tent, ddof=1):.1f} |" in lines[2]
    assert len(lines) == 4


def test_no_pair_gives_no_table():
    assert plugin_table([[entry("source", "source", 1.0), entry("tent", "tent", 2.0)]]) is None
    assert plugin_table([]) is None


def test_sweep_markdown_adds_the_table_per_setting():
    data, _ = runs()
    settings = {
        "order=dirichlet": {"values": {}, "cells": ["a"], "seeds": 3, "methods": {}, "runs": data},
        "order=iid": {"values": {}, "cells": ["b"], "seeds": 3, "methods": {}, "runs": data[:1]},
    }
    merged = {
        "name": "t",
        "grid_keys": ["stream.order", "seed"],
        "seeded": True,
        "settings": settings,
        "methods": [],
        "failed": {},
        "missing": [],
    }
    text = sweep_markdown(merged, {}, None)
    assert "## Plug-in table" in text
    assert "### order=dirichlet" in text and "### order=iid" in text
    assert text.count("| method | own norm | + unmix-tns | Δ |") == 2
    # one seed: no ± part
    iid = text.split("### order=iid")[1]
    assert "| tent (tbn) | 30.0 | 25.0 | -5.0 |" in iid


def test_shipped_plugin_sweep_pairs_every_method_with_unmix_tns():
    from pathlib import Path

    from tta.config import method_entries
    from tta.sweep import load_sweep

    path = Path(__file__).parent.parent / "configs/sweeps/unmixtns_plugin_table.yaml"
    sweep = load_sweep(path)
    assert len(sweep.cells) == 6  # {iid, dirichlet} x 3 seeds
    config = sweep.cells[0].config
    assert config["stream"]["batch_size"] == 64 and config["data"]["severities"] == [5]
    assert config["stream"]["schedule"] == "continual"
    entries = [vars(e) for e in method_entries(config["methods"])]  # label, name, options
    pairs = find_pairs(entries)
    assert [p.method for p in pairs] == ["tent", "lame", "cotta", "note", "rotta", "roid"]
    assert {p.norm for p in pairs} == {"unmix-tns"}
