"""``tta run`` on the command line: help generated from the schema, --threads, --force anywhere."""

from __future__ import annotations

import pytest
import torch

from tta.cli import build_parser, main
from tta.config import SCHEMA
from tta.sweep import schema_keys


def test_help_lists_every_config_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for key in schema_keys(SCHEMA):
        assert f"  {key} (default " in text, key
    assert "  stream.batch_size (default 64): test batch size" in text
    assert "(one of: reset_each_shift, continual, mixed, gradual)" in " ".join(text.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--force", "c.yaml", "seed=1"],
        ["run", "c.yaml", "--force", "seed=1"],
        ["run", "c.yaml", "seed=1", "--force"],
        ["run", "--threads", "2", "c.yaml", "seed=1", "--force"],
    ],
)
def test_options_anywhere_on_the_line(argv):
    args = build_parser().parse_args(argv)
    assert args.force and args.config == "c.yaml" and args.overrides == ["seed=1"]


def test_threads_is_checked_and_applied(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml"), "--threads", "0"]) == 1
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # not the count asked for: the check below sees it change
        # the thread count is set before the config is read (which then fails: no such file)
        assert main(["run", str(tmp_path / "none.yaml"), "--threads", "1"]) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
