"""One pass over the data for every method (issue 15), runs on given domains and ``tta.score``
(issue 14): the numbers equal a per-method reference loop, resume works per segment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tta
import tta.evaluation as ev
import tta.evaluation.run as ev_run
import tta.wrapper
from tta.data import CIFARC, ArrayDomain, make_stream
from tta.methods.base import RunContext
from tta.registry import METHODS, NORMS

CORRUPTIONS = ["gaussian_noise", "fog"]
# Every built-in method but context-bn, which needs context images a plain stream does not give.
BUILT_IN = [
    n
    for n in [
        *(n for n, m in NORMS.items() if m.layer.__module__.startswith("tta.")),
        *(n for n, c in METHODS.items() if c.__module__.startswith("tta.")),
    ]
    if n not in ("source", "context-bn")
]

# One torch thread (tests/conftest.py): these networks are tiny, and thread hand-offs on a busy
# machine would dominate their timing.
pytestmark = pytest.mark.usefixtures("one_thread")


def structured_images(
    rng: np.random.Generator, n: int, k: int = 0, classes: int = 4, labels=None
) -> tuple[np.ndarray, np.ndarray]:
    """Images whose colour carries their label (so that predictions vary between methods);
    the labels are drawn first unless given."""
    if labels is None:
        labels = rng.integers(0, classes, n)
    colour = rng.uniform(0, 1, (n, 1, 1, 3))
    colour[np.arange(n), 0, 0, labels % 3] += 0.5 * (labels // 3 + 1)
    x = colour * (160 - 40 * k) + rng.normal(0, 40 + 30 * k, (n, 32, 32, 3))
    return np.clip(x, 0, 255).astype(np.uint8), labels


def write_cifar_c(root: Path, n: int = 48) -> Path:
    """A CIFAR-10-C-layout folder of structured images, n per severity."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, 4, 5 * n)
    np.save(root / "labels.npy", labels.astype(np.uint8))
    for k, name in enumerate(CORRUPTIONS):
        x, _ = structured_images(rng, 5 * n, k, labels=labels)
        np.save(root / f"{name}.npy", x)
    return root


