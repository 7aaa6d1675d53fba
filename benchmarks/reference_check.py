"""Compare tta's ETA, EATA, SAR, DeYO and LAME with the reference implementation of
mariodoebler/test-time-adaptation ("MDTTA"), step by step, in float64.

    python benchmarks/reference_check.py /path/to/test-time-adaptation

The argument is a checkout of MDTTA (its root or its ``classification`` folder). Its method
classes are imported from there at run time; nothing of MDTTA is part of tta. Besides torch and
torchvision MDTTA's DeYO needs ``einops`` (``pip install einops``).

What is compared. Both sides get the same network, the same 20 batches of 64 images (3×32×32,
fixed seed) and the same hyper-parameters, everything in float64. The network is a CIFAR ResNet-8
with an extra fourth stage named ``layer4`` (so that SAR's and DeYO's rule "leave layer4 frozen"
is exercised), BatchNorm running statistics and affine parameters randomised, and a classifier
fitted to ten image classes (random prototypes plus noise) with confident predictions, so that
the entropy filters keep part of the samples and reject the rest. For each method the table gives

- kept: samples passing each filter over the run (``a > b / n``: first filter, both filters, all
  samples; for LAME the predictions it changes), counted on each side from that side's own
  forwards; the sides must agree;
- max|Δ out|: the largest difference of the returned outputs over all batches (logits; LAME's
  assignments Y);
- max|Δ fwd|: the same over every forward of the network inside the methods, inputs and outputs
  (DeYO's patch-shuffled images, SAR's second pass at the perturbed weights);
- max|Δ θ|: the largest difference of any network parameter after the last batch;
- moved: how far tta's parameters moved from the start (a check that adaptation happened).

A row is ``ok`` when the counts agree and every difference is at most 1e-6. EATA's Fisher
matrices are compared directly as well. SAR runs once more with a reset threshold chosen so
that its model recovery triggers mid-stream (both keep the base SGD momentum through the
recovery, as the authors' code does). Last, each method runs over the stateful norms
``unmix-tns`` and ``rbn`` (tta only: finite outputs and parameters). The exit status is 1 when
any line does not match.

How MDTTA is imported. Its method modules import modules this check does not need (model zoo,
data sets, the ``methods`` package that imports every method). Stand-ins go into ``sys.modules``
while the four method modules load:

- ``models.model``: ``ResNetDomainNet126`` (an empty class, only used in an isinstance test) and
  ``split_up_model`` (LAME's feature extractor and classifier, split as MDTTA splits a CIFAR
  ResNet: every stage up to the classifier, average pooling, flatten);
- ``datasets.data_loading``: ``get_source_loader`` returns batches of the same source images
  that tta's EATA receives (``num_samples`` of them, in batches of the test batch size), so both
  estimate the Fisher information on identical data;
- ``methods`` and ``utils``: empty packages pointing at MDTTA's folders, so that only the
  requested modules (and ``utils.registry``, ``utils.losses``) are executed.

The configuration is a plain nested namespace with the fields the methods read. MDTTA picks
CUDA when it is available; the check keeps it on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any, Optional
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

import tta
from tta.methods import entropy
from tta.models.cifar_resnet import CifarResNet, PreActBlock

SEED = 0
NUM_CLASSES = 10
BATCHES = 20
BATCH_SIZE = 64
SOURCE_IMAGES = 300
FISHER_SAMPLES = 200  # fewer than SOURCE_IMAGES, and not a multiple of the batch size
TOLERANCE = 1e-6

# Hyper-parameters given to both sides (tta's defaults, except d_margin: EATA's CIFAR-10 value;
# with 0.05 the redundancy filter rejects nearly every sample of a 10-class problem).
ENTROPY_MARGIN = 0.4
D_MARGIN = 0.4
FISHER_ALPHA = 2000.0
DEYO_MARGIN, DEYO_PLPD = 0.5, 0.2


# -- the shared network and data ------------------------------------------------------------------
class ResNet8WithLayer4(CifarResNet):
    """CIFAR ResNet-8 with a fourth stage named ``layer4`` (as the ImageNet ResNets have)."""

    def __init__(self) -> None:
        super().__init__(depth=8, num_classes=NUM_CLASSES)
        self.layer4 = nn.Sequential(PreActBlock(64, 64))

    def stages(self) -> list[nn.Module]:
        """Every module before the classifier, in order (LAME's feature extractor)."""
        pool = nn.AvgPool2d(kernel_size=8, stride=8)
        body = [self.conv1, self.layer1, self.layer2, self.layer3, self.layer4]
        return [*body, self.bn, self.relu, pool, nn.Flatten()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.Sequential(*self.stages())(x))


@dataclass
class Data:
    batches: list[torch.Tensor]  # the test stream
    source: torch.Tensor  # clean source images (EATA's Fisher)
    fit: tuple[torch.Tensor, torch.Tensor]  # labelled images the classifier is fitted on


def make_data() -> Data:
    """Images (float64, in [0, 1]) made of ten random prototypes, one per class, plus noise."""
    gen = torch.Generator().manual_seed(SEED + 1)
    prototypes = torch.rand(NUM_CLASSES, 3, 32, 32, generator=gen, dtype=torch.float64)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(NUM_CLASSES, (n,), generator=gen)
        noise = torch.rand(n, 3, 32, 32, generator=gen, dtype=torch.float64)
        return (0.6 * prototypes[labels] + 0.4 * noise).clamp(0, 1), labels

    batches = [images(BATCH_SIZE)[0] for _ in range(BATCHES)]
    return Data(batches, images(SOURCE_IMAGES)[0], images(200))


def make_network(data: Data, scale: float, batch_statistics: bool) -> nn.Module:
    """Randomly initialised network (BatchNorm statistics and affine parameters randomised, as a
    trained network has them) whose classifier tells the ten prototype classes apart.

    The classifier is fitted, in place of training, as the centred class means of the features
    of ``data.fit`` (computed with batch statistics, as tbn normalises, or with the source
    statistics, as LAME's network runs), scaled so that predictions are confident: the entropy
    filters of ETA, SAR and DeYO then keep a good part of the samples and reject the rest.
    """
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)  # the convolution initialisation
    net = ResNet8WithLayer4()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.75 + 0.5 * torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
        net.double()
        probe = copy.deepcopy(net).train(batch_statistics)
        x, labels = data.fit
        fit_classifier(net.fc, nn.Sequential(*probe.stages())(x), labels, scale)
    return net.eval()


