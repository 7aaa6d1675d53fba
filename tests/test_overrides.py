"""One validator and one ``key=value`` grammar: a bad value reads the same wherever it comes from
(a YAML file, a command-line override, ``tta.evaluate``), and ``tta train --arch-option`` reads
values as overrides do, with numbers as Python reads them."""

from __future__ import annotations

import math

import pytest

import tta
from tta._errors import TTAError, TTATypeError
from tta.cli import build_parser
from tta.commands.train import _option
from tta.config import SCHEMA, apply_overrides, load_config, resolve_config
from tta.data import ORDERS, SCHEDULES
from tta.options import CONFIG, OPTIONS, Option, check_value, in_range, resolve
from tta.overrides import apply_dotted, parse_override, parse_value, python_number

# (YAML text of the config, the same as an override, the same as a mapping, the error)
BAD = [
    (
        "stream:\n  batch_size: 0\n",
        "stream.batch_size=0",
        {"stream": {"batch_size": 0}},
        "config key 'stream.batch_size' must be >= 1, got 0",
    ),
    (
        "stream:\n  order: iidd\n",
        "stream.order=iidd",
        {"stream": {"order": "iidd"}},
        "config key 'stream.order' must be one of ['iid', 'dirichlet', 'sorted'], got 'iidd'. "
        "Did you mean 'iid'?",
    ),
    (
        "stream:\n  delta: lots\n",
        "stream.delta=lots",
        {"stream": {"delta": "lots"}},
        "config key 'stream.delta' must be float (Dirichlet concentration (0 sorts by label)), "
        "got 'lots' (str)",
    ),
    (
        "model:\n  num_classes: ten\n",
        "model.num_classes=ten",
        {"model": {"num_classes": "ten"}},
        "config key 'model.num_classes' must be int or null (number of classes), got 'ten' (str)",
    ),
    (
        "stream:\n  ordr: iid\n",
        "stream.ordr=iid",
        {"stream": {"ordr": "iid"}},
        "unknown config key 'stream.ordr'. Did you mean 'order'? Valid keys under 'stream': "
        "order, delta, schedule, batch_size.",
    ),
    (
        "seeed: 1\n",
        "seeed=1",
        {"seeed": 1},
        "unknown config key 'seeed'. Did you mean 'seed'? Valid keys: name, output, seed, seeds, "
        "device, precision, model, data, stream, methods, plugins.",
    ),
]


@pytest.mark.parametrize(("text", "override", "mapping", "message"), BAD)
def test_a_bad_value_reads_the_same_from_yaml_override_and_evaluate(
    tmp_path, text, override, mapping, message
):
    written = tmp_path / "bad.yaml"
    written.write_text(text, encoding="utf-8")
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    seen = []
    for attempt in (
        lambda: load_config(written),
        lambda: load_config(empty, [override]),
        lambda: tta.evaluate(mapping),
    ):
        with pytest.raises(TTAError) as err:
            attempt()
        seen.append(str(err.value))
    assert seen == [message] * 3


def test_type_errors_keep_their_kind_and_unknown_keys_theirs():
    """A wrong type is a TypeError too; an unknown config key is only a ValueError, an unknown
    method option a TypeError (as an unknown keyword argument is)."""
    with pytest.raises(TTATypeError):
        resolve_config({"stream": {"batch_size": "8"}})
    with pytest.raises(TTAError) as err:
        resolve_config({"strem": {}})
    assert not isinstance(err.value, TypeError)
    with pytest.raises(TTATypeError, match=r"unknown option 'lrr' for m\. Did you mean 'lr'\?"):
        resolve("m", {"lr": Option(0.1, float, "step")}, {"lrr": 1})


def test_the_two_styles_differ_only_where_they_did():
    nullable = Option(None, float, "a rate", in_range(0, 1), nullable=True)
    with pytest.raises(TTATypeError) as err:
        check_value("option 'r' of m", nullable, "x", OPTIONS)
    assert str(err.value) == "option 'r' of m must be float or None, got 'x' (str)"
    with pytest.raises(TTATypeError) as err:
        check_value("config key 'r'", nullable, "x", CONFIG)
    assert str(err.value) == "config key 'r' must be float or null (a rate), got 'x' (str)"
    # int → float and list → tuple in both; one item or a tuple → list only in a config.
    for style in (OPTIONS, CONFIG):
        assert check_value("v", nullable, 1, style) == 1.0
        assert check_value("v", Option((), tuple, "t"), [1, 2], style) == (1, 2)
    listed = Option([], list, "names")
    assert check_value("v", listed, "tbn", CONFIG) == ["tbn"]
    assert check_value("v", listed, ("a", "b"), CONFIG) == ["a", "b"]
    with pytest.raises(TTATypeError, match="must be list, got 'tbn'"):
        check_value("v", listed, "tbn", OPTIONS)
    # Defaults: a config gets its own copy, options the default itself.
    assert resolve_config({})["methods"] is not SCHEMA["methods"].default
    assert resolve("m", {"l": listed}, {})["l"] is listed.default


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused(bad):
    with pytest.raises(TTAError, match="option 'lr' of m must be a finite number"):
        check_value("option 'lr' of m", Option(0.1, float, "step"), bad)
    # delta's range check speaks first, as before
    with pytest.raises(TTAError, match=r"config key 'stream.delta' must be in \[0, 1000000000.0\]"):
        resolve_config({"stream": {"delta": bad}})


