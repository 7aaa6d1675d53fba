"""Architectures of the user's own: ``model.spec: "package.module:factory"`` / ``file.py:factory``."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tta import TTAError, load_model
from tta.models.registry import build_network, check_spec, is_import_spec

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make(num_classes=3, width=4):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def fixed():  # takes no num_classes
        return nn.Linear(2, 2)

    def not_a_model():
        return 42
    """
)


@pytest.fixture
def module(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_nets.py"


def test_forms():
    assert is_import_spec("my_pkg.nets:make") and is_import_spec("nets.py:make")
    assert is_import_spec("/abs/path/nets.py:make")
    for spec in (
        "timm:resnet18",
        "torchvision:resnet50",
        "robustbench:cifar10/corruptions/Standard",
    ):
        assert not is_import_spec(spec)
    assert not is_import_spec("resnet26")


def test_module_and_file_forms_build_with_kwargs_and_num_classes(module):
    net = build_network("my_nets:make", num_classes=5, width=6)
    assert net[0].out_channels == 6 and net[-1].out_features == 5
    net = build_network(f"{module}:make")
    assert net[-1].out_features == 3
    # a factory without num_classes is called without it
    assert isinstance(build_network("my_nets:fixed", num_classes=2), torch.nn.Linear)


def test_checkpoint_round_trip_through_load_model(module, tmp_path):
    net = build_network("my_nets:make", num_classes=4)
    torch.nn.init.normal_(net[-1].weight)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model = load_model("my_nets:make", tmp_path / "w.pt", num_classes=4, mean=0.0, std=1.0)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(model(x), net.eval()(x), rtol=0, atol=0)


def test_errors_name_the_form(module):
    with pytest.raises(
        TTAError, match=r"cannot import module 'no_such_mod'.*package\.module:factory"
    ):
        build_network("no_such_mod:make")
    with pytest.raises(TTAError, match="has no callable 'mak'. Did you mean 'make'"):
        build_network("my_nets:mak")
    with pytest.raises(TypeError, match=r"returned a builtins\.int, not a torch\.nn\.Module"):
        build_network("my_nets:not_a_model")
    with pytest.raises(TypeError, match="calling it with .*unexpected keyword"):
        build_network("my_nets:make", depth=3)
    with pytest.raises(TTAError, match="no such file"):
        build_network("missing/nets.py:make")
    with pytest.raises(TTAError, match=r"unknown model family 'tim'.*package\.module:factory"):
        check_spec("tim:resnet-18")
