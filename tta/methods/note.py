"""NOTE: robust continual test-time adaptation against temporal correlation (Gong et al.,
NeurIPS 2022).

Two parts: Instance-Aware BatchNorm (the default norm, ``iabn``) and a prediction-balanced
reservoir (PBRS) of test samples on which the model is adapted, so that the update sees a
class-balanced mix even when the stream arrives sorted by class:

1. predict the batch with the network in eval mode (no gradient); these logits are the output;
2. each sample, in order, enters the reservoir with its pseudo-label (argmax); when full, a sample
   of a class that is not among the largest evicts a random sample of a random largest class;
   one of a largest class replaces a random sample of its own class with probability m_c / n_c
   (m_c stored, n_c seen of that class), else it is dropped;
3. after every ``update_every`` samples seen (possibly in the middle of a batch), one optimiser
   step on the entropy of the whole reservoir, forwarded with the norm layers in train mode
   (IABN then normalises with memory-batch statistics and moves its running statistics).

The loss is the NOTE code's ``HLoss``: −p·log(p + 1e−6) averaged over the (B, K) matrix, i.e. the
mean per-sample entropy divided by the number of classes K (with the 1e−6 inside the log).
Trained: the norm layers' γ and β. The reservoir's draws (``random.choice``, ``randrange``,
``uniform``, in the authors' order) come from a ``random.Random`` seeded with ``context.seed``,
whose state is kept in ``pbrs_rng_state``; seeding Python's global ``random`` with the same seed
therefore reproduces the authors' PBRS draw for draw. The stored images live in one
(memory_size, ...) tensor; the per-class lists hold slot indices in insertion order, and the
memory batch is taken class by class in that order (the authors' ``get_memory``).

The batch loop follows the UnMix-TNS authors' port (tta_experiments/methods/note.py): the whole
batch is predicted before any of its samples enters the memory, so an update in the middle of a
batch changes only the predictions of later batches. The NOTE code predicts sample by sample, so
samples after a mid-batch update see the updated model (equal when the batch size divides
``update_every``). With ``norm="unmix-tns"`` the UnMix-TNS layers take IABN's place and update on
every forward, memory forwards included (train mode does not change them), as in that port.

Defaults (NOTE's tta.sh for CIFAR-10-C): Adam, lr 1e-4, no weight decay, memory 64, an update
every 64 samples; the IABN options (``k`` 4, ``momentum`` 0.01, given here as ``norm_momentum``
since ``momentum`` is SGD's) belong to the norm. The UnMix-TNS authors' CIFAR runs use lr 1e-5
(run.sh's ``OPTIM.LR 1e-5``).
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import nullcontext
from typing import Optional, Protocol

import torch

from tta._errors import TTAError
from tta.methods.base import norm_train_mode
from tta.methods.optim import ONE_STEP_OPTIMIZER_OPTIONS, OPTIMIZER_OPTIONS, GradientMethod
from tta.options import Option, at_least_one
from tta.registry import register_method


class _Draws(Protocol):
    def choice(self, seq: list[int]) -> int: ...
    def randrange(self, start: int, stop: int) -> int: ...
    def uniform(self, a: float, b: float) -> float: ...


def pbrs_insert(
    slots: list[list[int]], seen: list[int], capacity: int, label: int, rng: _Draws
) -> Optional[int]:
    """Offer one sample of pseudo-class ``label`` to the reservoir; return its slot or None.

    ``slots[c]``: memory slots of class c in insertion order; ``seen[c]``: samples of class c
    offered so far (counted before the decision, as the authors' ``add_instance``). A freed slot
    is reused by the new sample, which goes to the end of its class's list.
    """
    seen[label] += 1
    sizes = [len(s) for s in slots]
    occupancy = sum(sizes)
    if occupancy < capacity:
        slot = occupancy  # slots 0 .. occupancy−1 are always the ones in use
    else:
        top = max(sizes)
        largest = [c for c, n in enumerate(sizes) if n == top]
        if label not in largest:  # take the place of a sample of a largest class
            victim = rng.choice(largest)
            slot = slots[victim].pop(rng.randrange(0, sizes[victim]))
        elif rng.uniform(0, 1) <= sizes[label] / seen[label]:  # reservoir within the class
            slot = slots[label].pop(rng.randrange(0, sizes[label]))
        else:
            return None
    slots[label].append(slot)
    return slot


def note_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The NOTE code's HLoss: mean over batch and classes of −p·log(p + 1e−6)."""
    p = logits.softmax(dim=1)
    return -(p * torch.log(p + 1e-6)).mean()


@register_method
class NOTE(GradientMethod):
    name = "note"
    description = "NOTE: IABN plus entropy minimisation on a prediction-balanced reservoir"
    default_norm = "iabn"
    options = {
        **ONE_STEP_OPTIMIZER_OPTIONS,
        "lr": dataclasses.replace(
            OPTIMIZER_OPTIONS["lr"], default=1e-4, doc="learning rate (NOTE 1e-4; UnMix-TNS 1e-5)"
        ),
        "memory_size": Option(64, int, "capacity of the PBRS memory", at_least_one),
        "update_every": Option(64, int, "samples seen between two updates", at_least_one),
    }
    state_vars = (
        "memory",
        "class_slots",
        "class_seen",
        "num_seen",
        "num_updates",
        "pbrs_rng_state",
    )

    def prepare(self) -> None:
        super().prepare()
        self.memory: Optional[torch.Tensor] = None  # (memory_size, *sample shape), on first batch
        self.class_slots: Optional[list[list[int]]] = None
        self.class_seen: Optional[list[int]] = None
        self.num_seen = 0
        self.pbrs_rng_state = random.Random(self.context.seed).getstate()
        self.num_updates = 0

    def _start(self, x: torch.Tensor, num_classes: int) -> None:
        """Allocate the memory and per-class lists on the first batch; check later ones."""
        if self.memory is None:
            size = self.hparams["memory_size"]
            self.memory = torch.zeros((size, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.class_slots = [[] for _ in range(num_classes)]
            self.class_seen = [0] * num_classes
        elif self.memory.shape[1:] != x.shape[1:] or len(self.class_seen) != num_classes:
            raise TTAError(
                f"method 'note' stores test samples of shape {tuple(self.memory.shape[1:])} with "
                f"{len(self.class_seen)} classes, got a batch of shape {tuple(x.shape)} with "
                f"{num_classes} classes; reset() the model before changing the input size"
            )

    @torch.no_grad()
    def _store(self, x: torch.Tensor, pending: dict[int, int]) -> None:
        """Write the samples accepted since the last write, each slot's latest one."""
        if pending:
            slots = torch.tensor(list(pending), device=self.memory.device)
            rows = torch.tensor(list(pending.values()), device=x.device)
            self.memory.index_copy_(0, slots, x[rows].to(self.memory))
            pending.clear()

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(x)
        self._start(x, logits.shape[1])
        every, capacity = self.hparams["update_every"], self.hparams["memory_size"]
        rng = random.Random()
        rng.setstate(self.pbrs_rng_state)
        pending: dict[int, int] = {}  # memory slot -> row of x, written before each update
        for row, label in enumerate(logits.argmax(dim=1).tolist()):
            slot = pbrs_insert(self.class_slots, self.class_seen, capacity, label, rng)
            if slot is not None:
                pending[slot] = row
            self.num_seen += 1
            if self.num_seen % every == 0:
                self._store(x, pending)
                self.update()
        self._store(x, pending)
        self.pbrs_rng_state = rng.getstate()
        return logits

    def memory_batch(self) -> torch.Tensor:
        """The stored samples, class by class, each class in insertion order."""
        order = [slot for slots in self.class_slots for slot in slots]
        return self.memory[torch.tensor(order, device=self.memory.device)]

    def update(self) -> None:
        """One optimiser step of the entropy of the memory, norm layers in train mode.

        A memory of one sample is forwarded in eval mode (no batch statistics from one sample;
        the NOTE code switches to eval for the same reason)."""
        feats = self.memory_batch()
        mode = norm_train_mode(self.norm_layers.values()) if len(feats) > 1 else nullcontext()
        with torch.enable_grad(), mode:
            loss = note_entropy(self.model(feats))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.num_updates += 1
