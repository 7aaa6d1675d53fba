"""Compare tta's CoTTA with the CoTTA of mariodoebler/test-time-adaptation ("MDTTA"), batch by
batch, in float64.

    python benchmarks/reference_cotta.py /path/to/test-time-adaptation

Network, stream and import mechanics are those of ``benchmarks/reference_check.py`` (a CIFAR
ResNet-8 with a fourth stage, BatchNorm statistics and affine randomised, a classifier fitted to
ten prototype classes; 20 batches of 64 images 3×32×32): both sides start from the same network,
everything in float64, on the CPU. MDTTA's CoTTA trains every parameter with BatchNorm using the
batch's statistics; tta's runs with its default norm ``tbn``, the same normalisation.

Random draws are aligned, not switched off. MDTTA draws every augmentation parameter, the noise
and the restore masks from torch's global generator; tta draws the same quantities in the same
order from the method's own generator seeded with the run's seed. The check seeds the global
generator with that seed before MDTTA's run, so both sides see the same views and masks.

Rows (all with rst = 0.01, the default, so stochastic restore takes part in every batch):

- ``ap=0``: the anchor's confidence is never below ap, the teacher predicts on the batch itself.
  This run starts at a point where student and teacher are the same network, so the loss's
  gradient is zero up to rounding, and Adam's first steps, ≈ lr·g/(|g| + 1e-8), turn rounding
  noise into steps of up to lr: both sides leave the start driven by the rounding of their own
  forwards (MDTTA's student moves 1e-11 on batch 1, 7e-6 on batch 2, 6e-4 on batch 3), and
  the two runs part ways; no agreement is expected there;
- ``ap=1→0``: averaging in the first 5 batches (so that the student has left the teacher), on the
  batch itself from then on: the non-augmented path, compared where it is well conditioned;
- ``ap=1``: always below, the teacher averages 32 augmented views, every batch;
- ``ap=0.715``: between the anchor's smallest and largest confidence over the stream (0.66 to
  0.77 on this network), so averaging triggers in some batches and not in others (the column
  ``averaged`` counts them on each side);
- the two augmented rows also run with MDTTA's colour jitter calling the hue adjustment of
  torchvision's v2 functional API (tta's) in place of v1's: the two compute HSV differently in
  float32 (|Δ| up to about 1e-6 per pixel), the only op of the pipeline where they differ;
  with v1's hue on MDTTA's side, those differences grow through the training to 1e-5 to 1e-3.

Columns: batches where the teacher averaged views (tta / MDTTA), max |Δ logits| over all returned
predictions, max |Δ θ| of the student after the last batch, max |Δ θ_teacher|, and how far tta's
student moved from the source (a check that adaptation happened). Result (torch 2.14, CPU):

    run                        averaged  max|Δ logits|  max|Δ θ|  max|Δ θ_t|  moved
    ap=0                       0/0       3.1e-02        2.1e-02   2.0e-04     1.5e-02
    ap=1→0 (v2 hue on both)    5/5       2.7e-13        6.0e-13   1.2e-14     1.7e-02
    ap=1                       20/20     1.9e-05        3.8e-04   2.0e-06     1.7e-02
    ap=1 (v2 hue on both)      20/20     6.3e-14        6.0e-13   1.5e-14     1.7e-02
    ap=0.715                   11/11     2.4e-04        9.8e-04   5.1e-06     1.8e-02
    ap=0.715 (v2 hue on both)  11/11     2.8e-13        8.5e-13   1.7e-14     1.8e-02
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_check as rc  # noqa: E402

import tta  # noqa: E402
import tta.methods.cotta  # noqa: E402, F401  (registers "cotta" until tta.methods imports it)

N_AUG = 32
# (ap, MDTTA with v2's hue); the network's anchor confidence per batch lies in [0.66, 0.77]
# with median 0.714, so ap = 0.715 averages in about half of the batches.
# (ap of the first SWITCH batches, ap of the rest, MDTTA with v2's hue)
SWITCH = 5
RUNS = [
    (0.0, 0.0, False),
    (1.0, 0.0, True),
    (1.0, 1.0, False),
    (1.0, 1.0, True),
    (0.715, 0.715, False),
    (0.715, 0.715, True),
]


def load_cotta(root: Path) -> Any:
    """Import MDTTA's CoTTA class with the stand-ins of ``reference_check``."""
    root = rc.find_checkout(root, "cotta.py")
    stubs = rc.checkout_stubs(root, "augmentations")
    module, transforms = rc.import_with_stubs(
        stubs, "methods.cotta", "augmentations.transforms_cotta"
    )
    return module.CoTTA, transforms


