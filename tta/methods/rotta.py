"""RoTTA: robust test-time adaptation in dynamic scenarios (Yuan et al., CVPR 2023).

RoTTA predicts with a teacher, a moving average of the adapted network, and learns from a small
memory of past test samples instead of the test batch, so that a stream whose classes come in runs
does not pull the model towards a few classes:

- robust BN (``rbn``, the default norm): statistics move (rate ``norm_momentum`` = 0.05) only in
  the memory forwards; the teacher's prediction normalises with them as they stand;
- category-balanced sampling with timeliness and uncertainty (CSTU): every test sample enters a
  memory of N = ``memory_size`` slots under its pseudo-label (the teacher's argmax), scored
  λ_t/(1 + exp(−age/N)) + λ_u·H/ln K (H: entropy of the teacher's prediction). A class under its
  quota N/K takes a free slot or, the memory full, replaces the highest-scoring sample of the
  fullest classes; a class at its quota replaces its own highest-scoring sample; a replacement
  happens only when that score exceeds the new sample's. Every sample ages by one per arrival;
- every ``update_every`` samples (mid-batch when the batch size does not divide it, at the
  authors' per-sample positions): loss = mean over the memory of w(a)·CE(softmax(teacher(x)),
  student(strong(x))), w(a) = exp(−a)/(1 + exp(−a)), a = age/N, the norm layers of both networks
  in train mode; one optimiser step on the student's norm affine; then teacher ← (1−ν)·teacher +
  ν·student over all parameters (buffers are not averaged).

Defaults (CIFAR-10-C): N = 64, update every 64, ν = 0.001, λ_t = λ_u = 1, rbn rate 0.05 (MDTTA's
conf.py, ROTTA.*); Adam, lr 1e-3, betas (0.9, 0.999), no weight decay (MDTTA's
cfgs/cifar10_c/rotta.yaml). The UnMix-TNS authors' run.sh runs RoTTA with ``lr=1e-5`` on test
batches of 64. With ``norm="unmix-tns"`` student and teacher each have their own UnMix-TNS layers,
which update on every forward (prediction and memory forwards), and their affine trains.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from tta._errors import TTAError
from tta.methods.augment import TTAAugment
from tta.methods.base import norm_train_mode
from tta.methods.optim import ONE_STEP_OPTIMIZER_OPTIONS, GradientMethod
from tta.methods.teacher import ema_, soft_cross_entropy
from tta.norms.rbn import RobustBatchNorm
from tta.options import Option, at_least_one, in_range, non_negative
from tta.registry import register_method

# Added to the probabilities inside the log of the uncertainty, as in the authors' code.
_LOG_EPS = 1e-6


class CSTU:
    """The bookkeeping of RoTTA's category-balanced memory, over a plain list kept as state.

    ``classes[k]`` lists class k's samples in arrival order, each ``[slot, uncertainty, age]``;
    ``slot`` is the sample's row in the method's image tensor. Scores are Python floats, as in
    the authors' code, so that ties resolve the same way (the last of equal maxima is replaced).
    """

    def __init__(self, classes: list[list[list]], capacity: int, lambda_t: float, lambda_u: float):
        self.classes = classes
        self.capacity = capacity
        self.quota = capacity / len(classes)
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.log_k = math.log(len(classes))

    def score(self, age: int, uncertainty: float) -> float:
        """λ_t/(1 + exp(−age/N)) + λ_u·u/ln K: higher means staler or less certain."""
        timeliness = self.lambda_t / (1 + math.exp(-age / self.capacity))
        return timeliness + self.lambda_u * uncertainty / self.log_k

    def size(self) -> int:
        return sum(len(c) for c in self.classes)

    def add(self, label: int, uncertainty: float) -> Optional[int]:
        """Offer a sample; return the slot it now occupies, or None when it was not kept.

        Every sample in the memory, the new one included, then ages by one.
        """
        own = self.classes[label]
        if len(own) >= self.quota:
            candidates = [label]
        elif self.size() < self.capacity:
            candidates = []
        else:
            counts = [len(c) for c in self.classes]
            top = max(counts)
            candidates = [k for k, n in enumerate(counts) if n == top]
        slot: Optional[int] = None
        best: Optional[tuple[float, int, int]] = None
        for k in candidates:
            for i, (_, u, age) in enumerate(self.classes[k]):
                s = self.score(age, u)
                if best is None or s >= best[0]:
                    best = (s, k, i)
        if best is None:
            used = {item[0] for c in self.classes for item in c}
            slot = next(s for s in range(self.capacity) if s not in used)
        elif best[0] > self.score(0, uncertainty):
            slot = self.classes[best[1]].pop(best[2])[0]
        if slot is not None:
            own.append([slot, uncertainty, 0])
        for c in self.classes:
            for item in c:
                item[2] += 1
        return slot

    def contents(self) -> tuple[list[int], list[float]]:
        """Slots class by class in arrival order, and each sample's age / N."""
        items = [item for c in self.classes for item in c]
        return [item[0] for item in items], [item[2] / self.capacity for item in items]


