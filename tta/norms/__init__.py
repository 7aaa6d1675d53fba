"""Layers that replace BatchNorm; importing this package registers each as a norm method.

Imported in the order ``tta.available_methods()`` lists them.
"""

from tta.norms.source import SourceNorm  # noqa: I001
from tta.norms.tbn import TestBatchNorm
from tta.norms.alpha_bn import AlphaBatchNorm
from tta.norms.rbn import RobustBatchNorm
from tta.norms.unmix_tns import UnMixTNS
from tta.norms.iabn import InstanceAwareBatchNorm
from tta.norms.context_bn import ContextBatchNorm
from tta.norms.base import AdaptiveNorm, batch_stats, instance_stats, normalize

__all__ = [
    "AdaptiveNorm",
    "AlphaBatchNorm",
    "ContextBatchNorm",
    "InstanceAwareBatchNorm",
    "RobustBatchNorm",
    "SourceNorm",
    "TestBatchNorm",
    "UnMixTNS",
    "batch_stats",
    "instance_stats",
    "normalize",
]
