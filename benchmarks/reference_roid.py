"""Compare tta's ROID with the reference implementation of mariodoebler/test-time-adaptation
("MDTTA"), step by step, in float64.

    python benchmarks/reference_roid.py /path/to/test-time-adaptation

The argument is a checkout of MDTTA (its root or its ``classification`` folder); its ``ROID``
class is imported from there at run time with the stand-ins of ``reference_check.py`` (plus its
real ``augmentations`` package). Both sides get the network, data and configuration of
``reference_check.py``: a CIFAR ResNet-8 (with a ``layer4`` stage) in float64, 20 batches of 64
images of 3×32×32, Adam (lr 1e-3, β (0.9, 0.999)), and ROID's defaults (momentum_src 0.99,
momentum_probs 0.9, temperature 1/3, every part on), MDTTA's BatchNorm with batch statistics
against tta's ``tbn``.

The consistency loss forwards an augmented view. Two runs:

- ``identity``: the augmentation replaced by the identity on both sides;
- ``aligned``: MDTTA's own ``get_tta_transforms(cotta_augs=False)`` drawing from torch's global
  generator seeded with the run's seed, against ``tta.methods.augment.TTAAugment`` drawing from
  the method's generator seeded with the same seed: the same sequence of draws. Both pad by
  reflection (``TTA_PADDING``), as MDTTA's ROID does.
  The two views of a batch differ by rounding (torchvision computes parts of the transform in
  float32), which Adam's sign-like first steps on near-zero gradients would amplify to O(lr)
  parameter differences; so the reference computes its own view (its draws, its view difference
  reported as max|Δ view|) but is handed tta's view, and the run checks ROID's logic on equal
  inputs.

Columns: kept (samples kept by the diversity filter over the run, from each side's own second
forward), max|Δ out| (returned, prior-corrected logits), max|Δ fwd| (every forward's inputs and
outputs, the augmented views included), max|Δ θ| (all parameters after the last batch), max|Δ p̄|
(the class-probability moving average at the end), moved (how far tta's parameters moved). The
exit status is 1 when a difference exceeds 1e-6 or the counts differ.

Measured 2026-11-28 (torch 2.14, CPU):

    run                     batches  kept        max|Δ out|  max|Δ fwd|  max|Δ θ|  max|Δ p̄|  moved
    ----------------------  -------  ----------  ----------  ----------  --------  ---------  -------  --
    roid identity           20       787 / 1280  2.9e-14     2.8e-13     1.8e-15   3.6e-16    1.7e-02  ok
    roid aligned (reflect)  20       775 / 1280  3.4e-14     3.6e-13     3.7e-15   3.7e-16    1.5e-02  ok

    roid aligned (reflect): max|Δ view| 1.1e-06 (MDTTA's own view vs tta's, each batch)
    roid norm=unmix-tns  finite outputs 20/20, finite parameters: True  ok
    roid norm=rbn        finite outputs 20/20, finite parameters: True  ok
    all match
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_check import (  # noqa: E402
    BATCH_SIZE,
    BATCHES,
    NUM_CLASSES,
    SEED,
    TOLERANCE,
    Run,
    checkout_stubs,
    cpu_only,
    find_checkout,
    import_with_stubs,
    make_data,
    make_network,
    max_diff,
    reference_cfg,
    run_stream,
)

import tta  # noqa: E402
import tta.methods.roid  # noqa: E402, F401
from tta.methods.roid import ROID  # noqa: E402

# Padding of the augmented view before the affine map, on both sides (as MDTTA's ROID asks).
TTA_PADDING = "reflect"


def load_roid(root: Path) -> tuple[type, Callable[..., Any]]:
    """MDTTA's ROID class and its ``get_tta_transforms``, imported with stand-ins."""
    root = find_checkout(root, "roid.py")
    stubs = checkout_stubs(root, "augmentations")
    module, transforms = import_with_stubs(stubs, "methods.roid", "augmentations.transforms_cotta")
    return module.ROID, transforms.get_tta_transforms


def roid_cfg() -> NS:
    cfg = reference_cfg()
    cfg.ROID = NS(
        USE_WEIGHTING=True,
        USE_PRIOR_CORRECTION=True,
        USE_CONSISTENCY=True,
        MOMENTUM_SRC=0.99,
        MOMENTUM_PROBS=0.9,
        TEMPERATURE=1 / 3,
    )
    return cfg


class Row:
    """One line of the table (the same columns as ``reference_check.Row`` plus p̄)."""

    def __init__(self, name: str, ours: Run, ref: Run, dp: float, net: nn.Module) -> None:
        self.name = name
        counts = [sum(len(c[1][0]) for c in r.forwards if len(c) > 1) for r in (ours, ref)]
        self.counts_agree = counts[0] == counts[1]
        total = len(ours.outputs) * BATCH_SIZE
        self.kept = f"{counts[0]} / {total}" + ("" if self.counts_agree else f" ({counts[1]})")
        self.batches = len(ours.outputs)
        self.d_out = max_diff(ours.outputs, ref.outputs)
        flat = [[t for calls in r.forwards for call in calls for t in call] for r in (ours, ref)]
        self.d_fwd = max_diff(*flat)
        names = list(ours.params)
        self.d_params = max_diff([ours.params[n] for n in names], [ref.params[n] for n in names])
        start = dict(net.named_parameters())
        self.moved = max_diff([ours.params[n] for n in names], [start[n].detach() for n in names])
        self.d_probs = dp

    @property
    def ok(self) -> bool:
        worst = max(self.d_out, self.d_fwd, self.d_params, self.d_probs)
        return self.counts_agree and worst <= TOLERANCE

    def cells(self) -> list[str]:
        return [
            self.name,
            str(self.batches),
            self.kept,
            f"{self.d_out:.1e}",
            f"{self.d_fwd:.1e}",
            f"{self.d_params:.1e}",
            f"{self.d_probs:.1e}",
            f"{self.moved:.1e}",
            "ok" if self.ok else "DIFF",
        ]


