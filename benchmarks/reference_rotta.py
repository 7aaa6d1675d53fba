"""Compare tta's RoTTA with the RoTTA of mariodoebler/test-time-adaptation ("MDTTA"), batch by
batch, in float64.

    python benchmarks/reference_rotta.py /path/to/test-time-adaptation

Network, stream and import mechanics are those of ``benchmarks/reference_check.py`` (a CIFAR
ResNet-8 with a fourth stage, BatchNorm statistics and affine randomised, a classifier fitted to
ten prototype classes; 20 batches of 64 images 3×32×32): both sides start from the same network,
everything in float64, on the CPU. MDTTA replaces BatchNorm by its RobustBN (rate 0.05), tta runs
with its default norm ``rbn``; both use the defaults (memory 64, update every 64, ν 0.001,
λ_t = λ_u = 1, Adam lr 1e-3).

Rows, by the student's view of the memory (the strong augmentation):

- ``identity`` (as asked of every side-by-side check: nothing random left): MDTTA's
  ``get_tta_transforms`` replaced by the identity, tta's ``RoTTA.strong_augment`` patched. Then
  teacher and student see the same images with the same weights, so the loss's gradient is zero up
  to rounding, and Adam (which divides by the gradient's size) turns that rounding into steps of
  up to lr: after a few updates the two sides differ by about lr, whatever the code. tta's teacher
  forward normalises with ``F.batch_norm``, its student with the same arithmetic written out
  (differences of 1e-16), MDTTA's run through the same code, so its first gradient is exactly 0.
  The identity row therefore runs SGD (lr 1e-3, momentum 0.9 on both sides), which keeps rounding
  as rounding: it checks the memory, the robust-BN statistics, the predictions and the update
  positions, and the parameters barely move;
- ``flip``: a fixed horizontal flip as the strong view on both sides, deterministic, with the
  default Adam: the gradient is real and the whole update (loss, timeliness weights, Adam step,
  EMA) is compared; on the i.i.d. stream, on the same images in batches of 48 (updates fall
  mid-batch: after samples 16, 32 and 48 of three batches out of four), and sorted by the source
  model's class (long runs of one class: the memory's eviction rules work hardest);
- ``aligned``: the real augmentation on both sides, MDTTA's drawing from torch's global generator
  seeded with the run's seed, tta's from the method's generator with that seed, so both draw the
  same views. MDTTA's colour jitter calls torchvision v1's hue adjustment, tta v2's, which
  compute HSV differently in float32 (|Δ| about 1e-6 per pixel, see reference_cotta.py), so the
  row runs v2's hue on both sides (``--own-hue``: each its own, for information, not counted).

``--only TEXT`` runs the rows whose label contains TEXT (each row takes minutes on a busy CPU).

MDTTA's ``forward_and_adapt`` calls ``self.loss_calculation(x)`` where the method takes no
argument (a TypeError on the first update outside mixed precision); the check calls it without.

Columns: updates, max |Δ logits| over all returned predictions (the teacher's), max |Δ θ| of the
student and of the teacher after the last batch, max |Δ| of the robust-BN statistics (student and
teacher), the memory (same samples per class, same ages, max |Δ| of images and uncertainties),
and how far tta's student moved from the source.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path
from typing import Any, Optional
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_check as rc  # noqa: E402

import tta  # noqa: E402
from tta.methods.rotta import RoTTA  # noqa: E402

TOLERANCE = 1e-6


def load_rotta(root: Path) -> tuple[type, Any]:
    """Import MDTTA's RoTTA module and its augmentations with the stand-ins of reference_check."""
    root = rc.find_checkout(root, "rotta.py")
    stubs = rc.checkout_stubs(root, "augmentations")
    module, transforms = rc.import_with_stubs(
        stubs, "methods.rotta", "augmentations.transforms_cotta"
    )
    return module, transforms


def reference_cfg() -> rc.NS:
    cfg = rc.reference_cfg()
    cfg.ROTTA = rc.NS(
        MEMORY_SIZE=64, UPDATE_FREQUENCY=64, NU=0.001, ALPHA=0.05, LAMBDA_T=1.0, LAMBDA_U=1.0
    )
    return cfg


FIXED_VIEWS = {"identity": lambda x: x, "flip": lambda x: x.flip(-1)}
SGD = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9}


def run_ours(net: nn.Module, batches: list[torch.Tensor], view: str, options: dict[str, Any]):
    context = tta.RunContext(seed=rc.SEED, batch_size=len(batches[0]))
    patch = (
        mock.patch.object(RoTTA, "strong_augment", lambda self, x: FIXED_VIEWS[view](x))
        if view in FIXED_VIEWS
        else contextlib.nullcontext()
    )
    updates = []
    update = RoTTA.update

    def counted(self) -> None:
        updates.append(self.seen)
        update(self)

    with patch, mock.patch.object(RoTTA, "update", counted):
        adapted = tta.adapt(net, "rotta", context=context, **options)
        outputs = [adapted(x.clone()).detach().clone() for x in batches]
    return adapted, outputs, len(updates)


