"""Reading batches through worker processes (issue 15): identical batches in identical order for
any number of workers; in-memory data stays in-process; runs give identical numbers."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tta
from tta.data import CIFARC, ArrayDomain, ImageNetC, make_stream
from tta.data.loader import check_workers, cpu_cores, default_workers, read_batches

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluation import tiny_model, write_cifar_c  # noqa: E402

CORRUPTIONS = ["gaussian_noise", "fog"]
WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_imagenet_c(root: Path, per_class: int = 12, size: int = 24) -> Path:
    """An ImageNet-C-layout folder of small JPEGs: 2 corruptions x severity 5 x 3 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in CORRUPTIONS:
        for k, wnid in enumerate(WNIDS):
            folder = root / c / "5" / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                x = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                x[..., k] = np.clip(x[..., k].astype(int) + 100, 0, 255)
                Image.fromarray(x).save(folder / f"ILSVRC2012_val_{i:08d}.JPEG", quality=85)
    return root


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory) -> Path:
    return write_imagenet_c(tmp_path_factory.mktemp("inc"))


def all_batches(stream, workers: int) -> list:
    with read_batches(stream.segments(), workers) as batches:
        return list(batches)


@pytest.mark.parametrize("schedule", ["reset_each_shift", "mixed"])
def test_batches_are_identical_for_any_number_of_workers(imagenet_c, schedule):
    domains = ImageNetC(imagenet_c, corruptions=CORRUPTIONS, transform=None)
    stream = make_stream(domains, "dirichlet", 0.5, schedule, 10, seed=4)
    expected = [b for seg in stream.segments() for b in seg]
    assert len(expected) == stream.num_batches > 4
    for workers in (0, 1, 2):
        got = all_batches(stream, workers)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
            assert torch.equal(a.domains, b.domains) and a.domain == b.domain


def test_workers_run_in_other_processes_and_stop_early(imagenet_c):
    domains = ImageNetC(imagenet_c, corruptions=CORRUPTIONS, transform=None)
    stream = make_stream(domains, "iid", 0.1, "continual", 8, seed=1)
    pids = set()
    import tta.data.loader as loader

    real = loader._SegmentBatches.__getitem__

    def spy(self, i):
        batch = real(self, i)
        batch.domain = f"{batch.domain}@{os.getpid()}"
        return batch

    def alive() -> set[str]:
        """The process ids of this process's live children (the loader's workers)."""
        return {str(p.pid) for p in multiprocessing.active_children()}

    loader._SegmentBatches.__getitem__ = spy
    try:
        with read_batches(stream.segments(), 2) as batches:
            for i, batch in enumerate(batches):
                pids.add(batch.domain.split("@")[1])
                if i == 3:
                    assert i + 1 < stream.num_batches and pids <= alive()  # still running
                    break  # leaving early stops the workers
        assert not pids & alive()
    finally:
        loader._SegmentBatches.__getitem__ = real
    assert str(os.getpid()) not in pids and len(pids) >= 1


def test_in_memory_and_mapped_domains_are_read_in_process(tmp_path, monkeypatch):
    def no_loader(*a, **k):
        raise AssertionError("a DataLoader was made for data that reads in-process")

    monkeypatch.setattr(torch.utils.data, "DataLoader", no_loader)
    rng = np.random.default_rng(0)
    arrays = ArrayDomain(
        rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), np.arange(20) % 2, "a"
    )
    mapped = CIFARC(write_cifar_c(tmp_path / "c"), corruptions=["fog"])
    for domains in ([arrays], mapped):
        stream = make_stream(domains, "iid", 0.1, "continual", 8)
        assert len(all_batches(stream, 4)) == stream.num_batches


def test_default_workers_and_their_check():
    assert default_workers() == max(0, min(8, cpu_cores() - 1))
    assert check_workers(None) == default_workers() and check_workers(0) == 0
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"workers must be an integer >= 0"):
            check_workers(bad)


def test_run_on_image_files_gives_the_same_numbers_with_workers(imagenet_c, tmp_path):
    def run(workers: int) -> dict:
        cfg = {
            "output": str(tmp_path / f"w{workers}"),
            "device": "cpu",
            "data": {
                "source": "imagenet-c",
                "root": str(imagenet_c),
                "corruptions": CORRUPTIONS,
                "workers": workers,
            },
            "stream": {"batch_size": 12, "schedule": "continual"},
            "methods": ["tbn", "tent"],
        }
        return tta.evaluate(cfg, model=tiny_model(classes=3))

    in_process, pooled = run(0), run(2)
    for a, b in zip(in_process["methods"], pooled["methods"]):
        assert a["errors"] == b["errors"] and a["label"] == b["label"]
    assert pooled["config"]["data"]["workers"] == 2


def test_a_changed_workers_count_resumes(imagenet_c, tmp_path):
    cfg = {
        "output": str(tmp_path / "out"),
        "device": "cpu",
        "data": {"source": "imagenet-c", "root": str(imagenet_c), "corruptions": ["fog"]},
        "stream": {"batch_size": 12},
        "methods": ["tbn"],
    }
    first = tta.evaluate({**cfg, "data": {**cfg["data"], "workers": 0}}, model=tiny_model(3))
    again = tta.evaluate({**cfg, "data": {**cfg["data"], "workers": 2}}, model=tiny_model(3))
    assert again["methods"] == first["methods"]  # nothing ran again: same timings too