@torch.no_grad()
def fit_classifier(fc: nn.Linear, features: torch.Tensor, labels: torch.Tensor, scale: float):
    """Set ``fc`` to the directions of the centred class means of ``features`` (one row per
    class), scaled so that the projections of the centred features have std ``scale``, with the
    bias that centres them."""
    centre = features.mean(0)
    means = torch.stack([features[labels == k].mean(0) for k in range(NUM_CLASSES)])
    directions = F.normalize(means - centre, dim=1)
    spread = ((features - centre) @ directions.T).std()
    fc.weight.copy_(directions * (scale / spread))
    fc.bias.copy_(-fc.weight @ centre)


# -- importing MDTTA with stand-ins for its data and model modules ----------------------------------
def _package(name: str, path: Optional[Path] = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    return module


def import_with_stubs(stubs: dict[str, types.ModuleType], *names: str) -> list[types.ModuleType]:
    """Import ``names`` with ``stubs`` standing in ``sys.modules``, then put ``sys.modules`` back
    as it was (the loaded modules keep what they imported)."""
    tops = {key.split(".")[0] for key in stubs}
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in tops}
    for key in saved:
        del sys.modules[key]
    sys.modules.update(stubs)
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in tops]:
            del sys.modules[key]
        sys.modules.update(saved)


