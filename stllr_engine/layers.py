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
pooling, 2× nearest upsampling) is applied to the spikes of the layer below; it has an
explicit adjoint. A layer may also take a *skip*: the spikes of an earlier layer,
concatenated to its (transformed) input along the channels (the encoder–decoder's skip
connections, :mod:`stllr_engine.network` kind ``flownet``); :meth:`SpikingLayer.split_input_grad`
splits the adjoint back into the two sources.
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

TRANSFORMS = ("flatten", "avgpool", "maxpool", "gap", "upsample")


def _identity(t: Tensor) -> Tensor:
    return t


class Transform:
    """A fixed sequence of shape maps applied to a layer's input spikes.

    Steps: ``"flatten"`` (to ``[N, features]``), ``"avgpool"`` / ``"maxpool"`` (2×2,
    stride 2), ``"gap"`` (global average over H, W, then flatten), ``"upsample"`` (2×
    nearest-neighbour upsampling; its adjoint sums each 2×2 block).

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
            elif s == "upsample":
                if len(shape) != 3:
                    raise StllrError(f"upsampling needs a [C, H, W] input, got {shape}")
                shape = (shape[0], 2 * shape[1], 2 * shape[2])
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
            elif s == "upsample":
                x = F.interpolate(x, scale_factor=2, mode="nearest")
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
            elif s == "upsample":  # each input pixel fed a 2×2 block: sum the block's gradients
                g = F.avg_pool2d(g, 2) * 4.0
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
        kernel_size, padding, stride: conv geometry.
        skip: index of an earlier hidden layer whose spikes are concatenated (channels)
            to this layer's transformed input, ``skip_shape`` their per-sample shape
            (conv layers only; same H and W as the transformed input).
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
        stride: int = 1,
        skip: int | None = None,
        skip_shape: tuple[int, ...] | None = None,
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
        self.kernel_size, self.padding, self.stride = kernel_size, padding, stride
        if stride != 1 and kind != "conv":
            raise StllrError("a stride applies to conv layers only")
        self.skip = skip
        self.skip_shape = tuple(skip_shape) if skip_shape is not None else None
        self.main_shape = self.x_shape  # the transformed input of the layer below, before any skip
        if (skip is None) != (skip_shape is None):
            raise StllrError("a skip connection needs both the layer index (skip) and its shape (skip_shape)")
        if self.skip_shape is not None:
            if kind != "conv" or len(self.x_shape) != 3 or len(self.skip_shape) != 3 \
                    or self.skip_shape[1:] != self.x_shape[1:]:
                raise StllrError(f"a skip connection joins conv inputs of the same height and width: "
                                 f"input {self.x_shape}, skip {self.skip_shape}")
            self.x_shape = (self.x_shape[0] + self.skip_shape[0], *self.x_shape[1:])
        lin: nn.Linear | nn.Conv2d
        if kind == "dense":
            if len(self.x_shape) != 1:
                raise StllrError(f"a dense layer needs a flat input, got {self.x_shape}: add 'flatten'")
            lin = nn.Linear(self.x_shape[0], out_features, bias=bias)
            self.out_shape: tuple[int, ...] = (out_features,)
        else:
            if len(self.x_shape) != 3:
                raise StllrError(f"a conv layer needs a [C, H, W] input, got {self.x_shape}")
            lin = nn.Conv2d(self.x_shape[0], out_features, kernel_size, padding=padding, stride=stride, bias=bias)
            h = (self.x_shape[1] + 2 * padding - kernel_size) // stride + 1
            w = (self.x_shape[2] + 2 * padding - kernel_size) // stride + 1
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

    def gather(self, x: Tensor, skip: Tensor | None) -> Tensor:
        """The synapse's input: the transformed input ``x`` ``[N, *main_shape]``, with the skip's
        spikes ``[N, *skip_shape]`` concatenated along the channels where the layer has one."""
        if self.skip is None:
            return x
        if skip is None:
            raise ValueError(f"this layer takes the spikes of layer {self.skip} as a skip input")
        return torch.cat((x, skip.reshape(x.shape[0], *self.skip_shape)), dim=1)  # type: ignore[misc]

    def split_input_grad(self, gx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The adjoint of :meth:`gather`: ``(gradient w.r.t. the transformed input, w.r.t. the skip)``."""
        if self.skip is None:
            return gx, None
        c = self.main_shape[0]
        return gx[:, :c], gx[:, c:]

    def synapse(self, x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        """Input current ``W x (+ b)`` (no recurrence) for ``x`` of shape ``[N, *x_shape]``."""
        if self.kind == "dense":
            return F.linear(x, w, bias)
        return F.conv2d(x, w, bias, padding=self.padding, stride=self.stride)

    def input_grad(self, g: Tensor, w: Tensor) -> Tensor:
        """Adjoint of :meth:`synapse`: ``∂(g·I)/∂x`` for ``g`` of shape ``[N, *out_shape]``."""
        if self.kind == "dense":
            return g @ w
        return nn_grad.conv2d_input((g.shape[0], *self.x_shape), w, g, padding=self.padding, stride=self.stride)

    def weight_grad(self, g: Tensor, x: Tensor) -> Tensor:
        """``Σ_n g_n ⊗ x_n`` in weight shape: one GEMM (or conv weight-gradient) over N."""
        if self.kind == "dense":
            return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        return nn_grad.conv2d_weight(x, self.weight.shape, g, padding=self.padding, stride=self.stride)

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

    ``W`` is dense (``kind="dense"``: ``num_classes`` outputs) or a 3×3 convolution
    (``kind="conv"``, a dense-prediction head: ``out_channels`` maps of the input's height
    and width, e.g. the two flow components; ``num_classes`` is then
    ``out_channels·H·W``, the flattened output). Outputs are always flat ``[N, num_classes]``.

    Args:
        in_shape: per-sample shape of the last hidden layer's spikes.
        num_classes: outputs (``kind="dense"``) or output channels (``kind="conv"``).
        gamma_o: leak (0 = plain linear readout, sigmoid(5) ≈ 0.993 for the SHD net).
        pre: transform before the linear map (``flatten`` or global average pooling).
        kind: ``"dense"`` or ``"conv"``.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, gamma_o: float, pre: Transform | None = None,
                 kind: str = "dense"):
        super().__init__()
        if kind not in ("dense", "conv"):
            raise StllrError(f"unknown readout kind {kind!r}: use 'dense' or 'conv'")
        self.kind = kind
        self.pre = pre or Transform()
        self.in_shape = tuple(in_shape)
        self.x_shape = self.pre.out_shape(self.in_shape)
        if kind == "dense" and len(self.x_shape) != 1:
            raise StllrError(f"the readout needs a flat input, got {self.x_shape}")
        if kind == "conv" and len(self.x_shape) != 3:
            raise StllrError(f"a conv readout needs a [C, H, W] input, got {self.x_shape}")
        if not 0.0 <= gamma_o <= 1.0:
            raise StllrError(f"readout leak gamma_o={gamma_o} must lie in [0, 1]")
        self.gamma_o = float(gamma_o)
        lin: nn.Linear | nn.Conv2d
        if kind == "dense":
            lin = nn.Linear(self.x_shape[0], num_classes)
            self.out_channels = num_classes
            self.num_classes = num_classes
        else:
            lin = nn.Conv2d(self.x_shape[0], num_classes, 3, padding=1)
            self.out_channels = num_classes
            self.num_classes = num_classes * self.x_shape[1] * self.x_shape[2]
        assert lin.bias is not None  # both maps are built with a bias
        self.weight: Tensor = lin.weight
        self.bias: Tensor = lin.bias
        self.x_size = math.prod(self.x_shape)

    def _maps(self, t: Tensor) -> Tensor:
        """A flat output-shaped tensor ``[N, num_classes]`` as ``[N, out_channels, H, W]`` (conv)."""
        return t.reshape(t.shape[0], self.out_channels, *self.x_shape[1:])

    def synapse(self, x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        """``W x (+ b)`` ``[N, num_classes]`` for ``x`` ``[N, *x_shape]`` (or flat ``[N, x_size]``)."""
        if self.kind == "dense":
            return F.linear(x.reshape(x.shape[0], -1), w, bias)
        out = F.conv2d(x.reshape(x.shape[0], *self.x_shape), w, bias, padding=1)
        return out.reshape(x.shape[0], -1)

    def input_grad(self, err: Tensor, w: Tensor) -> Tensor:
        """Adjoint of :meth:`synapse`: ``[N, *x_shape]`` for an output error ``[N, num_classes]``."""
        if self.kind == "dense":
            return err @ w
        return nn_grad.conv2d_input((err.shape[0], *self.x_shape), w, self._maps(err), padding=1)

    def weight_grad(self, err: Tensor, x: Tensor) -> Tensor:
        """``Σ_n err_n ⊗ x_n`` in weight shape, for ``err`` ``[N, num_classes]``, ``x`` ``[N, …]``."""
        if self.kind == "dense":
            return err.t() @ x.reshape(x.shape[0], -1)
        return nn_grad.conv2d_weight(x.reshape(x.shape[0], *self.x_shape), self.weight.shape, self._maps(err),
                                     padding=1)

    def bias_grad(self, err: Tensor) -> Tensor:
        """Sum of ``err`` ``[N, num_classes]`` over all but the output (channel) dimension."""
        if self.kind == "dense":
            return err.sum(0)
        return err.reshape(err.shape[0], self.out_channels, -1).sum((0, 2))

    def synaptic_macs(self) -> int:
        if self.kind == "dense":
            return self.x_shape[0] * self.num_classes
        return self.num_classes * self.x_shape[0] * 9
