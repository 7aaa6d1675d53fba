"""Compare tta's ``note`` (and ``iabn`` alone) with the UnMix-TNS authors' NOTE port, step by
step, in float64.

    python benchmarks/reference_note.py /path/to/unmix-tns/tta_experiments

The argument is a checkout of the UnMix-TNS code (its ``tta_experiments`` folder or the folder
above it). ``methods/note.py`` and ``methods/note_vanilla.py`` are imported from there at run
time, with stand-ins for the modules they do not need (``models.model``; ``methods`` and
``utils`` as empty packages pointing at its folders); nothing of it is part of tta.

What is compared. Both sides get the same network, the same 20 batches of 64 images and the same
hyper-parameters, everything in float64. The network is reference_check.py's CIFAR ResNet-8 with
its BatchNorm running statistics re-estimated on clean prototype images (ten classes, random
prototypes plus noise) and the classifier fitted to them. The test stream is shifted (contrast
0.7 and Gaussian noise 0.05), so that IABN corrects part of the instance statistics in the first
layers, and temporally correlated: the labels come in runs of random length (a class-sorted
stream, the setting NOTE is made for), so that the PBRS memory exercises both of its eviction
rules. The authors' PBRS draws from Python's global ``random``, seeded with the run's seed right
before the stream; tta's draws from its own ``random.Random`` with the same seed, i.e. the same
draws.

Configuration given to the authors' code (its ``conf.py`` lacks the ``NOTE`` fields): memory 64,
an update every 64 samples, BN momentum (``NOTE.ALPHA``) 0.01; Adam with lr 1e-4, betas
(0.9, 0.999), no weight decay (NOTE's defaults, tta's too). Their ``update_model`` moves the
memory to CUDA with ``feats.cuda()``; it is patched to a no-op so that everything runs on the
CPU. Rows:

- ``iabn``: tta's norm-only ``iabn`` against the authors' ``NOTEVanilla`` (IABN, no update);
- ``note``: the full method (first-batch-size 64: updates at the end of each batch);
- ``note, batch 48``: the same stream cut into 26 batches of 48 (+ one of 32), so updates fall
  inside batches;
- ``note + BN1d head``: a BatchNorm1d on the logits (L = 1: the source BN's behaviour in tta,
  an unconverted BatchNorm1d in the authors' code);
- ``note, norm=unmix-tns``: UnMix-TNS layers in place of IABN (the authors swap them in before
  NOTE is built); the authors' layers get tta's initial components, so both start equal.

Columns: max|Δ out| over the returned logits; max|Δ fwd| over every forward of the network
(memory forwards included); max|Δ θ| over the norm layers' γ, β after the last batch (names
matched up to the authors' ``._bn`` prefix); max|Δ stats| over the IABN running statistics
(UnMix-TNS components in the last row); updates on each side; moved: how far tta's γ, β moved.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import math
import random
import sys
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_check import (  # noqa: E402
    BATCH_SIZE,
    BATCHES,
    NUM_CLASSES,
    SEED,
    TOLERANCE,
    Data,
    checkout_stubs,
    cpu_only,
    find_checkout,
    fit_classifier,
    import_with_stubs,
    make_network,
    max_diff,
    run_stream,
)

import tta  # noqa: E402
import tta.methods.note  # noqa: E402, F401  (registers "note" until tta.methods imports it)
import tta.norms.iabn  # noqa: E402, F401  (registers "iabn")
from tta.norms.base import instance_stats  # noqa: E402

MEMORY, UPDATE_EVERY, ALPHA, LR = 64, 64, 0.01, 1e-4


def make_correlated_data() -> Data:
    """reference_check's prototype images; the stream shifted (contrast 0.7, noise 0.05) and
    its labels in runs of 8–120 samples; clean images to fit the network on."""
    gen = torch.Generator().manual_seed(SEED + 1)
    prototypes = torch.rand(NUM_CLASSES, 3, 32, 32, generator=gen, dtype=torch.float64)

    def images(labels: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(len(labels), 3, 32, 32, generator=gen, dtype=torch.float64)
        return (0.6 * prototypes[labels] + 0.4 * noise).clamp(0, 1)

    total, runs = BATCHES * BATCH_SIZE, []
    while sum(len(r) for r in runs) < total:
        length = int(torch.randint(8, 121, (1,), generator=gen))
        runs.append(torch.full((length,), int(torch.randint(NUM_CLASSES, (1,), generator=gen))))
    stream = images(torch.cat(runs)[:total])
    noise = torch.randn(stream.shape, generator=gen, dtype=torch.float64)
    stream = (0.5 + 0.7 * (stream - 0.5) + 0.05 * noise).clamp(0, 1)
    fit_labels = torch.randint(NUM_CLASSES, (200,), generator=gen)
    source = images(torch.randint(NUM_CLASSES, (64,), generator=gen))
    return Data(list(stream.split(BATCH_SIZE)), source, (images(fit_labels), fit_labels))


def calibrate(net: nn.Module, data: Data, scale: float = 2.5) -> nn.Module:
    """Re-estimate the BatchNorm statistics on the clean fitting images (one cumulative
    batch), then fit the classifier again as reference_check does (centred class means)."""
    x, labels = data.fit
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        net.train()(x)
        net.eval()
        for m in norms:
            m.momentum = 0.1
        fit_classifier(net.fc, nn.Sequential(*net.stages())(x), labels, scale)
    return net


class WithHead(nn.Module):
    """The network followed by a BatchNorm1d on its logits (randomised statistics)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.head = nn.BatchNorm1d(NUM_CLASSES).double()
        gen = torch.Generator().manual_seed(SEED + 2)
        with torch.no_grad():
            self.head.running_mean.copy_(0.3 * torch.randn(NUM_CLASSES, generator=gen))
            self.head.running_var.copy_(1.0 + torch.rand(NUM_CLASSES, generator=gen))
            self.head.weight.copy_(1.0 + 0.2 * torch.randn(NUM_CLASSES, generator=gen))
            self.head.bias.copy_(0.2 * torch.randn(NUM_CLASSES, generator=gen))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


