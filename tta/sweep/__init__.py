"""Sweeps: a grid of evaluation runs ("cells"), run one after another or as Ray tasks, merged into
one table with the spread over seeds.

A sweep file is a run config (the ``tta run`` schema) plus two keys:

- ``grid``: dotted config keys mapped to lists of values; the cells are their product.
- ``exclude`` (optional): partial combinations, e.g. ``[{stream.schedule: mixed, seed: 3}]``; a cell
  that matches every key of one entry is left out.

``output`` names the sweep folder (default ``sweeps/<name>``). Cell ``<id>`` is an ordinary run
whose output is ``<output>/cells/<id>``, the id being the cell's grid values as ``key=value`` pairs.
The sweep folder also holds ``sweep.json`` (the plan), ``sweep.csv``, ``sweep.md``, ``sweep.png``
and, when cells failed, ``failures.json``.

The package, in the order a sweep goes through it:

- ``plan``: the grid and exclusions checked, cells and their ids, ``build_sweep``/``load_sweep``.
- ``runner``: ``run_sweep``: what is finished or stale, checks, progress, retries, failures.json.
- ``executors``: how cells run: locally, or as Ray tasks whose files are copied back.
- ``collect``: the finished cells merged into settings (mean ± std over seeds).
- ``render``: sweep.csv, sweep.md and sweep.png from the merged numbers.

Every name is importable from ``tta.sweep`` itself. ``tta.sweep.evaluate`` is what runs each cell
(looked up at call time), so it can be replaced to run cells another way.
"""

from __future__ import annotations

from tta.evaluation import evaluate
from tta.sweep.collect import collect
from tta.sweep.executors import (
    RAY_INSTALL,
    RESULT_FILES,
    Progress,
    import_ray,
    ray_cell_task,
    run_local,
    run_ray,
)
from tta.sweep.executors import _evaluate_cell as _evaluate_cell  # benchmarks/sweep.py
from tta.sweep.executors import _store_files as _store_files  # tests: a Ray task's files
from tta.sweep.plan import (
    RESERVED,
    SWEEP_KEYS,
    Cell,
    PathLike,
    Sweep,
    build_sweep,
    canonical,
    get_key,
    load_sweep,
    schema_keys,
    set_key,
    short_names,
    value_text,
)
from tta.sweep.render import plot_sweep, sweep_csv, sweep_markdown
from tta.sweep.runner import is_finished, run_sweep, stale_reason

__all__ = [
    "RAY_INSTALL",
    "RESERVED",
    "RESULT_FILES",
    "SWEEP_KEYS",
    "Cell",
    "PathLike",
    "Progress",
    "Sweep",
    "build_sweep",
    "canonical",
    "collect",
    "evaluate",
    "get_key",
    "import_ray",
    "is_finished",
    "load_sweep",
    "plot_sweep",
    "ray_cell_task",
    "run_local",
    "run_ray",
    "run_sweep",
    "schema_keys",
    "set_key",
    "short_names",
    "stale_reason",
    "sweep_csv",
    "sweep_markdown",
    "value_text",
]
