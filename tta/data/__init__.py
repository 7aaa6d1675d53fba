"""Test domains and streams: CIFAR-10-C/100-C, ImageNet-C, in-memory arrays, any torchvision-style
dataset; i.i.d., sorted and Dirichlet orders; reset-each-shift, continual, mixed and gradual
schedules (docs/algorithms.md §4 and §5)."""

from __future__ import annotations

from tta.data.arrays import check_counts, check_float_images, load_npy, open_npz
from tta.data.cifarc import CIFARC, CIFARCDomain
from tta.data.dataset_domain import TorchvisionDomain
from tta.data.domain import ArrayDomain, Domain, to_float
from tta.data.imagenetc import ImageFolderDomain, ImageNetC
from tta.data.names import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    check_corruption_names,
)
from tta.data.ordering import ORDERS, dirichlet_order, iid_order, order_indices, sorted_order
from tta.data.stream import (
    GRADUAL_SEVERITIES,
    SCHEDULES,
    Batch,
    Reset,
    Segment,
    Stream,
    domain_rng,
    label_stats,
    make_stream,
)

__all__ = [
    "ALL_CORRUPTIONS",
    "CIFARC",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "GRADUAL_SEVERITIES",
    "ORDERS",
    "SCHEDULES",
    "SEVERITIES",
    "ArrayDomain",
    "Batch",
    "CIFARCDomain",
    "Domain",
    "ImageFolderDomain",
    "ImageNetC",
    "Reset",
    "Segment",
    "Stream",
    "TorchvisionDomain",
    "check_corruption_names",
    "check_counts",
    "check_float_images",
    "dirichlet_order",
    "domain_rng",
    "iid_order",
    "label_stats",
    "load_npy",
    "make_stream",
    "open_npz",
    "order_indices",
    "sorted_order",
    "to_float",
]