MDTTA = "mariodoebler/test-time-adaptation"


def find_checkout(
    root: Path, method_file: str, subfolder: str = "classification", name: str = MDTTA
) -> Path:
    """The folder of ``root`` (itself or its ``subfolder``) that holds ``methods/<method_file>``;
    exits with a message when there is none."""
    if (root / subfolder / "methods").is_dir():
        root = root / subfolder
    if not (root / "methods" / method_file).is_file():
        sys.exit(f"{root} is not a checkout of {name} (no methods/{method_file})")
    return root


def checkout_stubs(root: Path, *packages: str, **model_attrs: Any) -> dict[str, types.ModuleType]:
    """The stand-ins every reference check imports with: ``models.model`` holding an empty
    ``ResNetDomainNet126`` class (only used in an isinstance test) and ``model_attrs``, and empty
    packages pointing at ``root``'s ``methods``, ``utils`` and each of ``packages``."""
    model_stub = types.ModuleType("models.model")
    model_stub.ResNetDomainNet126 = type("ResNetDomainNet126", (nn.Module,), {})
    for key, value in model_attrs.items():
        setattr(model_stub, key, value)
    stubs = {"models": _package("models"), "models.model": model_stub}
    for folder in ("methods", "utils", *packages):
        stubs[folder] = _package(folder, root / folder)
    return stubs


def load_reference(root: Path, source_images: torch.Tensor) -> dict[str, Any]:
    """Import MDTTA's EATA, SAR, DeYO and LAME from ``root`` with the stand-ins described above."""
    root = find_checkout(root, "eata.py")

    def get_source_loader(batch_size: int, num_samples: int, **_: Any):
        images = source_images[:num_samples] if num_samples > 0 else source_images
        loader = [(images[i : i + batch_size],) for i in range(0, len(images), batch_size)]
        return None, loader

    def split_up_model(model: nn.Module, arch_name: str, dataset_name: str):
        return nn.Sequential(*model.stages()), model.fc

    data_stub = types.ModuleType("datasets.data_loading")
    data_stub.get_source_loader = get_source_loader
    stubs = checkout_stubs(root, split_up_model=split_up_model)
    stubs.update({"datasets": _package("datasets"), "datasets.data_loading": data_stub})
    eata, sar, deyo, lame = import_with_stubs(
        stubs, "methods.eata", "methods.sar", "methods.deyo", "methods.lame"
    )
    modules = {"eata": eata, "sar": sar, "deyo": deyo, "lame": lame}
    return {
        "EATA": modules["eata"].EATA,
        "SAR": modules["sar"].SAR,
        "DeYO": modules["deyo"].DeYO,
        "LAME": modules["lame"].LAME,
    }


def reference_cfg(**overrides: Any) -> NS:
    """The configuration fields MDTTA's TTAMethod, EATA, SAR, DeYO and LAME read."""
    cfg = NS(
        MIXED_PRECISION=False,
        DATA_DIR="unused",
        MODEL=NS(
            ARCH="Standard",
            ADAPTATION="unused",
            EPISODIC=False,
            RESET_AFTER_NUM_UPDATES=0,
            CKPT_PATH="",
        ),
        CORRUPTION=NS(DATASET="cifar10_c"),
        # Adam(lr 1e-3, betas (0.9, 0.999)) as tta's default; SAR builds plain SGD from LR and
        # MOMENTUM itself. NESTEROV is off in case a method falls back to the generic SGD.
        OPTIM=NS(
            STEPS=1,
            METHOD="Adam",
            LR=1e-3,
            BETA=0.9,
            WD=0.0,
            MOMENTUM=0.9,
            DAMPENING=0.0,
            NESTEROV=False,
        ),
        TEST=NS(BATCH_SIZE=BATCH_SIZE, WINDOW_LENGTH=1),
        SOURCE=NS(NUM_SAMPLES=FISHER_SAMPLES, PERCENTAGE=1.0, NUM_WORKERS=0),
        EATA=NS(FISHER_ALPHA=FISHER_ALPHA, D_MARGIN=D_MARGIN, MARGIN_E0=ENTROPY_MARGIN),
        SAR=NS(RESET_CONSTANT_EM=0.2),
        DEYO=NS(
            REWEIGHT_ENT=True,
            REWEIGHT_PLPD=True,
            PLPD=DEYO_PLPD,
            MARGIN=DEYO_MARGIN,
            AUG_TYPE="patch",
            OCCLUSION_SIZE=112,
            ROW_START=56,
            COLUMN_START=56,
            PATCH_LEN=4,
        ),
        LAME=NS(AFFINITY="rbf", KNN=5, SIGMA=1.0, FORCE_SYMMETRY=False),
    )
    for path, value in overrides.items():  # "EATA.FISHER_ALPHA": 0.0
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


