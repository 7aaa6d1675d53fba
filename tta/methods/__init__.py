"""Gradient methods: objectives optimised online over the norm layers' γ and β.

Importing this package registers each objective.
"""

from tta.methods.tent import entropy_loss  # noqa: I001  (listing order)
from tta.methods.core import class_confusion_loss

__all__ = ["class_confusion_loss", "entropy_loss"]