def timeliness_weights(ages: torch.Tensor) -> torch.Tensor:
    """w(a) = exp(−a)/(1 + exp(−a)) for normalised ages a: older samples weigh less."""
    e = torch.exp(-ages)
    return e / (1 + e)


def memory_loss(student: torch.Tensor, teacher: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """Mean over the memory of w(a)·(−Σ softmax(teacher)·log_softmax(student))."""
    return (soft_cross_entropy(student, teacher) * timeliness_weights(ages)).mean()


@register_method
class RoTTA(GradientMethod):
    name = "rotta"
    description = "RoTTA: EMA teacher, category-balanced memory of test samples, robust BN"
    default_norm = "rbn"
    options = {
        **ONE_STEP_OPTIMIZER_OPTIONS,
        "memory_size": Option(64, int, "N, samples the memory holds", at_least_one),
        "update_every": Option(64, int, "samples between two updates", at_least_one),
        "nu": Option(0.001, float, "teacher EMA rate ν", in_range(0.0, 1.0)),
        "lambda_t": Option(1.0, float, "weight λ_t of the age in the memory score", non_negative),
        "lambda_u": Option(
            1.0, float, "weight λ_u of the uncertainty in the memory score", non_negative
        ),
    }
    state_vars = ("memory", "memory_images", "seen", "rng_state")

    def prepare(self) -> None:
        super().prepare()  # γ, β of the norm layers and their optimiser
        for layer in self.norm_layers.values():
            if isinstance(layer, RobustBatchNorm):
                layer.update_in_eval = False
        self.teacher, teacher_layers = self.copy_network()
        object.__setattr__(self, "teacher_layers", teacher_layers)
        self.memory: Optional[list[list[list]]] = None  # CSTU.classes, made at the first batch
        self.memory_images: Optional[torch.Tensor] = None  # (N, C, H, W), rows = CSTU slots
        self.seen = 0  # test samples so far: an update after every update_every-th

    def cstu(self) -> CSTU:
        o = self.hparams
        return CSTU(self.memory, o["memory_size"], o["lambda_t"], o["lambda_u"])

    def strong_augment(self, x: torch.Tensor) -> torch.Tensor:
        """The student's view of the memory: CoTTA's augmentation, drawn from the method's RNG."""
        augment = TTAAugment(x.shape[-2])
        return self.random(lambda g: augment(x, g))

    def _check_batch(self, x: torch.Tensor, num_classes: int) -> None:
        """Make the memory at the first batch; later batches must match it."""
        if num_classes < 2:
            raise TTAError(
                f"method 'rotta' needs at least 2 classes, the model gives {num_classes}"
            )
        if self.memory is None:
            self.memory = [[] for _ in range(num_classes)]
        elif len(self.memory) != num_classes:
            raise TTAError(
                f"the model gave {num_classes} classes, but RoTTA's memory was built for "
                f"{len(self.memory)}"
            )
        if self.memory_images is None:
            self.memory_images = x.new_zeros((self.hparams["memory_size"], *x.shape[1:]))
        elif self.memory_images.shape[1:] != x.shape[1:]:
            raise TTAError(
                f"RoTTA's memory holds images of shape {tuple(self.memory_images.shape[1:])}, "
                f"got a batch of shape {tuple(x.shape)}"
            )

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise TTAError(
                f"method 'rotta' needs image batches (B, C, H, W) for its strong augmentation, "
                f"got shape {tuple(x.shape)}"
            )
        with torch.no_grad():
            logits = self.teacher(x)
            probs = logits.softmax(1)
            labels = probs.argmax(1).tolist()
            uncertainty = (-probs * torch.log(probs + _LOG_EPS)).sum(1).tolist()
        self._check_batch(x, logits.shape[1])
        memory = self.cstu()
        pending: dict[int, int] = {}  # slot -> batch row, written before the memory is read
        for i, (label, u) in enumerate(zip(labels, uncertainty)):
            slot = memory.add(label, u)
            if slot is not None:
                pending[slot] = i
            self.seen += 1
            if self.seen % self.hparams["update_every"] == 0:
                self._store(pending, x)
                self.update()
        self._store(pending, x)
        return logits

    def _store(self, pending: dict[int, int], x: torch.Tensor) -> None:
        if pending:
            slots = torch.tensor(list(pending), device=x.device)
            rows = torch.tensor(list(pending.values()), device=x.device)
            self.memory_images[slots] = x[rows].to(self.memory_images.dtype)
            pending.clear()

    def update(self) -> None:
        """One student step on the memory, then the teacher's moving average."""
        slots, ages = self.cstu().contents()
        if slots:
            data = self.memory_images[torch.tensor(slots, device=self.memory_images.device)]
            strong = self.strong_augment(data)
            layers = [*self.norm_layers.values(), *self.teacher_layers.values()]
            with norm_train_mode(layers):
                with torch.no_grad():
                    target = self.teacher(data)
                with torch.enable_grad():
                    out = self.model(strong)
                    a = torch.tensor(ages, dtype=out.dtype, device=out.device)
                    loss = memory_loss(out, target, a)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        nu = self.hparams["nu"]
        ema_(self.teacher.parameters(), self.model.parameters(), 1.0 - nu, nu)
