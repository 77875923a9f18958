"""What a training step of either rule takes and gives: the optional probe, and its stats.

Both :func:`stllr_engine.stllr.stllr_step` and :func:`stllr_engine.bptt.bptt_step` accept
a :class:`Probe` (costs are measured through it, :class:`stllr_engine.costs.CostProbe`)
and return :class:`StepStats`.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, NamedTuple, Protocol

from torch import Tensor

__all__ = ["Probe", "NoProbe", "StepStats"]


class StepStats(NamedTuple):
    """What one training step reports, as tensors on the step's device.

    No field forces a host synchronisation: convert (``float``, ``int``) when the numbers
    are needed, e.g. once per epoch after summing.
    """

    loss: Tensor  # CE(Σ_t o[t], label), batch mean: the same quantity for every rule
    correct: Tensor  # number of samples with argmax Σ_t o[t] == label
    batch: int
    objective: Tensor  # what the rule minimises (S-TLLR: mean per-step CE over the window)


class Probe(Protocol):
    """Optional instrumentation: entered around the ``forward`` and ``learning`` phases."""

    def phase(self, name: str) -> ContextManager[Any]: ...

    def observe(self, tensors: list[Tensor]) -> None: ...

    def exclude(self, tensors: list[Tensor]) -> None: ...


class NoProbe:
    """The probe that measures nothing."""

    def phase(self, name: str) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def observe(self, tensors: list[Tensor]) -> None:
        pass

    def exclude(self, tensors: list[Tensor]) -> None:
        pass
