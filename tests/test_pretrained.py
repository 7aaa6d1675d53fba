"""Pretrained weights through each library's own loader, tested offline: files are placed where
torchvision, timm (Hugging Face cache) and RobustBench look first, and the network is cut off so
that any download attempt fails (and the offline errors can be checked)."""

from __future__ import annotations

import socket
import sys

import pytest
import torch

import tta
from tta._errors import TTAError

# -- no network, private caches --------------------------------------------------------------


def _offline(*args, **kwargs):
    raise OSError("network disabled in tests")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Private TORCH_HOME / HF cache / XDG cache, Hugging Face offline, sockets refused."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", _offline)
    monkeypatch.setattr(socket, "create_connection", _offline)
    monkeypatch.setattr(socket, "getaddrinfo", _offline)
    return tmp_path


def _random_state(network: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The network's state with every float tensor moved off its default initialisation (so a
    model that ignored the file would differ); BatchNorm variances stay positive."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in network.state_dict().items():
        if value.is_floating_point():
            noise = torch.rand(value.shape, generator=gen)
            value = 0.5 + noise if key.endswith("running_var") else value + 0.02 * (noise - 0.5)
        out[key] = value.clone()
    return out


def _assert_stats(model, mean, std) -> None:
    got_mean, got_std = model.normalize.stats()
    assert got_mean == pytest.approx(list(mean)) and got_std == pytest.approx(list(std))


def _assert_weights_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


# -- torchvision -------------------------------------------------------------------------------


def test_torchvision_weights_load_from_the_torch_home_cache(offline):
    import torchvision

    member = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cache = offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = _random_state(torchvision.models.resnet50(), seed=1)
    torch.save(state, cache / "resnet50-0676ba61.pth")  # the name the enum's URL ends with
    assert member.url.endswith("/resnet50-0676ba61.pth")

    model = tta.load_model("torchvision:resnet50", weights="IMAGENET1K_V1")
    _assert_weights_equal(model.model, state)
    meta = member.transforms()
    _assert_stats(model, meta.mean, meta.std)
    assert model.num_classes == 1000 and model.spec == "torchvision:resnet50"

    # an explicit mean/std wins, with a warning because it differs from the weights'
    with pytest.warns(UserWarning, match=r"trained with mean=\[0.485, 0.456, 0.406\]"):
        other = tta.load_model(
            "torchvision:resnet50", weights="IMAGENET1K_V1", mean=[0.5] * 3, std=[0.25] * 3
        )
    assert other.normalize.stats() == ([0.5] * 3, [0.25] * 3)


def test_torchvision_offline_error_names_file_url_and_place(offline):
    where = offline / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(TTAError) as info:
        tta.load_model("torchvision:resnet18", weights="DEFAULT")
    text = str(info.value)
    assert "torchvision:resnet18 weights ResNet18_Weights.IMAGENET1K_V1" in text
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in text
    assert f"place it at {where}" in text and "\n" not in text


def test_torchvision_weights_names_are_checked():
    with pytest.raises(TTAError, match=r"unknown weights .*'IMAGENET1K_V3'.*'IMAGENET1K_V1'"):
        tta.load_model("torchvision:resnet18", weights="IMAGENET1K_V3")
    with pytest.raises(TTAError, match=r"have 1000 classes but num_classes=10"):
        tta.load_model("torchvision:resnet18", weights="DEFAULT", num_classes=10)


# -- timm --------------------------------------------------------------------------------------


def test_timm_pretrained_from_a_local_file_through_pretrained_cfg_overlay(offline):
    import timm

    state = _random_state(timm.create_model("resnet18"), seed=2)
    path = offline / "resnet18-weights.pth"
    torch.save(state, path)
    model = tta.load_model(
        "timm:resnet18", checkpoint=path, pretrained=True, pretrained_tag="tv_in1k"
    )
    _assert_weights_equal(model.model, state)
    cfg = model.model.pretrained_cfg
    assert cfg["tag"] == "tv_in1k" and cfg["file"] == str(path)
    _assert_stats(model, cfg["mean"], cfg["std"])


def test_timm_pretrained_from_a_warm_hugging_face_cache(offline):
    import timm
    from safetensors.torch import save_file

    state = _random_state(timm.create_model("resnet50"), seed=3)
    repo = offline / "hf" / "hub" / "models--timm--resnet50.a1_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))

    model = tta.load_model("timm:resnet50", pretrained=True)
    _assert_weights_equal(model.model, state)
    cfg = model.model.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/resnet50.a1_in1k"
    _assert_stats(model, cfg["mean"], cfg["std"])