class Tiny(nn.Module):
    """Random convolutional features and a least-squares classifier named ``fc`` (LAME)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(16, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            for bn in (self.body[1], self.body[4]):
                bn.running_mean.copy_(torch.rand(16, generator=g) * 0.5)
                bn.running_var.copy_(0.5 + torch.rand(16, generator=g))
            x, y = structured_images(np.random.default_rng(11), 256)
            f = self.body(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
            f1 = torch.cat([f, torch.ones(len(f), 1)], 1).double()
            onehot = nn.functional.one_hot(torch.from_numpy(y), 4).double()
            w = torch.linalg.lstsq(f1, onehot).solution
            self.fc.weight.copy_(w[:-1].T.float())
            self.fc.bias.copy_(w[-1].float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single-pass")
    rng = np.random.default_rng(1)
    np.savez(
        root / "src.npz",
        images=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
        labels=(np.arange(32) % 4).astype(np.int64),
    )
    write_cifar_c(root / "c")
    return root


def config(data: Path, out: Path, methods, **stream) -> dict:
    return {
        "name": "one-pass",
        "output": str(out),
        "seed": 3,
        "device": "cpu",
        "data": {
            "source": "cifar-c",
            "root": str(data / "c"),
            "corruptions": CORRUPTIONS,
            "source_data": str(data / "src.npz"),
        },
        "stream": {"order": "iid", "schedule": "reset_each_shift", "batch_size": 16, **stream},
        "methods": methods,
    }


def reference_counts(cfg: dict, model: nn.Module) -> dict[str, np.ndarray]:
    """Per method, wrong predictions per domain from the per-method loop runs had before one
    pass: a fresh copy per segment, the whole stream read again for every method."""
    from tta.config import build_config

    run = build_config(cfg)
    cfg = run.as_dict()
    s = cfg["stream"]
    stream = make_stream(
        CIFARC(cfg["data"]["root"], corruptions=CORRUPTIONS),
        s["order"],
        s["delta"],
        s["schedule"],
        s["batch_size"],
        cfg["seed"],
    )
    images = ev.source_images(run.data, run.methods, cfg["seed"])
    context = RunContext(
        seed=cfg["seed"],
        batch_size=s["batch_size"],
        device=torch.device("cpu"),
        num_classes=4,
        source_images=images,
    )
    out = {}
    for e in run.methods:
        wrong = np.zeros(len(stream.domain_names))
        for segment in stream.segments():
            adapted = tta.adapt(model, e.name, context, **e.options)
            for batch in segment:
                logits = adapted(batch.x)
                miss = (logits.argmax(1) != batch.y) | ~torch.isfinite(logits).all(1)
                np.add.at(wrong, batch.domains.numpy(), miss.numpy())
        out[e.label] = wrong
    return out


def wrong_of(res: dict) -> dict[str, np.ndarray]:
    """Wrong predictions per domain, back from the reported errors and sample counts."""
    out = {}
    for m in res["methods"]:
        names = list(m["errors"])
        out[m["label"]] = np.array(
            [round(m["errors"][d] * m["samples"][d] / 100) for d in names], dtype=float
        )
    return out


@pytest.mark.parametrize(
    "stream",
    [
        {"schedule": "reset_each_shift"},
        {"schedule": "continual", "order": "dirichlet"},
        {"schedule": "mixed"},
    ],
    ids=["reset_each_shift-iid", "continual-dirichlet", "mixed-iid"],
)
def test_one_pass_equals_the_per_method_loop_for_every_method(data, tmp_path, stream):
    methods = BUILT_IN + [{"name": "tent", "norm": "rbn", "label": "tent-rbn"}]
    cfg = config(data, tmp_path / "out", methods, **stream)
    res = tta.evaluate(cfg, model=Tiny().eval())
    expected = reference_counts(cfg, Tiny().eval())
    got = wrong_of(res)
    assert list(got) == ["source", *BUILT_IN, "tent-rbn"]
    for label, wrong in expected.items():
        assert np.array_equal(got[label], wrong), label
    # Not every method predicts alike: the comparison sees the methods' own numbers.
    assert len({tuple(w) for w in expected.values()}) > 3


def test_each_batch_is_read_once_for_all_methods(data, tmp_path, monkeypatch):
    from tta.data.cifarc import CIFARCDomain

    reads = []
    real = CIFARCDomain._read
    monkeypatch.setattr(
        CIFARCDomain, "_read", lambda self, rows: reads.append(1) or real(self, rows)
    )
    cfg = config(data, tmp_path / "out", ["tbn", "tent", "rbn"])
    res = tta.evaluate(cfg, model=Tiny().eval())
    # check_model reads one image; then every batch once, not once per method.
    assert len(reads) == 1 + res["stream"]["num_batches"]


def test_growing_methods_list_reuses_finished_units(data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    tta.evaluate(config(data, out, ["tbn"]), model=Tiny().eval())
    before = {p: p.stat().st_mtime_ns for p in (out / "units").rglob("*.json")}
    runs = []
    real = ev.run_segment
    monkeypatch.setattr(
        ev_run, "run_segment", lambda a, *r, **k: runs.append(sorted(a)) or real(a, *r, **k)
    )
    calls = []
    real_unit = ev.run_unit
    monkeypatch.setattr(
        ev_run, "run_unit", lambda *a, **k: calls.append(a[4]) or real_unit(*a, **k)
    )
    grown = tta.evaluate(config(data, out, ["tbn", "tent", "rbn"]), model=Tiny().eval())
    assert runs == [["rbn", "tent"], ["rbn", "tent"]] and calls == []  # one pass per segment
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished units kept
    fresh = tta.evaluate(config(data, tmp_path / "fresh", ["tbn", "tent", "rbn"]), model=Tiny())
    timing = ("seconds", "images_per_second")
    strip = lambda ms: [{k: v for k, v in m.items() if k not in timing} for m in ms]  # noqa: E731
    assert strip(grown["methods"]) == strip(fresh["methods"])
    # A shorter list reuses them too, and reports only what it lists.
    runs.clear()
    calls.clear()
    short = tta.evaluate(config(data, out, ["tent"]), model=Tiny().eval())
    assert [m["label"] for m in short["methods"]] == ["source", "tent"]
    assert runs == [] and calls == []


def test_a_label_whose_options_changed_is_refused(data, tmp_path):
    out = tmp_path / "out"
    tta.evaluate(config(data, out, ["tbn", {"name": "tent", "lr": 0.01}]), model=Tiny())
    with pytest.raises(ValueError, match=r"different config.*'tent' changed.*new label.*--force"):
        tta.evaluate(config(data, out, ["tbn", {"name": "tent", "lr": 0.02}]), model=Tiny())
    tta.evaluate(
        config(data, out, ["tbn", {"name": "tent", "lr": 0.02, "label": "t2"}]), model=Tiny()
    )
    with pytest.raises(ValueError, match="different config.*stream"):
        tta.evaluate(config(data, out, ["tbn"], batch_size=8), model=Tiny())


def test_unit_files_record_their_method_and_a_mismatch_is_refused(data, tmp_path):
    out = tmp_path / "out"
    tta.evaluate(config(data, out, ["tbn", "tent"]), model=Tiny())
    path = out / "units" / "tent" / "fog-5.json"
    unit = json.loads(path.read_text())
    assert unit["entry"] == {"name": "tent", "options": {}}
    unit["entry"] = {"name": "tent", "options": {"lr": 1.0}}
    path.write_text(json.dumps(unit))
    with pytest.raises(ValueError, match=r"fog-5.json.*'tent'.*--force"):
        tta.evaluate(config(data, out, ["tbn", "tent"]), model=Tiny())


def test_folders_from_before_the_new_keys_resume(data, tmp_path, monkeypatch):
    """config.json and unit files written before `precision`, `data.workers` and unit entries
    existed: the run resumes from them."""
    out = tmp_path / "out"
    first = tta.evaluate(config(data, out, ["tbn"]), model=Tiny())
    saved = json.loads((out / "config.json").read_text())
    del saved["precision"], saved["data"]["workers"]
    (out / "config.json").write_text(json.dumps(saved))
    for p in (out / "units").rglob("*.json"):
        unit = json.loads(p.read_text())
        del unit["entry"]
        p.write_text(json.dumps(unit))
    calls = []
    for name in ("run_unit", "run_segment"):  # one method missing on a segment, or several
        real = getattr(ev_run, name)
        monkeypatch.setattr(
            ev_run, name, lambda *a, _real=real, **k: calls.append(a[4]) or _real(*a, **k)
        )
    again = tta.evaluate(config(data, out, ["tbn"]), model=Tiny())
    assert calls == [] and again["methods"] == first["methods"]


def test_seconds_are_the_time_spent_in_each_method(data, tmp_path, monkeypatch):
    real = tta.wrapper.adapt_resolved  # what runs wrap each method with

    def slow_tent(model, name, *a, **k):
        adapted = real(model, name, *a, **k)
        if name == "tent":
            forward = adapted.forward

            def sleepy(x):
                import time

                time.sleep(0.2)
                return forward(x)

            adapted.forward = sleepy
        return adapted

    monkeypatch.setattr(tta.wrapper, "adapt_resolved", slow_tent)
    res = tta.evaluate(config(data, tmp_path / "out", ["tbn", "tent"]), model=Tiny())
    seconds = {m["label"]: m["seconds"] for m in res["methods"]}
    batches = res["stream"]["num_batches"]
    assert seconds["tent"] >= 0.2 * batches
    assert seconds["tbn"] < 0.2 * batches and seconds["source"] < 0.2 * batches


def test_a_method_writing_into_its_input_does_not_change_the_others(data, tmp_path, monkeypatch):
    clean = tta.evaluate(config(data, tmp_path / "clean", ["tbn", "rbn"]), model=Tiny())
    real = tta.wrapper.adapt_resolved

    def vandal(model, name, *a, **k):
        adapted = real(model, name, *a, **k)
        if name == "tbn":
            forward = adapted.forward
            adapted.forward = lambda x: forward(x.mul_(0.5))
        return adapted

    monkeypatch.setattr(tta.wrapper, "adapt_resolved", vandal)
    res = tta.evaluate(config(data, tmp_path / "out", ["tbn", "rbn"]), model=Tiny())
    errors = {m["label"]: m["errors"] for m in res["methods"]}
    assert errors["rbn"] == clean["methods"][2]["errors"]
    assert errors["source"] == clean["methods"][0]["errors"]


@contextmanager
def linear_output_dtypes() -> Iterator[list[torch.dtype]]:
    """The dtype of every ``nn.Linear`` output computed inside the block, in any copy of any
    model (a global hook: runs copy the model they are given)."""
    dtypes: list[torch.dtype] = []

    def hook(module: nn.Module, args, out) -> None:
        if isinstance(module, nn.Linear):
            dtypes.append(out.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield dtypes
    finally:
        handle.remove()


def test_precision(data, tmp_path):
    methods = ["alpha-bn", "rbn", "lame"]
    with linear_output_dtypes() as fp32_dtypes:
        fp32 = tta.evaluate(config(data, tmp_path / "a", methods), model=Tiny())
    cfg = config(data, tmp_path / "b", methods)
    cfg["precision"] = "bf16"
    with linear_output_dtypes() as bf16_dtypes:
        bf16 = tta.evaluate(cfg, model=Tiny())
    assert bf16["config"]["precision"] == "bf16"
    # bf16 ran: the classifier computed in bfloat16 (fp32 runs never do)
    assert set(fp32_dtypes) == {torch.float32} and torch.bfloat16 in bf16_dtypes
    for a, b in zip(fp32["methods"], bf16["methods"]):
        for d in a["errors"]:
            assert abs(a["errors"][d] - b["errors"][d]) <= 25  # close, not bit-identical
    cfg = config(data, tmp_path / "c", ["tbn"])
    cfg["precision"] = "fp16"
    with pytest.raises(ValueError, match="precision 'fp16' is not available on device 'cpu'.*bf16"):
        tta.evaluate(cfg, model=Tiny())
    cfg["precision"] = "fp8"
    with pytest.raises(ValueError, match=r"'precision' must be one of \['fp32', 'bf16', 'fp16'\]"):
        tta.evaluate(cfg, model=Tiny())
    assert not (tmp_path / "c").exists()


def test_every_method_runs_under_bf16():
    x = torch.rand(16, 3, 32, 32)
    for name in BUILT_IN:
        context = RunContext(seed=0, batch_size=16, num_classes=4, source_images=x)
        adapted = tta.adapt(Tiny(), name, context)
        with ev.autocast(torch.device("cpu"), "bf16"), linear_output_dtypes() as dtypes:
            assert adapted(x).shape == (16, 4), name
        assert torch.bfloat16 in dtypes, name  # the classifier computed in bfloat16


def test_run_unit_alone_reads_its_segment(data):
    stream = make_stream(CIFARC(data / "c", corruptions=CORRUPTIONS), "iid", 0.1, "continual", 16)
    (segment,) = stream.segments()
    unit = ev.run_unit(tta.adapt(Tiny(), "tbn"), segment, 2, torch.device("cpu"), "tbn")
    assert unit["seen"] == [48.0, 48.0] and unit["seconds"] > 0
    assert tta.score(tta.adapt(Tiny(), "tbn"), stream) == {
        n: 100 * w / 48 for n, w in zip(stream.domain_names, unit["wrong"])
    }


# ---------------------------------------------------------------------------------------------
# Issue 14: given domains and tta.score


def array_domains(seed: int = 5, n: int = 40) -> list[ArrayDomain]:
    rng = np.random.default_rng(seed)
    out = []
    for k, name in enumerate(["mine-a", "mine-b"]):
        x, y = structured_images(rng, n, k)
        out.append(ArrayDomain(x, y, name))
    return out


def domains_config(out: Path, **data) -> dict:
    return {
        "output": str(out),
        "seed": 1,
        "device": "cpu",
        "stream": {"batch_size": 16, "schedule": "continual", "order": "dirichlet"},
        "methods": ["tbn", "tent"],
        **({"data": data} if data else {}),
    }


def test_given_domains_run_resume_and_match_score(tmp_path, monkeypatch):
    out = tmp_path / "out"
    res = tta.evaluate(domains_config(out), model=Tiny(), domains=array_domains())
    assert res["stream"]["domains"] == ["mine-a", "mine-b"]
    for name in ("results.json", "results.csv", "summary.md", "errors.png"):
        assert (out / name).is_file()
    marker = json.loads((out / ".tta-run").read_text())["inputs"]
    assert {"images_sha256", "labels_sha256"} <= set(marker["data:mine-a"])
    # tta.score on the same stream gives the run's numbers.
    stream = make_stream(array_domains(), "dirichlet", 0.1, "continual", 16, 1)
    context = RunContext(seed=1, batch_size=16)
    for m in res["methods"][1:]:
        assert tta.score(tta.adapt(Tiny(), m["name"], context), stream) == m["errors"]
    # Resume with the same arrays: nothing runs again.
    calls = []
    real = ev.run_segment
    monkeypatch.setattr(ev_run, "run_segment", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = tta.evaluate(domains_config(out), model=Tiny(), domains=array_domains())
    assert calls == [] and again["methods"] == res["methods"]
    # Other pixels under the same names and labels: refused.
    changed = array_domains()
    changed[1]._images = changed[1]._images.copy()
    changed[1]._images[0, 0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="other inputs: data 'mine-b' changed.*--force"):
        tta.evaluate(domains_config(out), model=Tiny(), domains=changed)


def test_given_domains_with_num_samples_and_float_images(tmp_path):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 1, (60, 3, 32, 32)).astype(np.float32))
    dom = ArrayDomain(x, rng.integers(0, 4, 60), "floaty")
    res = tta.evaluate(domains_config(tmp_path / "o", num_samples=50), model=Tiny(), domains=[dom])
    assert res["methods"][0]["samples"] == {"floaty": 50}


@pytest.mark.parametrize(
    "data, domains, err, pattern",
    [
        ({"root": "/x"}, None, ValueError, r"data.root name domains, but domains= were given"),
        (
            {"source": "cifar-c", "corruptions": ["fog"]},
            None,
            ValueError,
            r"keys data.source, data.corruptions name domains",
        ),
        ({}, "not-domains", TypeError, "domains must be a list of tta.data.Domain objects"),
        ({}, [1, 2], TypeError, "make_stream takes Domain objects"),
        ({}, [], ValueError, "at least one domain"),
    ],
)
def test_given_domains_errors(tmp_path, data, domains, err, pattern):
    given = array_domains() if domains is None else domains
    with pytest.raises(err, match=pattern):
        tta.evaluate(domains_config(tmp_path / "o", **data), model=Tiny(), domains=given)
    assert not (tmp_path / "o").exists()


def test_score_checks_its_arguments():
    stream = make_stream(array_domains(), "iid", 0.1, "reset_each_shift", 16)
    with pytest.raises(TypeError, match="score needs the adapted model"):
        tta.score("tbn", stream)
    with pytest.raises(TypeError, match="score needs a tta.data.Stream"):
        tta.score(tta.adapt(Tiny(), "tbn"), [1, 2])
    with pytest.raises(ValueError, match="precision must be one of"):
        tta.score(tta.adapt(Tiny(), "tbn"), stream, precision="half")
    # Reset before each domain of reset_each_shift: the same numbers as fresh copies.
    adapted = tta.adapt(Tiny(), "tent")
    got = tta.score(adapted, stream)
    for segment, name in zip(stream.segments(), stream.domain_names):
        assert tta.score(tta.adapt(Tiny(), "tent"), segment) == {name: got[name]}


# ---------------------------------------------------------------------------------------------
# data.context_per_domain


def test_context_is_held_out_and_given_before_each_domain(tmp_path):
    held = 8
    cfg = domains_config(tmp_path / "ctx", context_per_domain=held)
    cfg["stream"] = {"batch_size": 16, "schedule": "continual", "order": "iid"}
    cfg["methods"] = ["context-bn", "tbn"]
    res = tta.evaluate(cfg, model=Tiny(), domains=array_domains())
    assert all(n == 40 - held for n in res["methods"][0]["samples"].values())
    # tbn and source: the same numbers as a run on the domains without their first samples.
    rest = [ArrayDomain(d._images[held:], d.labels[held:], d.name) for d in array_domains()]
    cfg_rest = {**cfg, "output": str(tmp_path / "rest"), "methods": ["tbn"]}
    del cfg_rest["data"]
    plain = tta.evaluate(cfg_rest, model=Tiny(), domains=rest)
    assert res["methods"][0]["errors"] == plain["methods"][0]["errors"]
    assert res["methods"][2]["errors"] == plain["methods"][1]["errors"]
    # context-bn: set_context with a domain's first samples whenever the stream enters it.
    stream = make_stream(rest, "iid", 0.1, "continual", 16, 1)
    adapted = tta.adapt(Tiny(), "context-bn")
    contexts = {d.name: d.get(np.arange(held))[0] for d in array_domains()}
    wrong, entered = np.zeros(2), None
    for batch in stream.segments()[0]:
        if batch.domain != entered:
            entered = batch.domain
            adapted.set_context(contexts[entered])
        miss = (adapted(batch.x).argmax(1) != batch.y).numpy()
        np.add.at(wrong, batch.domains.numpy(), miss)
    expected = {n: 100 * w / (40 - held) for n, w in zip(stream.domain_names, wrong)}
    assert res["methods"][1]["errors"] == expected


def test_context_errors(tmp_path):
    cfg = domains_config(tmp_path / "o", context_per_domain=8)
    cfg["stream"] = {"schedule": "mixed"}
    with pytest.raises(ValueError, match="context_per_domain .*schedule 'mixed' mixes the domains"):
        tta.evaluate(cfg, model=Tiny(), domains=array_domains())
    cfg = domains_config(tmp_path / "o", context_per_domain=40)
    with pytest.raises(ValueError, match="'mine-a' has 40 samples and data.context_per_domain"):
        tta.evaluate(cfg, model=Tiny(), domains=array_domains())
    with pytest.raises(ValueError, match="'data.context_per_domain' must be"):
        tta.evaluate(domains_config(tmp_path / "o", context_per_domain=0), model=Tiny())
