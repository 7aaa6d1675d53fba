"""Adaptation methods as classes on top of the norm layers; importing this package registers each.

``Method`` (``tta.methods.base``) is the base class and ``GradientMethod`` (``tta.methods.optim``)
the base of the loss-driven ones. Adding a method is one file here plus one import line below, or
a module of your own that uses ``@tta.register_method`` (listed under ``plugins:`` in a run config).
"""

from tta.methods.base import Method, NormOnly, RunContext  # noqa: I001  (listing order)
from tta.methods.optim import GradientMethod
from tta.methods.tent import Tent, entropy, entropy_loss
from tta.methods.core import Core, class_confusion_loss
from tta.methods.eata import EATA, ETA
from tta.methods.sar import SAR
from tta.methods.deyo import DeYO
from tta.methods.lame import LAME
from tta.methods.note import NOTE, note_entropy, pbrs_insert
from tta.methods.rotta import RoTTA
from tta.methods.cotta import CoTTA
from tta.methods.roid import ROID

__all__ = [
    "EATA",
    "ETA",
    "Core",
    "DeYO",
    "LAME",
    "NOTE",
    "ROID",
    "CoTTA",
    "RoTTA",
    "SAR",
    "GradientMethod",
    "Method",
    "NormOnly",
    "RunContext",
    "Tent",
    "class_confusion_loss",
    "entropy",
    "entropy_loss",
    "note_entropy",
    "pbrs_insert",
]
