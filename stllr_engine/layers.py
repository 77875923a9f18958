r"""Layers: a synapse (dense or conv, optionally recurrent) feeding LIF neurons, and the readout.

A layer is thin (Norse style): it owns parameters and knows three linear maps of its
synapse, which both learning rules share:

* ``synapse(x, w)``: the input current ``I = W x`` (dense) or ``W * x`` (conv);
* ``input_grad(g, w)``: the adjoint ``Wᵀ g``, used to pass a learning signal down;
* ``weight_grad(g, x)``: ``Σ_batch g ⊗ x``, the factorised weight update (never a
  batch×out×in tensor).

Every map takes tensors whose leading dimension is a flattened batch (``T·B`` or ``B``),
so a whole window of time steps is one GEMM / convolution.

Between layers a :class:`Transform` (flatten, 2×2 average/max pooling, global average
pooling) is applied to the spikes of the layer below; it has an explicit adjoint.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from stllr_engine.errors import StllrError
from stllr_engine.neurons import LIFParameters

__all__ = ["Transform", "SpikingLayer", "SynapseWeights", "Readout", "standardize_weight", "TRANSFORMS"]

TRANSFORMS = ("flatten", "avgpool", "maxpool", "gap")


def _identity(t: Tensor) -> Tensor:
    return t


class Transform:
    """A fixed sequence of shape maps applied to a layer's input spikes.

    Steps: ``"flatten"`` (to ``[N, features]``), ``"avgpool"`` / ``"maxpool"`` (2×2,
    stride 2), ``"gap"`` (global average over H, W, then flatten).

    >>> t = Transform(("avgpool",))
    >>> t.out_shape((4, 8, 8))
    (4, 4, 4)
    """

    def __init__(self, steps: Sequence[str] = ()):
        for s in steps:
            if s not in TRANSFORMS:
                raise StllrError(f"unknown transform {s!r}: use one of {', '.join(TRANSFORMS)}")
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return f"Transform({self.steps})"

    @property
    def needs_input_for_adjoint(self) -> bool:
        """Max pooling's adjoint routes gradient to the arg-max, so it needs the input."""
        return "maxpool" in self.steps

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input ``shape``."""
        for s in self.steps:
            if s == "flatten":
                shape = (math.prod(shape),)
            elif s in ("avgpool", "maxpool"):
                if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
                    raise StllrError(
                        f"2x2 pooling needs a [C, H, W] input with even H and W, got {shape}: "
                        "use fewer blocks (depth) or a larger input resolution"
                    )
                shape = (shape[0], shape[1] // 2, shape[2] // 2)
            elif s == "gap":
                shape = (shape[0],)
        return shape

    def __call__(self, x: Tensor) -> Tensor:
        """Apply to ``x`` of shape ``[N, *shape]``."""
        for s in self.steps:
            if s == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif s == "avgpool":
                x = F.avg_pool2d(x, 2)
            elif s == "maxpool":
                x = F.max_pool2d(x, 2)
            elif s == "gap":
                x = x.mean(dim=(2, 3))
        return x

    def adjoint(self, g: Tensor, in_shape: tuple[int, ...], x: Tensor | None = None) -> Tensor:
        """Vector-Jacobian product: the gradient w.r.t. the input, given ``g`` w.r.t. the output.

        Args:
            g: gradient ``[N, *out_shape]``.
            in_shape: per-sample input shape.
            x: the input ``[N, *in_shape]`` (needed only with max pooling).
        """
        if not self.steps:
            return g
        if self.needs_input_for_adjoint:
            if x is None:
                raise ValueError("max-pooling adjoint needs the layer input")
            # a per-step temporary: keep it out of any saved-tensor accounting around us
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_identity, _identity):
                z = x.detach().requires_grad_(True)
                (gx,) = torch.autograd.grad(self(z), z, g)
            return gx
        shapes = [tuple(in_shape)]
        for s in self.steps[:-1]:
            shapes.append(Transform((s,)).out_shape(shapes[-1]))
        n = g.shape[0]
        for s, shape in zip(reversed(self.steps), reversed(shapes)):
            if s == "flatten":
                g = g.reshape(n, *shape)
            elif s == "avgpool":
                g = F.interpolate(g, scale_factor=2, mode="nearest") * 0.25
            elif s == "gap":
                h, w = shape[1], shape[2]
                g = (g / (h * w))[:, :, None, None].expand(n, *shape)
        return g


def standardize_weight(w: Tensor, eps: float = 1e-4, unbiased: bool = False, gain: Tensor | None = None) -> Tensor:
    r"""Scaled weight standardisation (per output unit, over its fan-in).

    ``Ŵ = (W − mean) / sqrt(var · fan_in + eps) · gain``, as in the official S-TLLR / OTTT
    code, which uses the unbiased variance and a learnable gain per output unit
    (``gain`` of shape ``[out]``).

    >>> w = torch.tensor([[1.0, 3.0]])  # mean 2; population var 1, unbiased var 2; fan-in 2
    >>> standardize_weight(w, eps=0.0).tolist(), standardize_weight(w, eps=0.0, unbiased=True).tolist()
    ([[-0.7071067690849304, 0.7071067690849304]], [[-0.5, 0.5]])
    """
    dims = tuple(range(1, w.dim()))
    fan_in = math.prod(w.shape[1:])
    mean = w.mean(dim=dims, keepdim=True)
    var = w.var(dim=dims, keepdim=True, unbiased=unbiased)
    out = (w - mean) / torch.sqrt(var * fan_in + eps)
    if gain is not None:
        out = out * gain.view(-1, *([1] * len(dims)))
    return out


class SynapseWeights(NamedTuple):
    """The weights a layer's synapses use (standardised where enabled): feed-forward and recurrent."""

    w: Tensor
    w_rec: Tensor | None