def count_averaged(run: rc.Run) -> int:
    """Batches in which the teacher saw augmented views (more than 3 forwards of the network)."""
    return sum(len(calls) > 3 for calls in run.forwards)


def run_pair(
    classes, net: nn.Module, data: rc.Data, ap: float, ap_after: float, v2_hue: bool
) -> list[str]:
    cfg = rc.reference_cfg()
    cfg.M_TEACHER = rc.NS(MOMENTUM=0.999)
    cfg.COTTA = rc.NS(RST=0.01, AP=ap)
    cfg.TEST.N_AUGMENTATIONS = N_AUG
    CoTTA, transforms = classes
    # Our side: the forwards of the student, anchor and teacher are logged by a hook on each.
    context = tta.RunContext(seed=rc.SEED, batch_size=rc.BATCH_SIZE)
    ours = tta.adapt(net, "cotta", context=context, ap=ap, n_augmentations=N_AUG, rst=0.01)
    run = rc.Run()
    hooks = [
        m.register_forward_hook(lambda mod, a, out: run.forwards[-1].append((a[0], out)))
        for m in (ours.model, ours.method.anchor, ours.method.teacher)
    ]
    for i, x in enumerate(data.batches):
        if i == SWITCH:
            ours.method.hparams["ap"] = ap_after
        run.forwards.append([])
        run.outputs.append(ours(x.clone()).detach().clone())
    for h in hooks:
        h.remove()
    run.params = {n: p.detach().clone() for n, p in ours.model.named_parameters()}
    # MDTTA's side, its global generator seeded as ours is.
    model = copy.deepcopy(net)
    hue = (
        mock.patch.object(transforms.F, "adjust_hue", tta.methods.augment.F.adjust_hue)
        if v2_hue
        else contextlib.nullcontext()
    )
    with rc.cpu_only(), hue:
        ref = CoTTA(cfg, model, rc.NUM_CLASSES)
        ref_run = rc.Run()
        hooks = [
            m.register_forward_hook(lambda mod, a, out: ref_run.forwards[-1].append((a[0], out)))
            for m in (ref.model, ref.model_anchor, ref.model_ema)
        ]
        torch.manual_seed(rc.SEED)
        for i, x in enumerate(data.batches):
            if i == SWITCH:
                ref.ap = ap_after
            ref_run.forwards.append([])
            ref_run.outputs.append(ref(x.clone()).detach().clone())
        # MDTTA's EMA update assigns new tensors to .data: the hook on model_ema stays valid
        for h in hooks:
            h.remove()
    ref_run.params = {n: p.detach().clone() for n, p in ref.model.named_parameters()}
    d_out = rc.max_diff(run.outputs, ref_run.outputs)
    names = list(run.params)
    d_par = rc.max_diff([run.params[n] for n in names], [ref_run.params[n] for n in names])
    teacher = [p.detach() for p in ours.method.teacher.parameters()]
    d_teach = rc.max_diff(teacher, [p.detach() for p in ref.model_ema.parameters()])
    start = dict(net.named_parameters())
    moved = rc.max_diff([run.params[n] for n in names], [start[n].detach() for n in names])
    label = (
        f"ap={ap:g}"
        + (f"→{ap_after:g}" if ap_after != ap else "")
        + (" (v2 hue on both)" if v2_hue else "")
    )
    averaged = f"{count_averaged(run)}/{count_averaged(ref_run)}"
    return [label, averaged, f"{d_out:.1e}", f"{d_par:.1e}", f"{d_teach:.1e}", f"{moved:.1e}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mdtta", type=Path, help="checkout of mariodoebler/test-time-adaptation")
    parser.add_argument("--runs", type=int, nargs="*", help="indices into RUNS (default: all)")
    args = parser.parse_args()
    classes = load_cotta(args.mdtta)
    data = rc.make_data()
    net = rc.make_network(data, scale=2.5, batch_statistics=True)
    header = ["run", "averaged", "max|Δ logits|", "max|Δ θ|", "max|Δ θ_t|", "moved"]
    widths = [26, 9, 14, 9, 11, 8]
    print("  ".join(c.ljust(w) for c, w in zip(header, widths)), flush=True)
    for k in args.runs or range(len(RUNS)):  # each row as it completes (minutes per row)
        row = run_pair(classes, net, data, *RUNS[k])
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
