r"""Leaky integrate-and-fire neurons, the leaky readout, and the surrogate Ψ.

Discrete time ``t = 1..T``, per layer (DESIGN §2):

.. math::

    u[t] &= \gamma\, u[t-1] + I[t] \qquad (u[t-1] \text{ is the value after the reset}) \\
    y[t] &= H(u[t] - \theta) \\
    u[t] &\leftarrow u[t] - \theta\, y[t] \quad \text{(soft)} \qquad
    u[t] \leftarrow u[t]\,(1 - y[t]) \quad \text{(hard)}

``H(v) = 1`` for ``v >= 0``. The readout is a non-spiking leaky integrator
``o[t] = γ_o o[t-1] + W x[t] + b``.

The surrogate Ψ(v), ``v = u[t] − θ``, is both the secondary activation of S-TLLR and the
surrogate derivative of H for BPTT, so the two rules differ only in how they handle time.

Steps are pure functions over small immutable state tuples (Norse style)::

    >>> import torch
    >>> p = LIFParameters(gamma=0.5, theta=1.0)
    >>> y, v, s = lif_step(torch.tensor([0.6]), LIFState(u=torch.tensor([0.8])), p)
    >>> y.item(), round(v.item(), 6), round(s.u.item(), 6)
    (1.0, 0.0, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from stllr_engine._checks import choice, real
from stllr_engine.errors import StllrError

__all__ = [
    "RESETS",
    "SURROGATES",
    "LIFParameters",
    "LIFState",
    "ReadoutState",
    "get_surrogate",
    "heaviside",
    "lif_advance_",
    "lif_step",
    "readout_step",
    "spike",
]


# ---------------------------------------------------------------------------------------
# Surrogates Ψ(v). Each is a plain elementwise function of v = u − θ.
# ---------------------------------------------------------------------------------------


def _inverse_square(v: Tensor, out: Tensor | None = None) -> Tensor:
    # 1 / (100|v| + 1)^2 : the official default for linear (SHD) layers.
    a = torch.abs(v, out=out)
    return torch.add(1.0, a, alpha=100.0, out=a).pow_(-2)


def _triangle(v: Tensor, out: Tensor | None = None) -> Tensor:
    # 0.3 · max(0, 1 − |v|) : the official default for conv layers.
    return torch.abs(v, out=out).neg_().add_(1.0).clamp_min_(0.0).mul_(0.3)


def _sigmoid_derivative(v: Tensor, out: Tensor | None = None) -> Tensor:
    # 4 σ(v)(1 − σ(v)) : peak 1 at v = 0.
    s = torch.sigmoid(v, out=out)
    return s.mul_(s.neg().add_(1.0)).mul_(4.0)


def _arctan(v: Tensor, out: Tensor | None = None) -> Tensor:
    # 1 / (1 + (10 v)^2)
    return torch.mul(v, 10.0, out=out).square_().add_(1.0).reciprocal_()


SURROGATES: dict[str, Callable[..., Tensor]] = {
    "inverse_square": _inverse_square,
    "triangle": _triangle,
    "sigmoid": _sigmoid_derivative,
    "arctan": _arctan,
}
"""The paper's four choices of Ψ, by name: ``Ψ(v, out=None)``, elementwise."""


RESETS = ("soft", "hard")
"""How the membrane resets after a spike: subtract θ, or set to zero."""


def get_surrogate(name: str) -> Callable[..., Tensor]:
    """Return the surrogate Ψ called ``name`` (one of :data:`SURROGATES`).

    Raises:
        StllrError: for an unknown name.
    """
    try:
        return SURROGATES[name]
    except KeyError:
        raise StllrError(
            f"unknown surrogate {name!r}: choose one of {', '.join(sorted(SURROGATES))}"
        ) from None


def heaviside(v: Tensor) -> Tensor:
    """H(v): 1 where ``v >= 0``, else 0, in v's dtype."""
    return (v >= 0).to(v.dtype)


class _Spike(torch.autograd.Function):
    """H(v) forward, Ψ(v) as its derivative backward (saves v only)."""

    @staticmethod
    def forward(ctx, v: Tensor, surrogate: str) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.surrogate = surrogate
        return heaviside(v)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return grad * SURROGATES[ctx.surrogate](v), None