def test_stream_orders_and_schedules_come_from_the_data_layer():
    stream = SCHEMA["stream"]
    assert stream["order"].choices == ORDERS and stream["schedule"].choices == SCHEDULES
    assert stream["order"].doc == "iid, dirichlet or sorted"
    assert stream["order"].default in ORDERS and stream["schedule"].default in SCHEDULES


def test_overrides_set_dotted_keys_as_yaml():
    assert parse_override(" stream.batch_size = 32") == (["stream", "batch_size"], 32)
    assert parse_override("methods=[tbn, tent]") == (["methods"], ["tbn", "tent"])
    assert parse_override("output=") == (["output"], None)
    assert parse_override("x=a=b") == (["x"], "a=b")
    config = {"stream": {"order": "iid"}, "seed": 1}
    out = apply_dotted(config, ["stream.batch_size=8", "model.spec=resnet8", "seed=2"])
    assert out == {
        "stream": {"order": "iid", "batch_size": 8},
        "model": {"spec": "resnet8"},
        "seed": 2,
    }
    assert config == {"stream": {"order": "iid"}, "seed": 1}  # a copy was changed
    with pytest.raises(TTAError, match="override 'seed.x=1': 'seed' is not a section"):
        apply_dotted(out, ["seed.x=1"])
    # seeds from the command line replace the file's seed (and the other way round)
    assert apply_overrides({"seed": 1}, ["seeds=[1,2]"]) == {"seeds": [1, 2]}
    assert apply_overrides({"seeds": [1, 2]}, ["seed=3"]) == {"seed": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed", "override 'seed' must look like key=value (e.g. stream.batch_size=32)"),
        ("stream.=1", "override 'stream.=1' names no config key before '='"),
        ("methods=[tbn", "override 'methods=[tbn' has a value that is not valid YAML ("),
    ],
)
def test_bad_overrides_are_named(text, message):
    with pytest.raises(TTAError) as err:
        parse_override(text)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("lr=0.1", 0.1),
        ("width=5", 5),
        ("flag=true", True),
        ("flag=True", True),
        ("flag=False", False),
        ("opt=sgd", "sgd"),
        ("lr=1e-3", 0.001),  # a string in YAML 1.1; Python's float() reads it
        ("n=010", 10),  # octal 8 in YAML 1.1; Python's int() reads 10
        ("n=1_000", 1000),
        ("x=-2.5", -2.5),
        ("widths=[16, 32]", [16, 32]),
        ("act=null", None),
        ("a.b=c", "c"),
    ],
)
def test_train_arch_options_read_numbers_as_python_does(text, value):
    key, got = _option(text)
    assert (key, got) == (text.partition("=")[0], value)
    assert type(got) is type(value)


def test_train_arch_option_errors_go_through_argparse(capsys):
    base = ["train", "--model", "resnet8", "--data", "mnist5k", "--out", "m.pt"]
    args = build_parser().parse_args([*base, "--arch-option", "width=1e-3"])
    assert args.arch_option == [("width", 0.001)]
    for bad, shown in (
        ("width", "expected KEY=VALUE, got 'width'"),
        ("=2", "expected KEY=VALUE, got '=2'"),
        ("widths=[16,", "'widths=[16,' has a value that is not valid YAML ("),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*base, "--arch-option", bad])
        assert f"argument --arch-option: {shown}" in capsys.readouterr().err


def test_python_number_and_yaml_value():
    assert python_number("1e-3") == 0.001 and python_number("7") == 7
    assert python_number("sgd") is None and python_number("") is None
    assert math.isinf(python_number("inf"))
    assert parse_value("1e-3", "x") == "1e-3"  # plain YAML 1.1, as config overrides read it
    assert parse_value("1e-3", "x", python_numbers=True) == 0.001
    assert parse_value("  ", "x") is None