class SpikingLayer(nn.Module):
    """One hidden layer: transform of the input spikes → synapse → LIF neurons.

    Args:
        kind: ``"dense"`` or ``"conv"`` (3×3, stride 1, padding 1 by default).
        in_shape: per-sample shape of the raw input (before ``pre``).
        out_features: neurons (dense) or output channels (conv).
        lif: LIF constants.
        pre: transform applied to the input spikes.
        recurrent: add ``W_rec y[t-1]`` (dense layers only).
        weight_standardization: use :func:`standardize_weight` on ``W``.
        ws_unbiased: standardise with the unbiased variance (the official code's).
        ws_gain: a learnable gain per output unit (``gain``, ones at the start) after the
            standardisation (the official code's).
        rec_standardization: standardise ``W_rec`` too (with its own gain ``rec_gain``
            when ``ws_gain``).
        kernel_size, padding: conv geometry.
    """

    def __init__(
        self,
        kind: str,
        in_shape: tuple[int, ...],
        out_features: int,
        lif: LIFParameters,
        pre: Transform | None = None,
        recurrent: bool = False,
        weight_standardization: bool = False,
        kernel_size: int = 3,
        padding: int = 1,
        bias: bool = True,
        ws_unbiased: bool = False,
        ws_gain: bool = False,
        rec_standardization: bool = False,
    ):
        super().__init__()
        if kind not in ("dense", "conv"):
            raise StllrError(f"unknown layer kind {kind!r}: use 'dense' or 'conv'")
        if recurrent and kind != "dense":
            raise StllrError("recurrent connections are supported for dense layers only")
        if ws_gain and not (weight_standardization or rec_standardization):
            raise StllrError("a weight-standardisation gain needs weight_standardization (or rec_standardization)")
        self.kind = kind
        self.pre = pre or Transform()
        self.in_shape = tuple(in_shape)
        self.x_shape = self.pre.out_shape(self.in_shape)
        self.lif = lif
        self.recurrent = recurrent
        self.weight_standardization = weight_standardization
        self.ws_unbiased = ws_unbiased
        self.rec_standardization = rec_standardization and recurrent
        self.kernel_size, self.padding = kernel_size, padding
        lin: nn.Linear | nn.Conv2d
        if kind == "dense":
            if len(self.x_shape) != 1:
                raise StllrError(f"a dense layer needs a flat input, got {self.x_shape}: add 'flatten'")
            lin = nn.Linear(self.x_shape[0], out_features, bias=bias)
            self.out_shape: tuple[int, ...] = (out_features,)
        else:
            if len(self.x_shape) != 3:
                raise StllrError(f"a conv layer needs a [C, H, W] input, got {self.x_shape}")
            lin = nn.Conv2d(self.x_shape[0], out_features, kernel_size, padding=padding, bias=bias)
            h = self.x_shape[1] + 2 * padding - kernel_size + 1
            w = self.x_shape[2] + 2 * padding - kernel_size + 1
            self.out_shape = (out_features, h, w)
        self.weight = lin.weight
        self.bias = lin.bias
        if recurrent:
            rec = nn.Linear(out_features, out_features, bias=False)
            self.rec_weight: Tensor | None = rec.weight
        else:
            self.rec_weight = None
        self.gain = nn.Parameter(torch.ones(out_features)) if ws_gain and weight_standardization else None
        self.rec_gain = nn.Parameter(torch.ones(out_features)) if ws_gain and self.rec_standardization else None

    @property
    def num_neurons(self) -> int:
        return math.prod(self.out_shape)

    def synaptic_macs(self) -> int:
        """MACs of one step for one sample (feed-forward plus recurrent)."""
        if self.kind == "dense":
            macs = self.x_shape[0] * self.out_shape[0]
        else:
            macs = math.prod(self.out_shape) * self.x_shape[0] * self.kernel_size**2
        if self.recurrent:
            macs += self.out_shape[0] ** 2
        return macs

    def effective_weight(self) -> Tensor:
        """``W`` as the synapse uses it (standardised if enabled; differentiable)."""
        if not self.weight_standardization:
            return self.weight
        return standardize_weight(self.weight, unbiased=self.ws_unbiased, gain=self.gain)

    def effective_rec_weight(self) -> Tensor | None:
        """``W_rec`` as the synapse uses it (standardised if enabled; differentiable)."""
        if self.rec_weight is None or not self.rec_standardization:
            return self.rec_weight
        return standardize_weight(self.rec_weight, unbiased=self.ws_unbiased, gain=self.rec_gain)

    def effective_weights(self) -> SynapseWeights:
        """Both, differentiable with respect to the parameters."""
        return SynapseWeights(self.effective_weight(), self.effective_rec_weight())

    @property
    def standardized(self) -> bool:
        """Whether a weight update must pass through a standardisation to the parameters."""
        return self.weight_standardization or self.rec_standardization

    def synapse(self, x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        """Input current ``W x (+ b)`` (no recurrence) for ``x`` of shape ``[N, *x_shape]``."""
        if self.kind == "dense":
            return F.linear(x, w, bias)
        return F.conv2d(x, w, bias, padding=self.padding)

    def input_grad(self, g: Tensor, w: Tensor) -> Tensor:
        """Adjoint of :meth:`synapse`: ``∂(g·I)/∂x`` for ``g`` of shape ``[N, *out_shape]``."""
        if self.kind == "dense":
            return g @ w
        return nn_grad.conv2d_input((g.shape[0], *self.x_shape), w, g, padding=self.padding)

    def weight_grad(self, g: Tensor, x: Tensor) -> Tensor:
        """``Σ_n g_n ⊗ x_n`` in weight shape: one GEMM (or conv weight-gradient) over N."""
        if self.kind == "dense":
            return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        return nn_grad.conv2d_weight(x, self.weight.shape, g, padding=self.padding)

    def bias_grad(self, g: Tensor) -> Tensor:
        """Sum of ``g`` over all but the neuron/channel dimension."""
        if self.kind == "dense":
            return g.reshape(-1, g.shape[-1]).sum(0)
        return g.sum(dim=(0, 2, 3))

    def add_bias(self, current: Tensor) -> Tensor:
        if self.bias is None:
            return current
        if self.kind == "dense":
            return current + self.bias
        return current + self.bias[:, None, None]


class Readout(nn.Module):
    """Non-spiking leaky integrator ``o[t] = γ_o o[t-1] + W x[t] + b``.

    Args:
        in_shape: per-sample shape of the last hidden layer's spikes.
        num_classes: outputs.
        gamma_o: leak (0 = plain linear readout, sigmoid(5) ≈ 0.993 for the SHD net).
        pre: transform before the linear map (``flatten`` or global average pooling).
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, gamma_o: float, pre: Transform | None = None):
        super().__init__()
        self.pre = pre or Transform()
        self.in_shape = tuple(in_shape)
        self.x_shape = self.pre.out_shape(self.in_shape)
        if len(self.x_shape) != 1:
            raise StllrError(f"the readout needs a flat input, got {self.x_shape}")
        if not 0.0 <= gamma_o <= 1.0:
            raise StllrError(f"readout leak gamma_o={gamma_o} must lie in [0, 1]")
        self.gamma_o = float(gamma_o)
        lin = nn.Linear(self.x_shape[0], num_classes)
        self.weight, self.bias = lin.weight, lin.bias
        self.num_classes = num_classes

    def synaptic_macs(self) -> int:
        return self.x_shape[0] * self.num_classes