def load_reference(root: Path) -> dict[str, Any]:
    """Import the authors' NOTE, NOTEVanilla and UnMix-TNS layers from ``root``."""
    root = find_checkout(root, "note.py", "tta_experiments", "the UnMix-TNS code")
    spec = importlib.util.spec_from_file_location("unmixtns", root / "unmixtns.py")
    unmixtns = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unmixtns)
    stubs = {**checkout_stubs(root), "unmixtns": unmixtns}
    note, vanilla = import_with_stubs(stubs, "methods.note", "methods.note_vanilla")
    return {"NOTE": note.NOTE, "NOTEVanilla": vanilla.NOTEVanilla, "unmixtns": unmixtns}


def reference_cfg() -> NS:
    """The fields the authors' TTAMethod, NOTE and NOTEVanilla read."""
    return NS(
        MODEL=NS(EPISODIC=False, RESET_AFTER_NUM_UPDATES=0),
        CORRUPTION=NS(DATASET="cifar10_c"),
        OPTIM=NS(
            STEPS=1,
            METHOD="Adam",
            LR=LR,
            BETA=0.9,
            WD=0.0,
            MOMENTUM=0.9,
            DAMPENING=0.0,
            NESTEROV=False,
        ),  # fmt: skip
        TEST=NS(BATCH_SIZE=BATCH_SIZE, WINDOW_LENGTH=1),
        NOTE=NS(MEMORY_SIZE=MEMORY, UPDATE_FREQUENCY=UPDATE_EVERY, ALPHA=ALPHA),
    )


def stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Running statistics / UnMix-TNS components by tta-style name (``._bn`` dropped)."""
    out = {}
    for name, buf in model.named_buffers():
        name = name.replace("._bn.", ".")
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("running_mean", "running_var"):
            out[name] = buf
        elif leaf == "components":  # tta's UnMix-TNS: [μ_k | σ²_k]
            c = buf.shape[1] // 2
            out[name[: -len("components")] + "running_means_mat"] = buf[:, :c]
            out[name[: -len("components")] + "running_vars_mat"] = buf[:, c:]
        elif leaf in ("running_means_mat", "running_vars_mat"):
            out[name] = buf
    return out


def norm_params(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    """γ, β of the given norm layers by tta-style name (the authors' ``._bn`` dropped)."""
    found = {n.replace("._bn.", "."): p.detach().clone() for n, p in model.named_parameters()}
    wanted = [f"{layer}.{leaf}" for layer in layers for leaf in ("weight", "bias")]
    return {n: found[n] for n in wanted if n in found}


def corrections(net: nn.Module, x: torch.Tensor) -> list[str]:
    """Per IABN layer, the fraction of (sample, channel) whose instance mean / variance lies
    outside the shrinkage band (i.e. that IABN corrects) on the batch ``x``."""
    adapted, out = tta.adapt(net, "iabn"), []

    def hook(layer, args, _) -> None:
        h = args[0]
        length = h[0, 0].numel()
        if length == 1:
            return
        mu, var = instance_stats(h)
        var = var * (length / (length - 1))
        spread = layer.running_var + layer.eps
        band_mu = layer.k * torch.sqrt(spread / length)
        band_var = layer.k * spread * math.sqrt(2 / (length - 1))
        far_mu = ((mu - layer.running_mean).abs() > band_mu).double().mean()
        far_var = ((var - layer.running_var).abs() > band_var).double().mean()
        out.append(f"{float(far_mu):.2f}/{float(far_var):.2f}")

    for name in adapted.adapted_layers:
        adapted.model.get_submodule(name).register_forward_hook(hook)
    with torch.no_grad():
        adapted(x)
    return out


def compare(label, net, ref, batches, norm=None, vanilla=False) -> tuple[list[str], bool, Any]:
    context = tta.RunContext(seed=SEED, batch_size=BATCH_SIZE)
    options = {} if norm is None else {"norm": norm}
    adapted = tta.adapt(net, "iabn" if vanilla else "note", context=context, **options)
    layers = list(adapted.adapted_layers)
    start = norm_params(adapted.model, layers)
    ours = run_stream(adapted, adapted.model, batches)

    model = copy.deepcopy(net)
    with cpu_only():
        if norm == "unmix-tns":  # the authors swap UnMix-TNS in first, then build NOTE
            ref["unmixtns"].replace_bn_layers(model, K=16, bs=BATCH_SIZE, bs_max=64)
            ours_start = stats(tta.adapt(net, "note", context=context, norm=norm).model)
            with torch.no_grad():
                for name, buf in model.named_buffers():
                    if name in ours_start:
                        buf.copy_(ours_start[name])
        reference = ref["NOTEVanilla" if vanilla else "NOTE"](reference_cfg(), model, NUM_CLASSES)
        random.seed(SEED)  # the authors' PBRS draws from the global generator
        theirs = run_stream(reference, model, batches)

    p_ours, p_ref = norm_params(adapted.model, layers), norm_params(model, layers)
    s_ours, s_ref = stats(adapted.model), stats(model)
    d_params = (
        max_diff([p_ours[n] for n in p_ours], [p_ref[n] for n in p_ours])
        if p_ours.keys() == p_ref.keys()
        else math.inf
    )
    d_stats = (
        max_diff([s_ours[n] for n in s_ours], [s_ref[n] for n in s_ours])
        if s_ours.keys() <= s_ref.keys()
        else math.inf
    )
    fwd = [[t for calls in r.forwards for call in calls for t in call] for r in (ours, theirs)]
    d_out, d_fwd = max_diff(ours.outputs, theirs.outputs), max_diff(*fwd)
    updates = (
        sum(len(calls) - 1 for calls in ours.forwards),
        sum(len(calls) - 1 for calls in theirs.forwards),
    )
    moved = max_diff([p_ours[n] for n in p_ours], [start[n] for n in p_ours])
    ok = updates[0] == updates[1] and max(d_out, d_fwd, d_params, d_stats) <= TOLERANCE
    cells = [
        label,
        str(len(batches)),
        f"{updates[0]} ({updates[1]})",
        f"{d_out:.1e}",
        f"{d_fwd:.1e}",
        f"{d_params:.1e}",
        f"{d_stats:.1e}",
        f"{moved:.1e}",
        "ok" if ok else "DIFF",
    ]
    return cells, ok, adapted.method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("unmixtns", type=Path, help="checkout of the UnMix-TNS code")
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = make_correlated_data()
    net = calibrate(make_network(data, scale=2.5, batch_statistics=False), data)
    ref = load_reference(args.unmixtns.resolve())
    stream = torch.cat(data.batches)
    by48 = list(stream.split(48))
    rows = [
        compare("iabn (note_vanilla)", net, ref, data.batches, vanilla=True),
        compare("note", net, ref, data.batches),
        compare("note, batch 48", net, ref, by48),
        compare("note + BN1d head", WithHead(net), ref, data.batches),
        compare("note, norm=unmix-tns", net, ref, data.batches, norm="unmix-tns"),
    ]
    with torch.no_grad():
        frozen = tta.adapt(net, "iabn")
        labels = torch.cat([frozen(x).argmax(1) for x in data.batches])
    header = ["run", "batches", "updates", "max|Δ out|", "max|Δ fwd|", "max|Δ θ|", "max|Δ stats|"]
    header += ["moved", ""]
    cells = [c for c, _, _ in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    counts = torch.bincount(labels, minlength=NUM_CLASSES).tolist()
    print(f"float64, {len(stream)} samples, tolerance {TOLERANCE:g}; predictions of the network")
    print(f"with IABN (no update) per class over the stream: {counts}")
    print("IABN corrects μ/σ² (fraction of sample-channels, first batch, per layer): ", end="")
    print(" ".join(corrections(net, data.batches[0])) + "\n")
    for line in [header, ["-" * w for w in widths], *cells]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    note = rows[1][2]
    stored = [len(s) for s in note.class_slots]
    print(f"\nPBRS of 'note' after the stream (tta), per pseudo-class: stored {stored}, ", end="")
    print(f"offered {note.class_seen}")
    failed = [c[0] for c, ok, _ in rows if not ok]
    print("\nnot matching: " + "; ".join(failed) if failed else "\nall match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
