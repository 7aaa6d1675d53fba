"""CUDA checks (``pytest -m cuda``, run by benchmarks/gpu_check.py): every method on the GPU
equals the CPU in fp32, reset and state round trips hold there, and the scoring loop makes no
host sync. Skipped without a CUDA GPU."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tta
import tta.evaluation.scoring as ev
from tta.data import ArrayDomain, make_stream
from tta.data.loader import read_batches
from tta.methods.base import RunContext

sys.path.insert(0, str(Path(__file__).parent))
from test_single_pass import BUILT_IN, Tiny, structured_images  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_fp32():
    """fp32 means fp32: no TF32 convolutions or matmuls while comparing with the CPU."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def batches(n: int = 4, size: int = 16) -> list[torch.Tensor]:
    x, _ = structured_images(np.random.default_rng(2), n * size)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    return list(x.split(size))


def context(device: torch.device) -> RunContext:
    source = batches(2)[0]
    return RunContext(
        seed=0, batch_size=16, device=device, num_classes=4, source_images=source.to(device)
    )


@pytest.mark.parametrize("method", BUILT_IN)
def test_every_method_on_cuda_equals_the_cpu(method):
    cpu = tta.adapt(Tiny(), method, context(torch.device("cpu")))
    gpu = tta.adapt(Tiny(), method, context(CUDA)).to(CUDA)
    for x in batches():
        a, b = cpu(x), gpu(x.to(CUDA)).cpu()
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (method, (a - b).abs().max())


@pytest.mark.parametrize("method", ["tbn", "rbn", "unmix-tns", "tent", "sar", "eata"])
def test_reset_and_state_round_trip_on_cuda(method):
    adapted = tta.adapt(Tiny(), method, context(CUDA)).to(CUDA)
    xs = [x.to(CUDA) for x in batches()]
    first = [adapted(x) for x in xs[:2]]
    state = copy.deepcopy(adapted.state_dict())
    after = adapted(xs[2])
    adapted.reset()
    again = [adapted(x) for x in xs[:2]]
    for a, b in zip(first, again):
        assert torch.allclose(a, b, atol=1e-5), method
    twin = tta.adapt(Tiny(), method, context(CUDA)).to(CUDA)
    twin.load_state_dict(state)
    assert torch.allclose(twin(xs[2]), after, atol=1e-5), method


@pytest.mark.parametrize("method", ["source", *BUILT_IN])
def test_the_scoring_loop_makes_no_host_sync(method):
    rng = np.random.default_rng(0)
    x, y = structured_images(rng, 96)
    domains = [ArrayDomain(x, y, "a"), ArrayDomain(x[::-1].copy(), y[::-1], "b")]
    stream = make_stream(domains, "iid", 0.1, "continual", 16)
    (segment,) = stream.segments()
    scorer = ev._Scorer(tta.adapt(Tiny(), method, context(CUDA)).to(CUDA), 2, CUDA)
    with read_batches([segment], 0, pin_memory=True) as pinned:
        ready = list(pinned)
    assert ready[0].x.is_pinned()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ev._feed({method: scorer}, segment, ready, CUDA, "fp32", None)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert scorer.result()["seen"] == [96.0, 96.0]


def test_bf16_run_and_pinned_workers(tmp_path):
    from test_loader import write_imagenet_c

    from tta.data import ImageNetC

    root = write_imagenet_c(tmp_path / "inc")
    domains = ImageNetC(root, corruptions=["fog"], transform=None)
    stream = make_stream(domains, "iid", 0.1, "continual", 8)
    with read_batches(stream.segments(), 2, pin_memory=True) as it:
        assert all(b.x.is_pinned() and b.y.is_pinned() for b in it)
    adapted = tta.adapt(Tiny(), "rbn", context(CUDA)).to(CUDA)
    fp32 = tta.score(adapted, stream, workers=2)
    adapted.reset()
    bf16 = tta.score(adapted, stream, precision="bf16", workers=2)
    assert set(bf16) == set(fp32) == {"fog-5"} and abs(bf16["fog-5"] - fp32["fog-5"]) <= 25