@contextlib.contextmanager
def cpu_only():
    """MDTTA selects CUDA when it is available (and older versions call .cuda()); stay on CPU."""
    with mock.patch.object(torch.cuda, "is_available", lambda: False):
        with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
            yield


# -- running both sides ---------------------------------------------------------------------------
@dataclass
class Run:
    """What one side did over the stream."""

    outputs: list[torch.Tensor] = field(default_factory=list)
    # every forward of the network (input, output), grouped by test batch
    forwards: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # after the last batch
    resets: list[int] = field(default_factory=list)  # batches after which the model was reset


def run_stream(adapting: nn.Module, net: nn.Module, batches: list[torch.Tensor]) -> Run:
    """Feed the batches through ``adapting`` (which adapts ``net``), logging what happens.

    Resets are seen through ``adapting.reset``, wrapped for the purpose (both tta's wrapper and
    MDTTA's methods reset the model by calling it).
    """
    run = Run()

    def log_forward(module, args, output) -> None:
        run.forwards[-1].append((args[0].detach().clone(), output.detach().clone()))

    reset = adapting.reset

    def logged_reset(*args, **kwargs):
        run.resets.append(len(run.outputs))
        return reset(*args, **kwargs)

    # nn.Module.__setattr__ keeps a plain function in the instance dict, shadowing the method
    adapting.reset = logged_reset
    hook = net.register_forward_hook(log_forward)
    for x in batches:
        run.forwards.append([])
        run.outputs.append(adapting(x.clone()).detach().clone())
    hook.remove()
    run.params = {n: p.detach().clone() for n, p in net.named_parameters()}
    return run


def run_ours(method: str, net: nn.Module, data: Data, options: dict[str, Any]):
    context = tta.RunContext(seed=SEED, batch_size=BATCH_SIZE, source_images=data.source)
    adapted = tta.adapt(net, method, context=context, **options)
    return run_stream(adapted, adapted.model, data.batches), adapted


