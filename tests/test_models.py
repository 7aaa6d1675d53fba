"""Model sources: architectures against independent functional forwards, checkpoint loading and
its errors, normalisation inside the model, and tta.adapt on every model kind."""

from __future__ import annotations

import argparse
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tta
from tta.models import Normalize, NormalizedModel, load_model, save_checkpoint
from tta.models.checkpoint import read_checkpoint


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if m.affine:
                    m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                    m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model


def images(n: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _bn(sd, p, x):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
        False, 0.0, 1e-5,
    )  # fmt: skip


def reference_wrn(sd: dict, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """RobustBench WideResNet forward written from its description, from the state_dict only."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for b in (1, 2, 3):
        for i in range(blocks):
            p = f"block{b}.layer.{i}"
            stride = 2 if b > 1 and i == 0 else 1
            act = F.relu(_bn(sd, p + ".bn1", out))
            r = F.conv2d(act, sd[p + ".conv1.weight"], stride=stride, padding=1)
            r = F.conv2d(F.relu(_bn(sd, p + ".bn2", r)), sd[p + ".conv2.weight"], padding=1)
            if p + ".convShortcut.weight" in sd:
                out = F.conv2d(act, sd[p + ".convShortcut.weight"], stride=stride) + r
            else:
                out = out + r
    out = F.avg_pool2d(F.relu(_bn(sd, "bn1", out)), 8).flatten(1)
    return F.linear(out, sd["fc.weight"], sd["fc.bias"])


def reference_resnet(sd: dict, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """TTT pre-activation CIFAR ResNet forward (avg-pool + zero-channel shortcut)."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for stage in (1, 2, 3):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            r = F.conv2d(F.relu(_bn(sd, p + ".bn1", out)), sd[p + ".conv1.weight"], None, stride, 1)
            r = F.conv2d(F.relu(_bn(sd, p + ".bn2", r)), sd[p + ".conv2.weight"], padding=1)
            short = F.avg_pool2d(out, stride) if stride > 1 else out
            extra = r.shape[1] - short.shape[1]
            if extra:
                short = torch.cat([short, torch.zeros_like(short[:, :1]).repeat(1, extra, 1, 1)], 1)
            out = short + r
    out = F.avg_pool2d(F.relu(_bn(sd, "bn", out)), 8).flatten(1)
    return F.linear(out, sd["fc.weight"], sd["fc.bias"])


# -- architectures --------------------------------------------------------------------------


def robustbench_keys(blocks: int, shortcut_in_block1: bool) -> list[str]:
    """Key names of RobustBench's WideResNet state_dict, spelled out independently."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"]
    for b in (1, 2, 3):
        for i in range(blocks):
            p = f"block{b}.layer.{i}"
            keys += [f"{p}.bn1.{s}" for s in bn] + [f"{p}.conv1.weight"]
            keys += [f"{p}.bn2.{s}" for s in bn] + [f"{p}.conv2.weight"]
            if i == 0 and (b > 1 or shortcut_in_block1):
                keys.append(f"{p}.convShortcut.weight")
    return keys + [f"bn1.{s}" for s in bn] + ["fc.weight", "fc.bias"]


def test_wrn28_10_has_robustbench_keys_shapes_and_size():
    net = load_model("wrn28_10").model
    sd = net.state_dict()
    assert list(sd) == robustbench_keys(4, True)
    assert sd["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
    assert sd["block2.layer.0.conv1.weight"].shape == (320, 160, 3, 3)
    assert sd["block3.layer.3.conv2.weight"].shape == (640, 640, 3, 3)
    assert sd["fc.weight"].shape == (10, 640)
    assert sum(p.numel() for p in net.parameters()) == 36_479_194  # WRN-28-10's 36.5M
    names = dict(net.named_modules())
    for name in ("block1.layer.0.relu1", "block3.layer.3.relu2", "relu", "bn1", "fc"):
        assert name in names


def test_wrn_widen1_has_no_shortcut_in_first_stage():
    sd = load_model("wrn28_10", widen_factor=1).model.state_dict()
    assert list(sd) == robustbench_keys(4, False)


@pytest.mark.parametrize("widen", [1, 2])
def test_wrn_forward_matches_functional_reference(widen):
    model = randomize_bn(load_model("wrn28_10", widen_factor=widen))
    x = images()
    ref = reference_wrn(model.model.state_dict(), x, blocks=4)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec,blocks", [("resnet26", 4), ("resnet8", 1)])
def test_cifar_resnet_forward_matches_functional_reference(spec, blocks):
    model = randomize_bn(load_model(spec))
    sd = model.model.state_dict()
    assert sum(k.endswith(".conv1.weight") and k.startswith("layer") for k in sd) == 3 * blocks
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert convs + linears == 6 * blocks + 2  # the depth in the name
    assert sd["layer3.0.conv2.weight"].shape == (64, 64, 3, 3)
    x = images()
    torch.testing.assert_close(model(x), reference_resnet(sd, x, blocks), rtol=1e-4, atol=1e-5)


def test_resnet26_width_and_class_count():
    model = load_model("resnet26", num_classes=100, width=2)
    assert model.model.fc.weight.shape == (100, 128)
    assert model(images(1)).shape == (1, 100)


def test_seeded_init_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = load_model("resnet8", seed=3).state_dict()
    b = load_model("resnet8", seed=3).state_dict()
    c = load_model("resnet8", seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.conv1.weight"], c["model.conv1.weight"])


def test_returned_model_is_in_eval_mode_and_records_its_build():
    model = load_model("resnet8", num_classes=4, width=2)
    assert not model.training
    assert (model.spec, model.num_classes, model.arch_options) == ("resnet8", 4, {"width": 2})


def test_unknown_specs_are_named_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown model spec 'resnet27'.*Did you mean 'resnet26'"):
        load_model("resnet27")
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet1888'"):
        load_model("timm:resnet1888")
    with pytest.raises(ValueError, match=r"unknown torchvision model 'resnt18'.*'resnet18'"):
        load_model("torchvision:resnt18")
    with pytest.raises(ValueError, match=r"unknown model family 'tim'.*'timm'"):
        load_model("tim:resnet18")
    with pytest.raises(ValueError, match="'pretrained_cfg_overlay' is not an architecture option"):
        load_model("timm:resnet18", pretrained_cfg_overlay={})
    with pytest.raises(ValueError, match="give a model spec"):
        load_model()
    with pytest.raises(ValueError, match="depth must be 6N\\+2"):
        load_model("resnet8", depth=9)


# -- normalisation inside the model ---------------------------------------------------------


def test_normalisation_inside_equals_normalising_outside():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    model = randomize_bn(load_model("resnet8", mean=mean, std=std))
    x = images(3)
    outside = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.model(outside), rtol=0, atol=1e-6)
    assert torch.equal(model.state_dict()["normalize.std"], torch.tensor(std))


def test_identity_normalisation_has_no_state_and_changes_nothing():
    model = load_model("resnet8")
    assert model.normalize.is_identity
    assert not any(k.startswith("normalize.") for k in model.state_dict())
    x = images()
    assert torch.equal(model(x), model.model(x))


def test_normalize_rejects_bad_statistics():
    with pytest.raises(ValueError, match="both mean and std"):
        Normalize(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"std must be positive, got \[0.5, 0.0, 0.5\]"):
        Normalize((0.5,) * 3, (0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="mean has 2 values but std has 3"):
        Normalize((0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="input has 1 channels"):
        Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))(torch.zeros(1, 1, 4, 4))
    scalar = Normalize(0.5, (0.2, 0.4, 0.5))  # one value is broadcast to every channel
    assert scalar.mean.tolist() == [0.5, 0.5, 0.5]


# -- checkpoints ----------------------------------------------------------------------------


@pytest.fixture
def small_wrn():
    return randomize_bn(load_model("wrn28_10", widen_factor=1, seed=5))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _wrap(kind: str, sd: dict) -> object:
    if kind == "raw":
        return sd
    if kind == "dataparallel":
        return OrderedDict(("module." + k, v) for k, v in sd.items())
    if kind == "robustbench":  # {"state_dict": {"module.<key>": ...}}
        return {"state_dict": {"module." + k: v for k, v in sd.items()}}
    if kind == "compiled":
        return {"model": {"_orig_mod." + k: v for k, v in sd.items()}}
    return {kind: sd, "epoch": 7, "optimizer": {"lr": 0.1}}


@pytest.mark.parametrize(
    "kind", ["raw", "dataparallel", "robustbench", "compiled", "state_dict", "model", "net"]
)
def test_wrapped_checkpoints_round_trip(tmp_path, small_wrn, kind):
    path = tmp_path / "ckpt.pt"
    torch.save(_wrap(kind, small_wrn.model.state_dict()), path)
    loaded = load_model("wrn28_10", path, widen_factor=1)
    assert_same_weights(loaded, small_wrn)
    x = images()
    assert torch.equal(loaded(x), small_wrn.eval()(x))


def test_whole_normalized_model_state_dict_loads_with_its_statistics(tmp_path):
    model = randomize_bn(load_model("resnet8", mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1)))
    path = tmp_path / "whole.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model("resnet8", path)
    assert loaded.normalize.stats() == model.normalize.stats()
    x = images()
    assert torch.equal(loaded(x), model(x))


def test_missing_batch_counter_is_tolerated(tmp_path, small_wrn):
    sd = {k: v for k, v in small_wrn.model.state_dict().items() if "num_batches" not in k}
    torch.save(sd, tmp_path / "old.pt")
    x = images()
    assert torch.equal(load_model("wrn28_10", tmp_path / "old.pt", widen_factor=1)(x), small_wrn(x))


def test_class_count_is_taken_from_the_checkpoint(tmp_path):
    source = randomize_bn(load_model("resnet8", num_classes=7, seed=2))
    torch.save(source.model.state_dict(), tmp_path / "c7.pt")
    loaded = load_model("resnet8", tmp_path / "c7.pt")
    assert loaded.num_classes == 7
    assert torch.equal(loaded(images()), source(images()))


def test_tta_checkpoint_records_spec_classes_and_normalisation(tmp_path):
    source = randomize_bn(load_model("resnet8", num_classes=3, mean=0.5, std=0.25, width=2))
    path = save_checkpoint(
        source,
        tmp_path / "sub" / "m.pt",
        info={"note": "x", "v": torch.__version__, "n": np.int64(3)},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]  # no temporary left
    state, meta = read_checkpoint(path)
    assert meta["spec"] == "resnet8" and meta["num_classes"] == 3
    assert meta["arch_options"] == {"width": 2} and meta["info"] == {
        "note": "x",
        "v": str(torch.__version__),
        "n": 3,
    }
    assert meta["mean"] == [0.5] and meta["std"] == [0.25]  # scalars broadcast
    assert "fc.weight" in state  # bare network keys
    loaded = load_model(checkpoint=path)  # spec, classes, options, normalisation all recorded
    assert torch.equal(loaded(images()), source(images()))
    same = load_model(checkpoint=path, mean=(0.5,) * 3)  # agrees with the recorded 0.5: accepted
    assert torch.equal(same(images()), source(images()))
    with pytest.raises(ValueError, match=r"saved from model 'resnet8', not 'resnet26'"):
        load_model("resnet26", path)
    with pytest.raises(ValueError, match=r"records mean=\[0.5\].*mean=\[0.0, 0.0, 0.0\]"):
        load_model(checkpoint=path, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    with pytest.raises(
        ValueError, match="class count mismatch: .* has 3 classes but num_classes=10"
    ):
        load_model(checkpoint=path, num_classes=10)


def test_missing_file_error_shows_the_path(tmp_path):
    path = tmp_path / "nowhere" / "Standard.pt"
    with pytest.raises(FileNotFoundError, match=f"checkpoint file not found: {path}"):
        load_model("wrn28_10", path)


@pytest.mark.parametrize(
    "content",
    [
        b"<!DOCTYPE html>\n<html><head><title>Google Drive - Quota exceeded</title>",
        b"\n  <html lang='en'><body>404 Not Found</body></html>",
    ],
)
def test_html_page_is_reported_as_a_failed_download(tmp_path, content):
    path = tmp_path / "Standard.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"is an HTML page, not a torch checkpoint.*download"):
        load_model("wrn28_10", path)


def test_other_non_checkpoints_are_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 this is not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match=r"junk.pt is not a torch checkpoint \(torch.load failed"):
        load_model("resnet8", junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pt is empty \(0 bytes\)"):
        load_model("resnet8", empty)
    truncated = tmp_path / "cut.pt"
    torch.save(load_model("resnet8").model.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.pt is not a torch checkpoint"):
        load_model("resnet8", truncated)
    tensors = tmp_path / "tensor.pt"
    torch.save([torch.zeros(2)], tensors)
    with pytest.raises(ValueError, match="does not hold a state_dict: found list"):
        load_model("resnet8", tensors)


def test_pickled_objects_need_trust(tmp_path):
    source = randomize_bn(load_model("resnet8"))
    path = tmp_path / "ttt_style.pt"
    torch.save({"net": source.model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(
        ValueError, match=r"pickled Python object \(argparse.Namespace\).*trusted=True"
    ):
        load_model("resnet8", path)
    assert torch.equal(load_model("resnet8", path, trusted=True)(images()), source(images()))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = load_model("resnet8").model.state_dict()
    sd.pop("fc.bias")
    sd.pop("layer1.0.conv2.weight")
    sd["head.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_model("resnet8", tmp_path / "bad.pt")
    msg = str(err.value)
    assert "2 missing key(s): 'layer1.0.conv2.weight', 'fc.bias'" in msg
    assert "1 unexpected key(s): 'head.weight'" in msg
    many = {f"x{i}": torch.zeros(1) for i in range(12)}
    torch.save(many, tmp_path / "many.pt")
    with pytest.raises(
        ValueError, match=r"12 unexpected key\(s\): 'x0', .*'x4', \.\.\. \(7 more\)"
    ):
        load_model("resnet8", tmp_path / "many.pt")


def test_wrong_architecture_gives_a_wrong_key_error(tmp_path):
    torch.save(load_model("resnet8").model.state_dict(), tmp_path / "r8.pt")
    with pytest.raises(ValueError, match="does not fit the architecture: .*missing key"):
        load_model("resnet26", tmp_path / "r8.pt")


def test_class_count_and_shape_mismatches(tmp_path):
    torch.save(load_model("resnet8", num_classes=100).model.state_dict(), tmp_path / "c100.pt")
    with pytest.raises(ValueError, match=r"has 100 classes \('fc.weight' has shape \(100, 64\)\)"):
        load_model("resnet8", tmp_path / "c100.pt", num_classes=10)
    torch.save(load_model("resnet8", width=2).model.state_dict(), tmp_path / "w2.pt")
    with pytest.raises(ValueError, match=r"wrong shape: layer1.0.conv1.weight: checkpoint \(32,"):
        load_model("resnet8", tmp_path / "w2.pt", num_classes=10)


# -- timm / torchvision and tta.adapt on every model kind ----------------------------------


def test_timm_and_torchvision_checkpoint_round_trip(tmp_path):
    for spec in ("timm:mobilenetv3_small_050", "torchvision:resnet18"):
        source = randomize_bn(load_model(spec, num_classes=5, mean=(0.4,) * 3, std=(0.2,) * 3))
        torch.save({"state_dict": source.model.state_dict()}, tmp_path / "m.pt")
        loaded = load_model(spec, tmp_path / "m.pt", mean=(0.4,) * 3, std=(0.2,) * 3)
        assert loaded.num_classes == 5
        x = images(2)
        assert torch.equal(loaded(x), source.eval()(x))


ADAPT_KINDS = [
    ("resnet26", {}),
    ("wrn28_10", {"widen_factor": 1}),
    ("timm:mobilenetv3_small_050", {"num_classes": 10}),
    ("torchvision:resnet18", {"num_classes": 10}),
]


@pytest.mark.parametrize("spec,options", ADAPT_KINDS, ids=[s for s, _ in ADAPT_KINDS])
def test_tta_adapt_source_equals_eval_output(spec, options):
    model = randomize_bn(load_model(spec, mean=(0.5,) * 3, std=(0.25,) * 3, **options))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if spec.startswith("timm:"):
        assert any(type(m).__name__ == "BatchNormAct2d" for m in bns)
    x = images(4)
    adapted = tta.adapt(model, "source")
    assert len(adapted.adapted_layers) == len(bns)
    assert torch.equal(adapted(x), model.eval()(x))
    # test-batch statistics really replace the source ones
    assert not torch.allclose(tta.adapt(model, "tbn")(x), model(x))


def test_normalized_model_is_a_plain_sequential():
    model = load_model("resnet8")
    assert isinstance(model, NormalizedModel) and isinstance(model, nn.Sequential)
    assert [n for n, _ in model.named_children()] == ["normalize", "model"]


def test_raw_checkpoint_without_normalisation_warns(tmp_path):
    path = tmp_path / "raw.pt"
    torch.save(load_model("resnet8").model.state_dict(), path)
    with pytest.warns(UserWarning, match="records no input normalisation"):
        load_model("resnet8", path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model("resnet8", path, mean=[0.5] * 3, std=[0.25] * 3)
