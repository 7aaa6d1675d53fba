"""CoTTA: continual test-time domain adaptation (Wang et al., CVPR 2022).

Three copies of the network take part in each test batch:

- the student (the adapted network): every parameter is trained, by one Adam step on the soft
  cross-entropy −Σ_c p_teacher,c · log p_student,c, averaged over the batch;
- the anchor, a frozen copy of the source network: if its confidence (mean over the batch of
  the largest softmax probability) is below ``ap``, the teacher's target is the mean of its
  logits over ``n_augmentations`` augmented views (``tta.methods.augment``, one parameter draw
  per view), otherwise its logits on the batch itself;
- the teacher, an exponential moving average of the student: θ_t ← m·θ_t + (1 − m)·θ_s over
  all parameters, after the student's step.

Last, stochastic restore: each element of each trained weight and bias of the student goes back
to its source value with probability ``rst``. The prediction returned is the teacher's target
(the augmentation average when it was taken), as the authors' code returns.

The norm layers are the method's ``norm`` (default ``tbn``: the authors' BatchNorm without
running statistics normalises with the batch's). Each copy has norm layers of its own; with a
stateful norm (``unmix-tns``, ``rbn``) every forward of every copy moves its own statistics,
the teacher's once per augmented view, as in the UnMix-TNS authors' CoTTA.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.methods.augment import TTAAugment
from tta.methods.optim import OPTIMIZER_OPTIONS, GradientMethod
from tta.methods.teacher import ema_, soft_cross_entropy, symmetric_cross_entropy
from tta.options import Option, at_least_one, in_range
from tta.registry import register_method


def cotta_loss(
    student: torch.Tensor, teacher: torch.Tensor, symmetric: bool = False
) -> torch.Tensor:
    """Mean over the batch of −Σ_c softmax(teacher)_c · log_softmax(student)_c.

    ``symmetric``: the average of that and the same with the roles swapped (the variant the
    reference benchmark uses for ImageNet); gradients flow into both arguments as given.
    """
    if symmetric:
        return symmetric_cross_entropy(student, teacher, 0.5).mean(0)
    return soft_cross_entropy(student, teacher).mean(0)


@register_method
class CoTTA(GradientMethod):
    """Defaults: CIFAR-10-C, cfgs/cifar10_c/cotta.yaml of mariodoebler/test-time-adaptation
    (Adam, lr 1e-3, betas (0.9, 0.999), no weight decay, teacher momentum 0.999, rst 0.01,
    ap 0.92) and its conf.py (32 augmentations); the augmentation's own defaults are those of
    its ``get_tta_transforms`` (hard ranges, noise std 0.005)."""

    name = "cotta"
    description = "CoTTA: EMA teacher with augmentation averaging, stochastic restore"
    default_norm = "tbn"
    options = {
        **OPTIMIZER_OPTIONS,
        "teacher_momentum": Option(0.999, float, "m of the teacher EMA", in_range(0.0, 1.0)),
        "rst": Option(0.01, float, "restore probability per weight element", in_range(0.0, 1.0)),
        "ap": Option(
            0.92, float, "augment the teacher when anchor confidence < ap", in_range(0.0, 1.0)
        ),
        "n_augmentations": Option(32, int, "augmented views averaged", at_least_one),
        "soft_augmentation": Option(False, bool, "the narrower ('soft') augmentation ranges"),
        "gaussian_std": Option(
            0.005, float, "std of the augmentation's pixel noise", in_range(0.0, 1.0)
        ),
        "symmetric_loss": Option(
            False, bool, "symmetric cross-entropy (the reference's ImageNet loss)"
        ),
    }
    state_vars = ("rng_state",)

    def parameters_to_adapt(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def prepare(self) -> None:
        super().prepare()
        # Submodules: state_dict() and reset() cover both copies.
        self.anchor = self.copy_network()[0]
        self.teacher = self.copy_network()[0]
        # What stochastic restore resets: the trained weights and biases (the authors' rule),
        # each paired with its source value, the frozen anchor's parameter of the same name.
        # (Kept by name: the pairs are looked up again at each restore.)
        trained = {id(p) for p in self.parameters_to_adapt()}
        self._restorable = [
            n
            for n, p in self.model.named_parameters()
            if id(p) in trained and n.rsplit(".", 1)[-1] in ("weight", "bias")
        ]

    @torch.no_grad()
    def teacher_target(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits, averaged over augmented views when the anchor is unsure."""
        confidence = self.anchor(x).softmax(1).amax(1).mean(0)
        if confidence < self.hparams["ap"]:
            o = self.hparams
            augment = TTAAugment(x.shape[-1], o["soft_augmentation"], o["gaussian_std"])
            n = self.hparams["n_augmentations"]
            views = self.random(lambda g: [self.teacher(augment(x, g)) for _ in range(n)])
            return torch.stack(views).mean(0)
        return self.teacher(x)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """θ_t ← m·θ_t + (1 − m)·θ_s for every parameter (the products rounded separately, as
        the reference writes the sum)."""
        m = self.hparams["teacher_momentum"]
        ema_(self.teacher.parameters(), self.model.parameters(), m, 1.0 - m)

    @torch.no_grad()
    def stochastic_restore(self) -> None:
        """Each element of each trained weight and bias back to its source value with probability
        ``rst``; the masks are float32 uniform draws < rst, one tensor per parameter in order."""
        rst = self.hparams["rst"]
        if rst <= 0.0:
            return
        params, source = dict(self.model.named_parameters()), dict(self.anchor.named_parameters())
        masks = self.random(
            lambda g: [
                torch.rand(params[n].shape, generator=g, dtype=torch.float32) < rst
                for n in self._restorable
            ]
        )
        for n, mask in zip(self._restorable, masks):
            p = params[n]
            p.copy_(torch.where(mask.to(p.device), source[n], p))

    def adapt_once(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.model(x)
            target = self.teacher_target(x)
            loss = cotta_loss(logits, target, self.hparams["symmetric_loss"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.update_teacher()
        self.stochastic_restore()
        return target

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """With ``steps`` > 1 the whole update repeats and the last target is returned (the
        reference's loop)."""
        for _ in range(self.hparams["steps"]):
            target = self.adapt_once(x)
        return target