def run_reference(cls, net: nn.Module, data: Data, cfg: NS, clear_momentum: bool = False):
    """Run MDTTA's method ``cls`` on a copy of ``net``. ``clear_momentum``: also empty SAR's SGD
    state when the model is reset (MDTTA's reset leaves it, see ``check_sar``)."""
    model = copy.deepcopy(net)
    model.model_preprocess = None  # read by MDTTA's EATA when it asks for the source loader
    with cpu_only():
        ref = cls(cfg, model, NUM_CLASSES)
        if clear_momentum:
            reset = ref.reset

            def reset_and_clear() -> None:
                reset()
                ref.optimizer.base_optimizer.state.clear()

            ref.reset = reset_and_clear
        if cls.__name__ == "DeYO":
            # MDTTA's DeYO draws its patch shuffle from the global generator, tta's DeYO from
            # its own generator seeded with the run's seed: the same sequence of draws.
            torch.manual_seed(SEED)
        return run_stream(ref, model, data.batches), ref


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference between two lists of tensors (inf when shapes differ)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf
    return max((float((x - y).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)


# -- counting what each filter keeps, from one side's own forwards ----------------------------------
def sar_counts(run: Run) -> tuple[int, ...]:
    """Reliable in the first pass; reliable in both passes (the second at perturbed weights)."""
    e0 = ENTROPY_MARGIN * math.log(NUM_CLASSES)
    first = second = 0
    for (_, logits), (_, logits2) in run.forwards:
        reliable = entropy(logits) < e0
        first += int(reliable.sum())
        second += int((entropy(logits2)[reliable] < e0).sum())
    return first, second


def deyo_counts(run: Run) -> tuple[int, ...]:
    """Entropy filter; entropy and PLPD filters (the second forward sees the shuffled images)."""
    first = second = 0
    for calls in run.forwards:
        logits = calls[0][1]
        keep = entropy(logits) < DEYO_MARGIN * math.log(NUM_CLASSES)
        first += int(keep.sum())
        if len(calls) > 1:
            probs = logits[keep].softmax(1)
            cls = probs.argmax(1, keepdim=True)
            plpd = probs.gather(1, cls) - calls[1][1].softmax(1).gather(1, cls)
            second += int((plpd > DEYO_PLPD).sum())
    return first, second


# -- the comparisons ------------------------------------------------------------------------------
class Row:
    """One line of the table: tta's run against MDTTA's on the same network and stream."""

    def __init__(self, name, ours: Run, ref: Run, counts, ref_counts, net: nn.Module) -> None:
        self.name = name
        total = len(ours.outputs) * BATCH_SIZE
        self.kept = " > ".join(map(str, counts)) + f" / {total}"
        if counts != ref_counts:
            self.kept += f" (MDTTA: {' > '.join(map(str, ref_counts))})"
        self.counts_agree = counts == ref_counts
        self.batches = len(ours.outputs)
        self.d_out = max_diff(ours.outputs, ref.outputs)
        flat = [[t for calls in r.forwards for call in calls for t in call] for r in (ours, ref)]
        # MDTTA's LAME runs the network in two pieces, past the hook on the whole network
        self.d_fwd = max_diff(*flat) if all(flat) else None
        names = list(ours.params)
        if names != list(ref.params):
            self.d_params = math.inf
        else:
            self.d_params = max_diff(
                [ours.params[n] for n in names], [ref.params[n] for n in names]
            )
        start = {n: p.detach() for n, p in net.named_parameters()}
        self.moved = max_diff([ours.params[n] for n in names], [start[n] for n in names])

    @property
    def ok(self) -> bool:
        worst = max(self.d_out, self.d_params, self.d_fwd or 0.0)
        return self.counts_agree and worst <= TOLERANCE

    def cells(self) -> list[str]:
        fwd = "-" if self.d_fwd is None else f"{self.d_fwd:.1e}"
        return [
            self.name,
            str(self.batches),
            self.kept,
            f"{self.d_out:.1e}",
            fwd,
            f"{self.d_params:.1e}",
            f"{self.moved:.1e}",
            "ok" if self.ok else "DIFF",
        ]


def check_eta_eata(classes, net, data) -> tuple[list[Row], list[str]]:
    """ETA is MDTTA's EATA with FISHER_ALPHA = 0 ("EATA decays to ETA")."""
    rows, notes = [], []
    for method, alpha in (("eta", 0.0), ("eata", FISHER_ALPHA)):
        options = {"entropy_margin": ENTROPY_MARGIN, "d_margin": D_MARGIN}
        if method == "eata":
            options.update(fisher_alpha=FISHER_ALPHA, fisher_samples=FISHER_SAMPLES)
        ours, adapted = run_ours(method, net, data, options)
        cfg = reference_cfg(**{"EATA.FISHER_ALPHA": alpha})
        ref, reference = run_reference(classes["EATA"], net, data, cfg)
        counts = (adapted.method.num_reliable, adapted.method.num_used)
        ref_counts = (reference.num_samples_update_1, reference.num_samples_update_2)
        rows.append(Row(method, ours, ref, counts, ref_counts, net))
        if method == "eata":
            notes.append(compare_fisher(adapted, reference))
    return rows, notes


def compare_fisher(adapted, reference) -> str:
    method = adapted.method
    names = {id(p): n for n, p in method.model.named_parameters()}
    params = [p for g in method.optimizer.param_groups for p in g["params"]]
    ours = {names[id(p)]: getattr(method, f"fisher_{i}") for i, p in enumerate(params)}
    theirs = {name: value[0] for name, value in reference.fishers.items()}
    if ours.keys() != theirs.keys():
        return f"EATA Fisher: different parameters: tta {sorted(ours)}, MDTTA {sorted(theirs)}"
    diff = max_diff([ours[n] for n in ours], [theirs[n] for n in ours])
    scale = max(float(f.abs().max()) for f in ours.values())
    return f"EATA Fisher: {len(ours)} tensors, max|F| {scale:.1e}, max|Δ F| {diff:.1e}"


def check_sar(classes, net, data) -> tuple[list[Row], list[str]]:
    """SAR with the default threshold, then with one that makes the model recovery trigger."""
    rows, notes = [], []

    def compare(label: str, threshold: float, clear_momentum: bool = False) -> Row:
        ours, _ = run_ours("sar", net, data, {"reset_threshold": threshold})
        cfg = reference_cfg(**{"SAR.RESET_CONSTANT_EM": threshold})
        ref, _ = run_reference(classes["SAR"], net, data, cfg, clear_momentum)
        if ours.resets or ref.resets:
            notes.append(f"{label}: resets after batches {ours.resets} (MDTTA {ref.resets})")
        row = Row(label, ours, ref, sar_counts(ours), sar_counts(ref), net)
        row.runs = (ours, ref)
        return row

    rows.append(compare("sar", 0.2))
    trained = tta.adapt(net, "sar").method.trainable_names()
    frozen = [n for n, _ in net.named_parameters() if n.startswith("layer4") and "bn" in n]
    notes.append(
        f"SAR/DeYO train {len(trained)} norm parameters; frozen by the layer4 rule: "
        f"{', '.join(frozen)} (both sides, or max|Δ θ| would show it)"
    )

    # A threshold under which the loss average first falls in mid-stream: from a run without
    # recovery, halfway between the running minimum and the first later value below it.
    averages = loss_averages(net, data)
    k = next((i for i in range(5, BATCHES - 3) if averages[i] < min(averages[:i])), None)
    if k is None:
        notes.append(f"SAR: no threshold triggers the recovery mid-stream (averages {averages})")
        return rows, notes
    threshold = round(0.5 * (averages[k] + min(averages[:k])), 6)
    row = compare(f"sar recovery (thr {threshold})", threshold)
    rows.append(row)
    return rows, notes


def loss_averages(net, data) -> list[float]:
    """tta's SAR moving average of the loss after each batch, without recovery."""
    context = tta.RunContext(seed=SEED, batch_size=BATCH_SIZE)
    adapted = tta.adapt(net, "sar", context=context, reset_threshold=0.0)
    averages = []
    for x in data.batches:
        adapted(x)
        averages.append(adapted.method.loss_ema)
    return averages


def check_deyo(classes, net, data) -> tuple[list[Row], list[str]]:
    options = {"entropy_margin": DEYO_MARGIN, "plpd_threshold": DEYO_PLPD, "patch_len": 4}
    ours, _ = run_ours("deyo", net, data, options)
    ref, _ = run_reference(classes["DeYO"], net, data, reference_cfg())
    shuffled = [[calls[1][0] for calls in r.forwards if len(calls) > 1] for r in (ours, ref)]
    note = (
        f"DeYO: patch-shuffled images in {len(shuffled[0])} batches (MDTTA "
        f"{len(shuffled[1])}), max|Δ x'| {max_diff(*shuffled):.1e} (the same permutations)"
    )
    return [Row("deyo", ours, ref, deyo_counts(ours), deyo_counts(ref), net)], [note]


def check_lame(classes, net, data) -> tuple[list[Row], list[str]]:
    rows = []
    with torch.no_grad():
        model_predictions = [net(x).argmax(1) for x in data.batches]

    def changed(run: Run) -> tuple[int]:
        return (sum(int((y.argmax(1) != p).sum()) for y, p in zip(run.outputs, model_predictions)),)

    # MDTTA looks up f"{AFFINITY}_affinity", and its kNN affinity class is spelt kNN_affinity.
    for kind, ref_kind in (("rbf", "rbf"), ("knn", "kNN"), ("linear", "linear")):
        ours, _ = run_ours("lame", net, data, {"affinity": kind, "knn": 5})
        cfg = reference_cfg(**{"LAME.AFFINITY": ref_kind})
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # MDTTA's kNN matrix has the default dtype
        try:
            ref, _ = run_reference(classes["LAME"], net, data, cfg)
        finally:
            torch.set_default_dtype(default)
        rows.append(Row(f"lame {kind}", ours, ref, changed(ours), changed(ref), net))
    return rows, ["LAME: 'kept' counts the predictions LAME changes (argmax Y vs the model's)"]


def check_compositions(net, lame_net, data) -> list[str]:
    """Each method over the stateful norms: finite outputs and parameters (no reference)."""
    lines = []
    context = tta.RunContext(seed=SEED, batch_size=BATCH_SIZE, source_images=data.source)
    for method in ("eta", "eata", "sar", "deyo", "lame"):
        for norm in ("unmix-tns", "rbn"):
            adapted = tta.adapt(lame_net if method == "lame" else net, method, context, norm=norm)
            finite = sum(bool(torch.isfinite(adapted(x)).all()) for x in data.batches)
            params = all(bool(torch.isfinite(p).all()) for p in adapted.model.parameters())
            ok = finite == len(data.batches) and params
            lines.append(
                f"{method:5s} norm={norm:10s} finite outputs {finite}/{len(data.batches)}, "
                f"finite parameters: {params}  {'ok' if ok else 'FAIL'}"
            )
    return lines


def print_table(rows: list[Row]) -> None:
    header = ["method", "batches", "kept", "max|Δ out|", "max|Δ fwd|", "max|Δ θ|", "moved", ""]
    cells = [r.cells() for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    for line in [header, ["-" * w for w in widths], *cells]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mdtta", type=Path, help="checkout of mariodoebler/test-time-adaptation")
    args = parser.parse_args()

    data = make_data()
    net = make_network(data, scale=2.5, batch_statistics=True)
    lame_net = make_network(data, scale=2.0, batch_statistics=False)
    classes = load_reference(args.mdtta.resolve(), data.source)
    rows, notes = [], []
    for check, network in (
        (check_eta_eata, net),
        (check_sar, net),
        (check_deyo, net),
        (check_lame, lame_net),
    ):
        new_rows, new_notes = check(classes, network, data)
        rows += new_rows
        notes += new_notes

    print(f"float64, {BATCHES} batches of {BATCH_SIZE}, tolerance {TOLERANCE:g}\n")
    print_table(rows)
    print("\n" + "\n".join(notes))
    print("\ncompositions (tta only, 20 batches):")
    lines = check_compositions(net, lame_net, data)
    print("\n".join(lines))
    failed = [r.name for r in rows if not r.ok] + [x.split()[0] for x in lines if "FAIL" in x]
    print("\nnot matching: " + "; ".join(failed) if failed else "\nall match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