def compare(name: str, cls: type, transform: Any, net: nn.Module, batches) -> tuple[Row, str]:
    """tta's ROID against MDTTA's; ``transform``: the reference's augmentation (None: identity on
    both sides). Returns the row and a note on the views."""
    original = ROID.augment
    if transform is None:
        ROID.augment = lambda self, x: x
    try:
        context = tta.RunContext(seed=SEED, batch_size=BATCH_SIZE)
        adapted = tta.adapt(net, "roid", context=context)
        ours = run_stream(adapted, adapted.model, batches)
    finally:
        ROID.augment = original
    our_views = [calls[1][0] for calls in ours.forwards]
    view_diffs: list[float] = []

    def shared_view(x: torch.Tensor) -> torch.Tensor:
        """The reference's own view (its draws), compared with tta's, which is returned."""
        theirs = transform(x)
        mine = our_views[len(view_diffs)]
        view_diffs.append(max_diff([theirs], [mine]))
        return mine if mine.shape == theirs.shape else theirs

    model = copy.deepcopy(net)
    default = torch.get_default_dtype()
    # MDTTA's p̄ starts in the default dtype; its augmentation draws float32 parameters as tta's
    # does, so the default goes back to float32 before the run
    torch.set_default_dtype(torch.float64)
    try:
        with cpu_only():
            ref = cls(roid_cfg(), model, NUM_CLASSES)
    finally:
        torch.set_default_dtype(default)
    ref.tta_transform = shared_view if transform is not None else (lambda x: x)
    torch.manual_seed(SEED)  # torchvision's draws, aligned with tta's generator
    with cpu_only():
        theirs = run_stream(ref, model, batches)
    dp = float((adapted.method.class_probs - ref.class_probs_ema).abs().max())
    note = (
        f"{name}: max|Δ view| {max(view_diffs):.1e} (MDTTA's own view vs tta's, each batch)"
        if view_diffs
        else f"{name}: augmentation replaced by the identity on both sides"
    )
    return Row(name, ours, theirs, dp, net), note


def check_compositions(net: nn.Module, batches) -> list[str]:
    """ROID over the stateful norms (tta only): finite outputs and parameters."""
    lines = []
    context = tta.RunContext(seed=SEED, batch_size=BATCH_SIZE)
    for norm in ("unmix-tns", "rbn"):
        adapted = tta.adapt(net, "roid", context, norm=norm)
        finite = sum(bool(torch.isfinite(adapted(x)).all()) for x in batches)
        params = all(bool(torch.isfinite(p).all()) for p in adapted.model.parameters())
        ok = finite == len(batches) and params
        lines.append(
            f"roid norm={norm:10s} finite outputs {finite}/{len(batches)}, finite parameters: "
            f"{params}  {'ok' if ok else 'FAIL'}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mdtta", type=Path, help="checkout of mariodoebler/test-time-adaptation")
    args = parser.parse_args()
    cls, get_tta_transforms = load_roid(args.mdtta.resolve())
    data = make_data()
    net = make_network(data, scale=2.5, batch_statistics=True)
    aligned = get_tta_transforms((32, 32), padding_mode=TTA_PADDING, cotta_augs=False)
    results = [
        compare("roid identity", cls, None, net, data.batches),
        compare(f"roid aligned ({TTA_PADDING})", cls, aligned, net, data.batches),
    ]
    rows = [row for row, _ in results]
    print(f"float64, {BATCHES} batches of {BATCH_SIZE}, tolerance {TOLERANCE:g}\n")
    header = ["run", "batches", "kept", "max|Δ out|", "max|Δ fwd|", "max|Δ θ|", "max|Δ p̄|"]
    widths_rows = [header + ["moved", ""]] + [r.cells() for r in rows]
    print_table_rows(widths_rows)
    print("\n" + "\n".join(note for _, note in results))
    print("\ncompositions (tta only, 20 batches):")
    lines = check_compositions(net, data.batches)
    print("\n".join(lines))
    views_ok = all(float(n.split("view| ")[1].split()[0]) <= 1e-5 for _, n in results[1:])
    failed = (
        [r.name for r in rows if not r.ok]
        + ([] if views_ok else ["views"])
        + [x.split()[1] for x in lines if "FAIL" in x]
    )
    print("\nnot matching: " + "; ".join(failed) if failed else "\nall match")
    return 1 if failed else 0


def print_table_rows(lines: list[list[str]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(*lines)]
    for line in [lines[0], ["-" * w for w in widths], *lines[1:]]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
