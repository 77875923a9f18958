r"""Costs from a :class:`~stllr_engine.network.NetworkSpec` alone: no network built, no tensor allocated.

:func:`network_shape` follows :func:`~stllr_engine.network.build_network` layer by layer with
integers only (the same flatten, 3×3 same-padding convolutions, 2×2 pooling, global average
pooling and channel rule), so

* :func:`spec_formula_costs` gives exactly the figures of
  :func:`stllr_engine.costs.formula_costs` on the built network (same keys, same numbers,
  same errors), and
* :func:`memory_need_bytes` gives a lower bound on the memory one training run needs.

Both cost a few microseconds whatever the width (``2e9``) and, for ``mlp``/``rsnn``, whatever
the depth: the hidden layers after the first are identical, so they are one
:class:`LayerRun`. A study prices thousands of configurations before training with them.

>>> from stllr_engine.network import NetworkSpec
>>> shape = network_shape(NetworkSpec(kind="rsnn", input_shape=(700,), num_classes=20, width=450))
>>> shape.layer_macs(), shape.readout_macs, shape.num_neurons()
([517500], 9000, 450)
>>> spec_formula_costs(NetworkSpec(kind="mlp", input_shape=(64,), num_classes=10, width=2_000_000_000,
...                                depth=1500), "bptt", 16)["learning_macs_formula_per_sample"]
191872000004736000000000
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from stllr_engine._checks import integer
from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec, flownet_channels, vgg_halvings
from stllr_engine.stllr import STLLRConfig

__all__ = ["LayerRun", "NetworkShape", "network_shape", "spec_formula_costs", "memory_need_bytes",
           "OPTIMIZER_STATES"]

KERNEL = 3  # vgg convolutions: 3×3, stride 1, padding 1 (SpikingLayer's defaults)

#: Values an optimiser keeps per parameter (``torch.optim``): Adam's two moments, SGD's
#: momentum buffer (none at momentum 0).
OPTIMIZER_STATES = {"adam": 2, "sgd": 1}


@dataclass(frozen=True)
class LayerRun:
    """``count`` consecutive identical hidden layers.

    Attributes:
        count: how many layers.
        macs: synaptic MACs of one step for one sample of one layer (recurrent included),
            :meth:`~stllr_engine.layers.SpikingLayer.synaptic_macs`.
        neurons: spiking neurons of one layer (``num_neurons``).
        params: parameters of one layer (weights, bias, recurrent weights, gains).
    """

    count: int
    macs: int
    neurons: int
    params: int


@dataclass(frozen=True)
class NetworkShape:
    """The sizes of the network a spec describes.

    Attributes:
        spec: the spec.
        runs: the hidden layers, in order, as runs of identical layers.
        readout_macs: the readout's synaptic MACs per step and sample.
        readout_params: the readout's parameters (weight and bias).
        num_classes: readout size.
    """

    spec: NetworkSpec
    runs: tuple[LayerRun, ...]
    readout_macs: int
    readout_params: int
    num_classes: int

    @property
    def num_layers(self) -> int:
        """Hidden (spiking) layers."""
        return sum(r.count for r in self.runs)

    def num_neurons(self) -> int:
        """``Network.num_neurons()``: spiking neurons per step, readout excluded (N)."""
        return sum(r.count * r.neurons for r in self.runs)

    def synaptic_macs(self) -> int:
        """``Network.synaptic_macs()``: MACs of one step for one sample, readout included (S)."""
        return sum(r.count * r.macs for r in self.runs) + self.readout_macs

    def parameters(self) -> int:
        """``sum(p.numel() for p in net.parameters())``."""
        return sum(r.count * r.params for r in self.runs) + self.readout_params

    def layer_macs(self) -> list[int]:
        """Each hidden layer's MACs, one entry per layer (for checks; O(depth))."""
        return [r.macs for r in self.runs for _ in range(r.count)]

    def layer_neurons(self) -> list[int]:
        """Each hidden layer's neurons, one entry per layer (for checks; O(depth))."""
        return [r.neurons for r in self.runs for _ in range(r.count)]

    def weighted_macs(self, weight: Mapping[int, int], default: int) -> int:
        """``Σ_l c_l · S_l`` with ``c_l = weight.get(l, default)``, in O(runs + len(weight))."""
        total, start = 0, 0
        bounds = []
        for r in self.runs:
            total += default * r.count * r.macs
            bounds.append((start, start + r.count, r.macs))
            start += r.count
        for index, c in weight.items():
            if c == default:
                continue
            for lo, hi, macs in bounds:
                if lo <= index < hi:
                    total += (c - default) * macs
                    break
        return total


