r"""Per-step losses: what a task asks the readout's output ``o[t]`` to match (issue #18 item 1).

Both rules learn from a per-step loss ``L[t] = ℓ(o[t], target[t])``, a batch mean:

* S-TLLR's learning signal is ``δ[t] = ∂L[t]/∂y[t]``: the output error ``∂L[t]/∂o[t]``
  (:meth:`StepLoss.error`) sent down within step ``t`` (``bp``) or by a fixed random matrix
  (``dfa``); with ``loss="sum_output"`` the output error of every window step is
  ``∂ℓ(Σ_t o[t], target)/∂(Σ_t o[t])``.
* BPTT differentiates the same values (:meth:`StepLoss.values`) through time.

:class:`CrossEntropy` (class labels, the default) has its error in closed form,
``softmax(o) − onehot`` over the batch; :class:`MeanSquaredError` (regression targets,
``mean((o − y)²)`` over the batch and the outputs) too; any other differentiable ``ℓ`` is a
:class:`CallableLoss`, whose error autograd computes.

Targets: one per sample (``[B]`` class labels, ``[B, C]`` regression targets) or one per step
(``[T, B]``, ``[T, B, C]``); a per-sample target holds at every step, and ``sum_output`` uses
the last step's.

>>> o = torch.tensor([[[2.0, 0.0]]])  # one step, one sample, two outputs
>>> MeanSquaredError().values(o, torch.tensor([[[1.0, 0.0]]])).tolist()
[0.5]
>>> total, err = MeanSquaredError().error(o, torch.tensor([[[1.0, 0.0]]]))
>>> float(total), err.tolist()
(0.5, [[[1.0, 0.0]]])
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.errors import StllrError

__all__ = ["log_softmax", "StepLoss", "CrossEntropy", "MeanSquaredError", "CallableLoss", "get_step_loss", "STEP_LOSSES"]


def log_softmax(o: Tensor) -> Tensor:
    """``log_softmax`` over the last dimension (no graph needed), as ``s − log Σ exp s`` with
    ``s = o − max o``: torch's CPU kernel is ~4x slower for a few classes (10 classes, 15k rows:
    2.4 ms against 0.5 ms on one core), and S-TLLR takes it of every window step.

    >>> o = torch.tensor([[1.0, 2.0, 30.0], [-5.0, 0.0, 5.0]])
    >>> torch.allclose(log_softmax(o), torch.log_softmax(o, -1))
    True
    """
    shifted = o - o.amax(-1, keepdim=True)
    return shifted - shifted.exp().sum(-1, keepdim=True).log_()


class StepLoss:
    """A per-step loss ``ℓ(o[t], target[t])`` (batch mean)."""

    name: ClassVar[str] = "loss"
    #: whether targets are class labels (accuracy is then reported)
    classification: ClassVar[bool] = False
    #: dimensions of one sample's target (0: a class label; 1: a vector of outputs)
    target_dims: ClassVar[int] = 1

    def step(self, o: Tensor, target: Tensor) -> Tensor:
        """``ℓ(o, target)`` for one step: ``o [B, C]``, ``target [B, ...]``; a differentiable scalar."""
        raise NotImplementedError

    def values(self, o: Tensor, target: Tensor) -> Tensor:
        """``ℓ`` of each of ``n`` steps: ``o [n, B, C]``, ``target [n, B, ...]`` → ``[n]`` (differentiable)."""
        return torch.stack([self.step(o[i], target[i]) for i in range(o.shape[0])])

    def mean(self, o: Tensor, target: Tensor) -> Tensor:
        """The mean of :meth:`values` over the ``n`` steps (differentiable)."""
        return self.values(o, target).mean()

    def error(self, o: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(Σ_t ℓ[t], ∂ℓ[t]/∂o[t])`` for ``o [n, B, C]``: the total (no graph) and the output errors."""
        with torch.enable_grad():
            leaf = o.detach().requires_grad_(True)
            total = self.values(leaf, target).sum()
            (grad,) = torch.autograd.grad(total, leaf)
        return total.detach(), grad

    def values_and_error(self, o: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(ℓ[t] [n], ∂ℓ[t]/∂o[t])`` without a graph: :meth:`values` and :meth:`error` in one pass where
        the loss allows it (cross-entropy: one softmax)."""
        with torch.no_grad():
            values = self.values(o, target)
        return values, self.error(o, target)[1]

    # -- targets --------------------------------------------------------------------------
    def per_step(self, target: Tensor) -> bool:
        """Whether ``target`` holds one target per step (``[T, B, ...]``)."""
        if target.dim() == self.target_dims + 2:
            return True
        if target.dim() != self.target_dims + 1:
            raise StllrError(f"{self.name}: a target must be [B{', C' * self.target_dims}] or "
                             f"[T, B{', C' * self.target_dims}], got shape {tuple(target.shape)}")
        return False

    def window(self, target: Tensor, T: int, first: int, last: int | None = None) -> Tensor:
        """The targets of steps ``[first, last)`` (default ``last = T``) as ``[n, B, ...]``."""
        last = T if last is None else last
        if not self.per_step(target):
            return target.expand(last - first, *target.shape)
        if target.shape[0] != T:
            raise StllrError(f"per-step targets must be [T={T}, B, ...], got {tuple(target.shape)}")
        return target[first:last]

    def final(self, target: Tensor) -> Tensor:
        """The target of the whole sequence (``sum_output``): the last step's where per step."""
        return target[-1] if self.per_step(target) else target

    def correct(self, o_sum: Tensor, target: Tensor) -> Tensor:
        """Samples whose ``Σ_t o[t]`` names the right class (0 for a regression loss)."""
        if not self.classification:
            return torch.zeros((), dtype=torch.int64, device=o_sum.device)
        return (o_sum.argmax(-1) == self.final(target)).sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropy(StepLoss):
    """``CE(o[t], label[t])``, the batch mean; error ``(softmax(o) − onehot) / B`` in closed form."""

    name = "ce"
    classification = True
    target_dims = 0

    def step(self, o: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(o, target)

    def values(self, o: Tensor, target: Tensor) -> Tensor:
        n, B, C = o.shape
        if n == 1:  # torch's own reduction, bit for bit (the default objective's numbers)
            return F.cross_entropy(o[0], target[0])[None]
        return F.cross_entropy(o.reshape(n * B, C), target.reshape(n * B), reduction="none").view(n, B).mean(1)

    def mean(self, o: Tensor, target: Tensor) -> Tensor:
        n, B, C = o.shape
        return F.cross_entropy(o.reshape(n * B, C), target.reshape(n * B))  # the mean over (step, sample)

    def error(self, o: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        batch = o.shape[1]
        logp = log_softmax(o)
        total = -logp.gather(-1, target.unsqueeze(-1)).sum() / batch
        return total, self._error_from(logp, target, batch)

    def values_and_error(self, o: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        logp = log_softmax(o.detach())
        values = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(1)
        return values, self._error_from(logp, target, o.shape[1])

    @staticmethod
    def _error_from(logp: Tensor, target: Tensor, batch: int) -> Tensor:
        """``(softmax − onehot) / B`` from the log-probabilities (overwritten)."""
        err = logp.exp_()
        err.scatter_add_(-1, target.unsqueeze(-1), torch.full_like(err[..., :1], -1.0))
        return err.div_(batch)


class MeanSquaredError(StepLoss):
    """``mean((o[t] − y[t])²)`` over the batch and the outputs (``F.mse_loss``); error ``2(o − y)/(B·C)``."""

    name = "mse"

    def step(self, o: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(o, target)

    def values(self, o: Tensor, target: Tensor) -> Tensor:
        return (o - target).pow(2).flatten(1).mean(1)

    def error(self, o: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        diff = o - target
        return diff.pow(2).flatten(1).mean(1).sum(), diff.mul_(2.0 / (o.shape[1] * o.shape[2]))


class CallableLoss(StepLoss):
    """Any differentiable ``fn(o [B, C], target [B, ...]) -> scalar`` (batch mean); autograd gives its error.

    >>> huber = CallableLoss(lambda o, y: F.smooth_l1_loss(o, y), name="huber")
    >>> huber.error(torch.tensor([[[3.0]]]), torch.tensor([[[1.0]]]))[1].tolist()
    [[[1.0]]]
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str = "custom", classification: bool = False,
                 target_dims: int = 1):
        if not callable(fn):
            raise StllrError(f"a step loss must be callable as fn(o, target) -> scalar, got {fn!r}")
        self.fn = fn
        self.name = name  # type: ignore[misc]
        self.classification = classification  # type: ignore[misc]
        self.target_dims = target_dims  # type: ignore[misc]

    def step(self, o: Tensor, target: Tensor) -> Tensor:
        value = self.fn(o, target)
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise StllrError(f"step loss {self.name!r} must return a scalar tensor (the batch mean), got "
                             f"{type(value).__name__}{'' if not isinstance(value, Tensor) else tuple(value.shape)}")
        return value

    def __repr__(self) -> str:
        return f"CallableLoss({self.name!r})"


#: the named per-step losses (``TrainConfig``-style strings)
STEP_LOSSES: dict[str, type[StepLoss]] = {"ce": CrossEntropy, "mse": MeanSquaredError}


def get_step_loss(loss: Any) -> StepLoss:
    """A :class:`StepLoss` from itself, a name in :data:`STEP_LOSSES` or ``None`` (cross-entropy)."""
    if loss is None:
        return CrossEntropy()
    if isinstance(loss, StepLoss):
        return loss
    if isinstance(loss, str) and loss in STEP_LOSSES:
        return STEP_LOSSES[loss]()
    raise StllrError(f"step_loss={loss!r} is not a per-step loss: use one of {', '.join(STEP_LOSSES)}, "
                     "or a stllr_engine.losses.StepLoss (CallableLoss(fn) for any differentiable fn(o, target))")
