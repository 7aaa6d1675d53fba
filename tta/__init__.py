"""tta: test-time adaptation of image classifiers.

``tta.adapt(model, method, **options)`` rewrites a network's BatchNorm layers into adaptive ones and
returns a module that predicts and adapts online as batches pass.
"""

from __future__ import annotations

__version__ = "0.1.0"
