"""The example a new user copies for their own data runs as shipped and scores every domain."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_evaluate_own_data_example(tmp_path, monkeypatch, capsys):
    out = tmp_path / "own"
    monkeypatch.setattr(sys, "argv", ["evaluate_own_data.py", "--small", "--out", str(out)])
    runpy.run_path(str(ROOT / "examples/evaluate_own_data.py"), run_name="__main__")
    text = capsys.readouterr().out
    for order in ("iid", "dirichlet"):
        assert (Path(f"{out}-{order}") / "results.json").is_file()
        assert f"{order} stream: online error (%) per domain" in text
    for label in ("source", "tbn", "unmix-tns", "tent", "note"):
        assert f"{label}: clean " in text
    assert "tent by hand, Dirichlet stream: {'clean': " in text


def test_public_stream_attributes_are_in_help():
    import pydoc

    from tta.data import Stream

    text = pydoc.render_doc(Stream)
    for name in ("domains", "domain_names", "config", "segments", "num_batches", "label_stats"):
        assert name in text, name