def test_timm_offline_error_names_file_url_and_place(offline):
    with pytest.raises(TTAError) as info:
        tta.load_model("timm:resnet18", pretrained=True)
    text = str(info.value)
    assert "timm:resnet18 (weights timm/resnet18.a1_in1k) needs the file model.safetensors" in text
    assert "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in text
    assert "checkpoint=<file> with pretrained=True" in text
    assert str(offline / "hf" / "hub" / "models--timm--resnet18.a1_in1k") in text
    assert "\n" not in text


def test_timm_pretrained_tags_and_files_are_checked(offline):
    with pytest.raises(TTAError, match=r"unknown pretrained_tag for timm:resnet18 'nope'"):
        tta.load_model("timm:resnet18", pretrained_tag="nope")
    with pytest.raises(TTAError, match=r"another architecture"):
        tta.load_model("timm:resnet18", pretrained_tag="resnet50.a1_in1k")
    with pytest.raises(TTAError, match=r"checkpoint file not found: .*missing\.pth"):
        tta.load_model("timm:resnet18", offline / "missing.pth", pretrained=True)
    wrong = offline / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(TTAError, match=r"wrong\.pth could not be loaded as the pretrained weights"):
        tta.load_model("timm:resnet18", wrong, pretrained=True)


# -- keyword combinations ----------------------------------------------------------------------


def test_each_source_keyword_belongs_to_its_library():
    with pytest.raises(TTAError, match=r"weights='DEFAULT' is for torchvision:<name> specs"):
        tta.load_model("timm:resnet18", weights="DEFAULT")
    with pytest.raises(TTAError, match=r"pretrained=True / pretrained_tag are for timm"):
        tta.load_model("torchvision:resnet18", pretrained=True)
    with pytest.raises(TTAError, match=r"model_dir is RobustBench's checkpoint folder"):
        tta.load_model("wrn28_10", model_dir="models")
    with pytest.raises(TTAError, match=r"give weights='DEFAULT' or checkpoint='x.pt'"):
        tta.load_model("torchvision:resnet18", "x.pt", weights="DEFAULT")
    with pytest.raises(TTAError, match=r"leave mean and std unset"):
        tta.load_model("robustbench:cifar10/corruptions/Standard", mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(TTAError, match=r"must be robustbench:<dataset>/<threat_model>/<name>"):
        tta.load_model("robustbench:Standard")
    with pytest.raises(TTAError, match=r"unknown RobustBench dataset .*'cifar11'.*'cifar10'"):
        tta.load_model("robustbench:cifar11/corruptions/Standard")


def test_robustbench_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(TTAError) as info:
        tta.load_model("robustbench:cifar10/corruptions/Standard")
    assert "needs the robustbench package" in str(info.value)
    assert 'install it with: pip install "tta[robustbench]"' in str(info.value)


# -- RobustBench -------------------------------------------------------------------------------


def _robustbench():
    try:
        import robustbench.utils  # noqa: F401
    except ImportError as err:
        pytest.skip(f"robustbench is not importable: {err}")


def test_robustbench_standard_loads_from_its_model_dir_layout(offline):
    _robustbench()
    from tta.models.wide_resnet import WideResNet

    state = _random_state(WideResNet(depth=28, widen_factor=10, num_classes=10), seed=4)
    folder = offline / "xdg" / "tta" / "robustbench" / "cifar10" / "corruptions"  # the default
    folder.mkdir(parents=True)
    torch.save(state, folder / "Standard.pt")

    model = tta.load_model("robustbench:cifar10/corruptions/Standard")
    assert model.normalize.is_identity and model.num_classes == 10
    _assert_weights_equal(model.model, state)
    ours = tta.load_model("wrn28_10", folder / "Standard.pt")
    # the same file as a checkpoint of the zoo's architecture (how a saved model reloads)
    local = tta.load_model("robustbench:cifar10/corruptions/Standard", folder / "Standard.pt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-5)
        assert torch.allclose(local(x), expected, rtol=1e-5, atol=1e-5)


def test_robustbench_offline_error_names_file_url_and_place(offline):
    _robustbench()
    where = offline / "rb" / "cifar10" / "corruptions" / "Standard.pt"
    with pytest.raises(TTAError) as info:
        tta.load_model("robustbench:cifar10/corruptions/Standard", model_dir=offline / "rb")
    text = str(info.value)
    assert "robustbench:cifar10/corruptions/Standard needs the file Standard.pt" in text
    assert "https://drive.google.com/uc?id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC" in text
    assert f"place it at {where}" in text and "\n" not in text
    with pytest.raises(TTAError, match=r"unknown RobustBench model 'Standrd'.*'Standard'"):
        tta.load_model("robustbench:cifar10/corruptions/Standrd")