def run_reference(module, transforms, net, batches, view: str, sgd: bool, v2_hue: bool):
    class Fixed(module.RoTTA):
        def loss_calculation(self, *_: Any) -> torch.Tensor:
            return module.RoTTA.loss_calculation(self)

    updates = []
    step = Fixed.loss_calculation

    def counted(self, *args: Any) -> torch.Tensor:
        updates.append(self.current_instance)
        return step(self, *args)

    Fixed.loss_calculation = counted
    model = copy.deepcopy(net)
    aug = (
        mock.patch.object(module, "get_tta_transforms", lambda *a, **k: FIXED_VIEWS[view])
        if view in FIXED_VIEWS
        else contextlib.nullcontext()
    )
    cfg = reference_cfg()
    if sgd:
        cfg.OPTIM.METHOD = "SGD"
    hue = (
        mock.patch.object(transforms.F, "adjust_hue", tta.methods.augment.F.adjust_hue)
        if v2_hue
        else contextlib.nullcontext()
    )
    with rc.cpu_only(), aug, hue:
        ref = Fixed(cfg, model, rc.NUM_CLASSES)
        torch.manual_seed(rc.SEED)
        outputs = [ref(x.clone()).detach().clone() for x in batches]
    return ref, outputs, len(updates)


def robust_stats(net: nn.Module, ours: bool) -> list[torch.Tensor]:
    """Moving statistics of every robust-BN layer, in module order (tta's running_*, MDTTA's
    RobustBN keeps them in source_*)."""
    out = []
    for m in net.modules():
        if ours and isinstance(m, tta.norms.rbn.RobustBatchNorm):
            out += [m.running_mean, m.running_var]
        elif not ours and type(m).__name__.startswith("RobustBN"):
            out += [m.source_mean, m.source_var]
    return out


def compare_memory(adapted, ref) -> tuple[bool, float, float]:
    """Same samples per class with the same ages; max |Δ image| and max |Δ uncertainty|."""
    m = adapted.method
    same, d_img, d_u = True, 0.0, 0.0
    for ours, theirs in zip(m.memory, ref.mem.data):
        if len(ours) != len(theirs) or [a for _, _, a in ours] != [t.age for t in theirs]:
            return False, float("inf"), float("inf")
        for (slot, u, _), item in zip(ours, theirs):
            d_img = max(d_img, float((m.memory_images[slot] - item.data).abs().max()))
            d_u = max(d_u, abs(u - item.uncertainty))
    return same and len(m.memory) == len(ref.mem.data), d_img, d_u


def compare(label, rotta, net, batches, view: str, v2_hue: bool = False) -> list[str]:
    module, transforms = rotta
    sgd = view == "identity"
    adapted, outs, n_ours = run_ours(net, batches, view, SGD if sgd else {})
    ref, ref_outs, n_ref = run_reference(module, transforms, net, batches, view, sgd, v2_hue)
    d_out = rc.max_diff(outs, ref_outs)
    student = [p.detach() for p in adapted.model.parameters()]
    d_student = rc.max_diff(student, [p.detach() for p in ref.model.parameters()])
    d_teacher = rc.max_diff(
        [p.detach() for p in adapted.method.teacher.parameters()],
        [p.detach() for p in ref.model_ema.parameters()],
    )
    d_stats = max(
        rc.max_diff(robust_stats(adapted.model, True), robust_stats(ref.model, False)),
        rc.max_diff(robust_stats(adapted.method.teacher, True), robust_stats(ref.model_ema, False)),
    )
    same, d_img, d_u = compare_memory(adapted, ref)
    moved = rc.max_diff(student, [p.detach() for p in net.parameters()])
    ok = same and n_ours == n_ref and max(d_out, d_student, d_teacher, d_stats, d_img) <= TOLERANCE
    sizes = "/".join(str(len(c)) for c in adapted.method.memory)
    return [
        label,
        f"{len(batches)}×{len(batches[0])}",
        f"{n_ours}/{n_ref}",
        f"{d_out:.1e}",
        f"{d_student:.1e}",
        f"{d_teacher:.1e}",
        f"{d_stats:.1e}",
        f"{'same' if same else 'DIFF'} ({sizes}), img {d_img:.0e}, u {d_u:.0e}",
        f"{moved:.1e}",
        "ok" if ok else "DIFF",
    ]


def rebatch(batches: list[torch.Tensor], size: int, order: Optional[torch.Tensor] = None):
    flat = torch.cat(batches)
    if order is not None:
        flat = flat[order]
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mdtta", type=Path, help="checkout of mariodoebler/test-time-adaptation")
    parser.add_argument("--only", default="", help="run the rows whose label contains this")
    parser.add_argument("--own-hue", action="store_true", help="add the aligned row, own hues")
    args = parser.parse_args()
    data = rc.make_data()
    net = rc.make_network(data, scale=2.5, batch_statistics=False)
    rotta = load_rotta(args.mdtta.resolve())
    with torch.no_grad():
        classes = torch.cat([net(x).argmax(1) for x in data.batches])
    by_class = rebatch(data.batches, rc.BATCH_SIZE, torch.argsort(classes, stable=True))
    plan = [
        ("identity (SGD)", data.batches, "identity"),
        ("flip", data.batches, "flip"),
        ("flip, batches of 48", rebatch(data.batches, 48), "flip"),
        ("flip, sorted by class", by_class, "flip"),
        ("aligned (v2 hue on both)", data.batches, "aligned", True),
    ]
    if args.own_hue:
        plan.append(("aligned (each its own hue)", data.batches, "aligned"))
    rows = []
    for label, *rest in plan:
        if args.only in label:
            rows.append(compare(label, rotta, net, *rest))
            print(" | ".join(rows[-1]), flush=True)
    header = ["stream", "batches", "updates", "max|Δ out|", "max|Δ θ|", "max|Δ θ_t|",
              "max|Δ stats|", "memory (per class)", "moved", ""]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    print(f"\nfloat64, tolerance {TOLERANCE:g}\n")
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    failed = [r[0] for r in rows if r[-1] != "ok" and "own hue" not in r[0]]
    print("\nnot matching: " + "; ".join(failed) if failed else "\nall match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