def network_shape(spec: NetworkSpec) -> NetworkShape:
    """The sizes :func:`~stllr_engine.network.build_network` would give ``spec``, with integers only.

    Raises:
        StllrError: the same one-line errors ``build_network`` raises (a vgg input that
            the blocks' pooling cannot halve often enough).
    """
    gain = 1 if spec.ws_gain and spec.weight_standardization else 0
    runs: list[LayerRun] = []
    if spec.kind in ("rsnn", "mlp"):
        width = spec.width
        recurrent = spec.kind == "rsnn"
        rec_gain = 1 if spec.ws_gain and spec.recurrent_standardization and recurrent else 0
        rec = width * width if recurrent else 0

        def dense(fan_in: int) -> LayerRun:
            return LayerRun(1, fan_in * width + rec, width,
                            fan_in * width + width + rec + (gain + rec_gain) * width)

        first = dense(math.prod(spec.input_shape))
        runs.append(first)
        if spec.depth > 1:
            other = dense(width)
            runs.append(LayerRun(spec.depth - 1, other.macs, other.neurons, other.params))
        readout_in = width
    elif spec.kind == "flownet":
        enc, dec = flownet_channels(spec)
        c_in, h, w = spec.input_shape
        sizes = []  # (channels, h, w) of each encoder layer's output
        for channels in enc:  # 3×3, stride 2, padding 1: halves H and W
            h, w = h // 2, w // 2
            fan_in = c_in * KERNEL * KERNEL
            runs.append(LayerRun(1, channels * h * w * fan_in, channels * h * w,
                                 channels * fan_in + channels + gain * channels))
            sizes.append((channels, h, w))
            c_in = channels
        for j, channels in enumerate(dec):  # 2× upsampling, then 3×3, stride 1, with the skip's channels
            k = spec.depth - 2 - j
            h, w = 2 * h, 2 * w
            fan_in = (c_in + (sizes[k][0] if k >= 0 else 0)) * KERNEL * KERNEL
            runs.append(LayerRun(1, channels * h * w * fan_in, channels * h * w,
                                 channels * fan_in + channels + gain * channels))
            c_in = channels
        c = spec.num_classes  # the conv head: c maps of h × w from 3×3 windows of c_in channels
        head_in = c_in * KERNEL * KERNEL
        return NetworkShape(spec, tuple(runs), c * h * w * head_in, c * head_in + c, c * h * w)
    else:
        h, w = spec.input_shape[1:]
        halvings = vgg_halvings(spec)
        channels_in = spec.input_shape[0]
        for k in range(2 * spec.depth):
            block = k // 2
            if k and k % 2 == 0:  # 2×2 pooling after each block's second conv
                h, w = h // 2, w // 2
            # min(width·2^(block+1), 8·width), without forming 2^(block+1) for deep nets
            channels = spec.width if k == 0 else spec.width * 2 ** min(block + 1, 3)
            fan_in = channels_in * KERNEL * KERNEL
            neurons = channels * h * w
            runs.append(LayerRun(1, neurons * fan_in, neurons, channels * fan_in + channels + gain * channels))
            channels_in = channels
        readout_in = channels_in  # global average pooling (after a last pooling or not)
    c = spec.num_classes
    return NetworkShape(spec, tuple(runs), readout_in * c, readout_in * c + c, c)


