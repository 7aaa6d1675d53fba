"""Evaluation runs: every method, and the ``source`` baseline, on the identical stream.

``evaluate`` runs a config and writes its output folder (``tta.evaluation.run``); ``score`` counts
an adapted model's online error on a stream (``tta.evaluation.scoring``). The other modules: the
domains of a run (``domains``), device and precision (``device``), unit files and the config a
folder was made with (``units``), and the results built from the units (``results``).
"""

from __future__ import annotations

from tta.data.subset import SubsetDomain, subset_rows
from tta.evaluation.device import autocast, check_precision, resolve_device
from tta.evaluation.domains import corrupted_domains, source_images
from tta.evaluation.results import MethodResult, RunResult, SeedResult
from tta.evaluation.run import evaluate
from tta.evaluation.scoring import check_model, run_segment, run_unit, score
from tta.evaluation.units import unit_name, unit_path

__all__ = [
    "MethodResult",
    "RunResult",
    "SeedResult",
    "SubsetDomain",
    "autocast",
    "check_model",
    "check_precision",
    "corrupted_domains",
    "evaluate",
    "resolve_device",
    "run_segment",
    "run_unit",
    "score",
    "source_images",
    "subset_rows",
    "unit_name",
    "unit_path",
]