def spike(v: Tensor, surrogate: str) -> Tensor:
    """Heaviside spike of ``v = u − θ`` whose autograd derivative is Ψ(v)."""
    return _Spike.apply(v, surrogate)


# ---------------------------------------------------------------------------------------
# LIF step
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LIFParameters:
    """Constants of one LIF layer (immutable; checked when built).

    Attributes:
        gamma: membrane leak γ in [0, 1] (paper: 0.5 for VGG-9, 0.99 for SHD).
        theta: firing threshold θ > 0 (paper: 0.8; official code 0.6).
        reset: ``"soft"`` (subtract θ) or ``"hard"`` (to zero).
        surrogate: name of Ψ, a key of :data:`SURROGATES`.

    >>> LIFParameters(reset="none")
    Traceback (most recent call last):
    ...
    stllr_engine.errors.StllrError: LIF: reset='none': use one of 'soft', 'hard'
    """

    gamma: float = 0.5
    theta: float = 0.8
    reset: str = "soft"
    surrogate: str = "triangle"

    def __post_init__(self) -> None:
        real("LIF", "gamma", self.gamma, 0.0, 1.0)
        real("LIF", "theta", self.theta, 0.0, None, low_open=True)
        choice("LIF", "reset", self.reset, RESETS)
        choice("LIF", "surrogate", self.surrogate, tuple(SURROGATES))


class LIFState(NamedTuple):
    """State of a LIF layer: membrane ``u`` after the reset of the previous step."""

    u: Tensor


class ReadoutState(NamedTuple):
    """State of the leaky readout: its last output ``o``."""

    o: Tensor


def lif_step(current: Tensor, state: LIFState, p: LIFParameters) -> tuple[Tensor, Tensor, LIFState]:
    """Advance a LIF layer by one step.

    Differentiable: with autograd the spike's derivative is Ψ(v) (BPTT surrogate).

    Args:
        current: input current ``I[t]``.
        state: ``LIFState(u[t-1])``.
        p: layer constants.

    Returns:
        ``(y[t], v[t], LIFState(u[t]))`` with ``v[t] = u[t] − θ`` before the reset, the
        argument of Ψ.
    """
    u = p.gamma * state.u + current
    v = u - p.theta
    y = spike(v, p.surrogate)
    u = u - p.theta * y if p.reset == "soft" else u * (1.0 - y)
    return y, v, LIFState(u)


def lif_advance_(u: Tensor, current: Tensor, p: LIFParameters, v: Tensor, y: Tensor, one: Tensor,
                 y_prev: Tensor | None = None, w_rec_t: Tensor | None = None) -> Tensor:
    """The same LIF step as :func:`lif_step`, in place and without autograd: the fast paths' one copy.

    ``u ← γ u + I (+ y[t−1] W_recᵀ)``, ``v ← u − θ``, ``y ← H(v)``, then the reset of
    ``u``. ``v`` and ``y`` are written into the given buffers; ``one`` is a scalar 1
    (H(0) = 1). Returns ``y``.
    """
    torch.add(current, u, alpha=p.gamma, out=u)
    if w_rec_t is not None and y_prev is not None:
        torch.addmm(u, y_prev, w_rec_t, out=u)  # (FlopCounterMode misses addmm_)
    torch.sub(u, p.theta, out=v)
    torch.heaviside(v, one, out=y)
    if p.reset == "soft":
        u.sub_(y, alpha=p.theta)
    else:
        u.mul_(1.0 - y)
    return y


def readout_step(current: Tensor, state: ReadoutState, gamma_o: float) -> tuple[Tensor, ReadoutState]:
    """Leaky non-spiking readout ``o[t] = γ_o o[t-1] + current``; returns ``(o[t], state)``."""
    o = gamma_o * state.o + current
    return o, ReadoutState(o)


def sigmoid_leak(leak: float) -> float:
    """The official code's parametrisation γ = sigmoid(leak) (0 → 0.5, 5 → 0.9933)."""
    return 1.0 / (1.0 + math.exp(-leak))