def spec_formula_costs(spec: NetworkSpec, rule: str, T: int, stllr: STLLRConfig | None = None,
                       bytes_per_value: int = 4, shape: NetworkShape | None = None,
                       loss: str = "per_step") -> dict[str, Any]:
    """:func:`stllr_engine.costs.formula_costs` of the network ``spec`` describes, without building it.

    Same arguments (a spec instead of a network; ``shape`` if already computed), same
    returned keys and numbers, same errors, for every kind (``mlp``, ``rsnn``, ``vgg``),
    rule, ``learn_steps`` and per-layer ``α_post``.

    >>> from stllr_engine.network import preset
    >>> spec_formula_costs(preset("shd_rsnn"), "bptt", 100)["learning_macs_formula_per_sample"]
    105300000
    """
    from stllr_engine.costs import FORMULA_COUNTING

    integer("costs", "T", T, 1)
    integer("costs", "bytes_per_value", bytes_per_value, 1)
    shape = shape if shape is not None else network_shape(spec)
    S = shape.synaptic_macs()
    N = shape.num_neurons()
    if rule == "bptt":
        learn_steps = T
        macs = 2 * T * S
        values = T * N
    elif rule == "stllr":
        if not isinstance(stllr, STLLRConfig):
            raise StllrError("costs: rule 'stllr' needs its settings: pass stllr=STLLRConfig(...) to formula_costs")
        learn_steps = stllr.learn_steps
        if learn_steps > T:
            raise StllrError(f"S-TLLR: learn_steps={learn_steps} exceeds T={T}: use learn_steps <= T")
        num_layers = shape.num_layers
        for idx in stllr.layer_factors:  # STLLRConfig.factors' check
            if not 0 <= idx < num_layers:
                raise StllrError(f"S-TLLR: layer_factors names layer {idx}, but the network has {num_layers} "
                                 "hidden layers")
        default = 3 if stllr.alpha_post != 0 else 2
        weight = {int(i): (3 if over.get("alpha_post", stllr.alpha_post) != 0 else 2)
                  for i, over in stllr.layer_factors.items()}
        macs = learn_steps * shape.weighted_macs(weight, default)
        macs += 2 * learn_steps * shape.readout_macs
        values = 2 * N * (learn_steps if loss == "sum_output" else 1)
    else:
        raise StllrError(f"costs: unknown rule {rule!r}: use 'stllr' or 'bptt'")
    return {
        "forward_macs_formula_per_sample": T * S,
        "learning_macs_formula_per_sample": macs,
        "learning_memory_values_formula_per_sample": values,
        "learning_memory_bytes_formula_per_sample": values * bytes_per_value,
        "T": T,
        "learn_steps": learn_steps,
        "bytes_per_value": bytes_per_value,
        "counting": f"{bytes_per_value} bytes per value; {FORMULA_COUNTING}",
    }


def memory_need_bytes(spec: NetworkSpec, rule: str, T: int, stllr: STLLRConfig | None = None, *,
                      batch_size: int, bytes_per_value: int = 4, optimizer: str = "adam",
                      momentum: float = 0.9, breakdown: bool = False, loss: str = "per_step") -> Any:
    r"""The memory a training run needs at least, in bytes, from the spec alone.

    .. math::

        b \cdot \big[P\,(2 + k) + B\,(V + T\,I) + D\big]

    with ``b`` bytes per value, ``P`` parameters (:meth:`NetworkShape.parameters`), ``2 + k``
    copies of them: the weights, their ``.grad`` and ``k`` optimiser states (Adam 2, SGD with
    momentum 1, without 0); ``B`` the batch size; ``V`` the learning memory of one sample
    (``learning_memory_values_formula_per_sample``: ``T·N`` for BPTT, ``2·N`` trace values
    for S-TLLR); ``T·I`` the sample's input frames (``I`` values per step); ``D`` the DFA
    feedback matrices (``C·N`` values, S-TLLR with ``learning_signal="dfa"`` only).

    It is a lower bound: forward buffers, a window's records, per-step temporaries and the
    framework's own overhead come on top (``stllr bench engine`` measures them).

    Args:
        spec, rule, T, stllr: as for :func:`spec_formula_costs`.
        batch_size: training batch size (>= 1).
        bytes_per_value: 4 (float32) or 8 (float64).
        optimizer, momentum: the training optimiser (``"adam"`` or ``"sgd"``).
        breakdown: also return the three parts.

    Returns:
        the bytes, or with ``breakdown`` ``(bytes, {"parameters": ..., "learning": ...,
        "inputs": ...})`` (DFA matrices counted with the parameters).

    >>> from stllr_engine.network import preset
    >>> # 4 B · [526 970 parameters · 4 (Adam) + 2 samples · (100·450 BPTT values + 100·700 inputs)]
    >>> memory_need_bytes(preset("shd_rsnn"), "bptt", 100, batch_size=2)
    9351520
    """
    integer("memory", "batch_size", batch_size, 1)
    if optimizer not in OPTIMIZER_STATES:
        raise StllrError(f"memory: optimizer={optimizer!r}: use one of {', '.join(map(repr, OPTIMIZER_STATES))}")
    shape = network_shape(spec)
    costs = spec_formula_costs(spec, rule, T, stllr, bytes_per_value, shape=shape, loss=loss)
    states = OPTIMIZER_STATES[optimizer] if (optimizer != "sgd" or momentum != 0) else 0
    dfa = shape.num_classes * shape.num_neurons() if (
        rule == "stllr" and stllr is not None and stllr.learning_signal == "dfa") else 0
    parts = {
        "parameters": bytes_per_value * (shape.parameters() * (2 + states) + dfa),
        "learning": bytes_per_value * batch_size * costs["learning_memory_values_formula_per_sample"],
        "inputs": bytes_per_value * batch_size * T * math.prod(spec.input_shape),
    }
    total = sum(parts.values())
    return (total, parts) if breakdown else total
