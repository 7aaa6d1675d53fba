"""tta: test-time adaptation of image classifiers.

``tta.adapt(model, method, **options)`` rewrites a network's BatchNorm layers into adaptive ones and
returns a module that predicts and adapts online as batches pass.
"""

from __future__ import annotations

from typing import Any, Optional

from tta import methods, norms  # noqa: F401  (registers every method)
from tta._errors import TTAError
from tta.methods import GradientMethod, Method, RunContext
from tta.models import load_model, train_model  # noqa: F401
from tta.registry import available_methods, register_method
from tta.wrapper import AdaptedModel, adapt


def evaluate(config: dict, force: bool = False, model=None, domains=None) -> dict:
    """Run an evaluation config (YAML schema as a mapping); see ``tta.evaluation.evaluate``."""
    from tta.evaluation import evaluate as _evaluate

    return _evaluate(config, force=force, model=model, domains=domains)


def score(
    adapted: Any,
    stream: Any,
    device: Any = None,
    precision: str = "fp32",
    workers: Optional[int] = 0,
) -> dict:
    """Online error (%) per domain of an adapted model on a stream; see
    ``tta.evaluation.score``."""
    from tta.evaluation import score as _score

    return _score(adapted, stream, device=device, precision=precision, workers=workers)


__version__ = "0.1.0"

__all__ = [
    "AdaptedModel",
    "GradientMethod",
    "Method",
    "RunContext",
    "TTAError",
    "adapt",
    "available_methods",
    "evaluate",
    "load_model",
    "register_method",
    "score",
    "train_model",
]
