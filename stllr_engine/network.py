"""Networks built from a plain spec: ``rsnn``, ``mlp`` and ``vgg``, with width and depth.

* ``rsnn``: input → ``depth`` recurrent dense layers of ``width`` → readout
  (the paper's SHD net is 700 → 450 recurrent → 20: preset ``shd_rsnn``).
* ``mlp``: the same without recurrence.
* ``vgg``: ``depth`` conv blocks of two 3×3 conv layers, each block ending in a 2×2
  pooling, then global average pooling and the readout. Conv ``k`` has
  ``width`` channels for ``k = 0`` and ``min(width·2^(block+1), 8·width)`` otherwise, so
  ``width=64, depth=4`` is exactly VGG-9 (64C3-128C3-AP-256C3-256C3-AP-512C3-512C3-AP-
  512C3-512C3-AP-GAP-FC): preset ``vgg9``.
* ``flownet``: a spiking encoder–decoder for dense prediction (optical flow), in the
  style of Spike-FlowNet: ``depth`` encoder layers, 3×3 convs of stride 2 with
  ``width·2^k`` channels (capped at ``8·width``), then ``depth`` decoder layers, each a 2×
  nearest upsampling then a 3×3 conv, with the channels of the encoder layer of the same
  resolution, whose spikes it also takes as a skip input (concatenated); the last decoder
  layer (full resolution, ``width`` channels) has none. The readout is a 3×3 conv head with
  ``num_classes`` output maps (2: the flow's u and v) at the input's resolution, flattened.
  ``width=64, depth=4`` has Spike-FlowNet's encoder (4→64→128→256→512, stride 2); it
  differs from it in having no residual blocks, one flow head instead of four, and skips
  that carry spikes at every step rather than membrane currents summed over time.

>>> net = build_network(NetworkSpec(kind="rsnn", input_shape=(700,), num_classes=20, width=450))
>>> [layer.synaptic_macs() for layer in net.layers], net.readout.synaptic_macs()
([517500], 9000)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from stllr_engine._checks import choice, integer, is_int, known_fields, real
from stllr_engine.errors import StllrError
from stllr_engine.forward import run_inference
from stllr_engine.layers import Readout, SpikingLayer, Transform
from stllr_engine.neurons import SURROGATES, LIFParameters, sigmoid_leak

__all__ = ["NetworkSpec", "Network", "build_network", "PRESETS", "preset"]

KINDS = ("rsnn", "mlp", "vgg", "flownet")
MAX_SEED = 2**63 - 1
#: The most values a DFA feedback matrix may hold (2 GiB in float32): a flownet's outputs are
#: per pixel, so its matrices grow with the square of the resolution.
DFA_MAX_VALUES = 2**29


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose (e.g. ``"dfa/0"``), hashed from ``seed``: never overflows.

    >>> derived_seed(0, "dfa/0") == derived_seed(0, "dfa/0") != derived_seed(0, "dfa/1")
    True
    """
    digest = hashlib.blake2b(f"{seed}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild a network (saved with every checkpoint and result).

    Attributes:
        kind: ``"rsnn"``, ``"mlp"``, ``"vgg"`` or ``"flownet"``.
        input_shape: per-step sample shape, e.g. ``(700,)`` or ``(2, 32, 32)``.
        num_classes: readout size.
        width: neurons per hidden layer (``rsnn``/``mlp``) or base channels (``vgg``, ``flownet``).
        depth: hidden layers (``rsnn``/``mlp``), conv blocks (``vgg``) or encoder levels (``flownet``).
        gamma, theta, reset, surrogate: LIF constants (DESIGN §2).
        gamma_o: readout leak.
        weight_standardization: scaled WS on feed-forward weights (the official layers use it).
        ws_variance: ``"population"`` or ``"unbiased"`` (the official code's) variance in WS.
        ws_gain: a learnable gain per output unit after WS (the official code's).
        recurrent_standardization: WS on the recurrent weights too (own gain), ``rsnn`` only.
        pool: ``"avg"`` or ``"max"`` pooling between vgg blocks.
        pool_last_block: pool after the last vgg block too (the official VGG does not:
            global average pooling follows its last conv directly).
        seed: initialisation seed in ``[0, 2**63 - 1]`` (DFA matrices use seeds hashed from it).
    """

    kind: str = "mlp"
    input_shape: tuple[int, ...] = (64,)
    num_classes: int = 10
    width: int = 128
    depth: int = 1
    gamma: float = 0.5
    theta: float = 0.8
    reset: str = "soft"
    surrogate: str = "triangle"
    gamma_o: float = 0.0
    weight_standardization: bool = False
    pool: str = "avg"
    seed: int = 0
    ws_variance: str = "population"
    ws_gain: bool = False
    recurrent_standardization: bool = False
    pool_last_block: bool = True

    def __post_init__(self) -> None:
        w = "network"
        shape = self.input_shape
        if not isinstance(shape, (tuple, list)) or not shape or not all(is_int(d) and d >= 1 for d in shape):
            raise StllrError(f"{w}: input_shape={shape!r} must be a non-empty list of integers >= 1, e.g. [700]")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in shape))
        choice(w, "kind", self.kind, KINDS)
        integer(w, "num_classes", self.num_classes, 2)
        integer(w, "width", self.width, 1)
        integer(w, "depth", self.depth, 1)
        integer(w, "seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise StllrError(f"{w}: seed={self.seed} is too large for torch's generator: use a seed in [0, 2**63 - 1]")
        real(w, "gamma", self.gamma, 0.0, 1.0)
        real(w, "theta", self.theta, 0.0, None, low_open=True)
        real(w, "gamma_o", self.gamma_o, 0.0, 1.0)
        choice(w, "reset", self.reset, ("soft", "hard"))
        choice(w, "surrogate", self.surrogate, tuple(SURROGATES))
        choice(w, "pool", self.pool, ("avg", "max"))
        for flag in ("weight_standardization", "ws_gain", "recurrent_standardization", "pool_last_block"):
            if not isinstance(getattr(self, flag), bool):
                raise StllrError(f"{w}: {flag}={getattr(self, flag)!r} must be true or false")
        choice(w, "ws_variance", self.ws_variance, ("population", "unbiased"))
        if self.ws_gain and not (self.weight_standardization or self.recurrent_standardization):
            raise StllrError(f"{w}: ws_gain=true needs weight_standardization (or recurrent_standardization): "
                             "enable one or set ws_gain=false")
        if self.recurrent_standardization and self.kind != "rsnn":
            raise StllrError(f"{w}: recurrent_standardization applies to kind 'rsnn' only, not {self.kind!r}")
        if self.kind in ("vgg", "flownet") and len(self.input_shape) != 3:
            raise StllrError(f"{w}: {self.kind} needs a [C, H, W] input_shape, got {list(self.input_shape)}")
        if self.kind == "flownet":
            h, wd = self.input_shape[1:]
            if h % (2**self.depth) or wd % (2**self.depth):
                raise StllrError(f"{w}: flownet depth {self.depth} halves {h}x{wd} {self.depth} times: use an "
                                 f"input size divisible by {2**self.depth} or a smaller depth")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkSpec":
        d = known_fields("network", cls, d)
        return cls(**d)

    def replace(self, **changes: Any) -> "NetworkSpec":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, NetworkSpec] = {
    # The paper's SHD net (700 → 450 recurrent → 20); official leak 5 → γ = sigmoid(5).
    "shd_rsnn": NetworkSpec(
        kind="rsnn", input_shape=(700,), num_classes=20, width=450, depth=1, gamma=0.99,
        theta=0.8, surrogate="inverse_square", gamma_o=sigmoid_leak(5.0),
    ),
    # VGG-9 on 2×32×32 DVS Gesture frames (11 classes), weight standardisation, avg pooling.
    "vgg9": NetworkSpec(
        kind="vgg", input_shape=(2, 32, 32), num_classes=11, width=64, depth=4, gamma=0.5,
        theta=0.8, surrogate="triangle", gamma_o=0.0, weight_standardization=True, pool="avg",
    ),
    # The authors' code (models/STDPAudioSNN.py, layers/STLLR_layers.py): leak 5 → γ = sigmoid(5)
    # for the hidden layer and the readout, θ = 0.6 (> 0.5, so their max(θ, 0.5) is θ), scaled
    # WS with the unbiased variance and a learnable gain on the feed-forward and the recurrent
    # weights; the readout is not standardised.
    "shd_rsnn_official": NetworkSpec(
        kind="rsnn", input_shape=(700,), num_classes=20, width=450, depth=1, gamma=sigmoid_leak(5.0),
        theta=0.6, surrogate="inverse_square", gamma_o=sigmoid_leak(5.0), weight_standardization=True,
        ws_variance="unbiased", ws_gain=True, recurrent_standardization=True,
    ),
    # Spike-FlowNet's encoder on MVSEC (dt = 1: 4 channels, 256 × 256 crop): integrate-and-fire
    # (γ = 1), threshold 0.75, hard reset; the head integrates (γ_o = 1, its output at a step is
    # the sum of the currents so far, as Spike-FlowNet's decoder sums the encoder's over time).
    "spike_flownet": NetworkSpec(
        kind="flownet", input_shape=(4, 256, 256), num_classes=2, width=64, depth=4, gamma=1.0,
        theta=0.75, reset="hard", surrogate="triangle", gamma_o=1.0,
    ),
    # The authors' VGG (models/VGG_STDP.py, DVS Gesture command): leak 0 → γ = 0.5, θ = 0.6, WS
    # with unbiased variance and gain on every conv, max pooling after blocks 1-3 only, global
    # average pooling into a plain linear readout (γ_o = 0).
    "vgg9_official": NetworkSpec(
        kind="vgg", input_shape=(2, 32, 32), num_classes=11, width=64, depth=4, gamma=sigmoid_leak(0.0),
        theta=0.6, surrogate="triangle", gamma_o=0.0, weight_standardization=True, pool="max",
        ws_variance="unbiased", ws_gain=True, pool_last_block=False,
    ),
}


def preset(name: str, **overrides: Any) -> NetworkSpec:
    """A named spec (``shd_rsnn``, ``vgg9``, ``shd_rsnn_official``, ``vgg9_official``, ``spike_flownet``), optionally
    with fields replaced."""
    if name not in PRESETS:
        raise StllrError(f"unknown network preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


class Network(nn.Module):
    """Hidden spiking layers followed by the leaky readout.

    The module holds parameters only; all dynamics live in the rule functions
    (:mod:`stllr_engine.stllr`, :mod:`stllr_engine.bptt`). ``forward`` runs inference.
    """

    def __init__(self, spec: NetworkSpec, layers: list[SpikingLayer], readout: Readout):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(layers)
        self.readout = readout

    @property
    def hidden_layers(self) -> list[SpikingLayer]:
        return list(self.layers)  # type: ignore[arg-type]

    def num_neurons(self) -> int:
        """Spiking neurons per step (readout excluded), the N of DESIGN §4."""
        return sum(layer.num_neurons for layer in self.hidden_layers)

    def synaptic_macs(self) -> int:
        """Synaptic MACs of one step for one sample, readout included (Σ_l S_l)."""
        return sum(layer.synaptic_macs() for layer in self.hidden_layers) + self.readout.synaptic_macs()

    def feedback_matrix(self, index: int) -> Tensor:
        """The fixed random DFA matrix ``[num_classes, N_l]`` of hidden layer ``index``.

        Drawn from a seed hashed from ``spec.seed`` and ``index``
        (:func:`derived_seed`; normal, std 1/sqrt(num_classes)), so a rebuilt network has
        the same matrix; kept as a non-persistent buffer (moves with ``.to()``, not
        stored in checkpoints).
        """
        name = f"dfa_feedback_{index}"
        if not hasattr(self, name):
            g = torch.Generator().manual_seed(derived_seed(self.spec.seed, f"dfa/{index}"))
            n = self.hidden_layers[index].num_neurons
            c = self.readout.num_classes
            if c * n > DFA_MAX_VALUES:  # a dense-prediction head has outputs by the pixel
                raise StllrError(f"DFA: the feedback matrix of layer {index} would be {c} x {n} "
                                 f"({c * n * 4 / 2**30:.1f} GiB in float32), more than the limit of "
                                 f"{DFA_MAX_VALUES * 4 / 2**30:.0f} GiB: use learning_signal bp (or a smaller network)")
            m = torch.randn(c, n, generator=g) / math.sqrt(c)
            ref = self.readout.weight
            self.register_buffer(name, m.to(device=ref.device, dtype=ref.dtype), persistent=False)
        return getattr(self, name)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Readout trajectory ``o`` of shape ``[T, B, classes]`` for input ``[B, T, ...]``."""
        return run_inference(self, x.transpose(0, 1))


def vgg_halvings(spec: NetworkSpec) -> int:
    """How often a VGG of ``spec`` halves its input; refuses an input it cannot halve that often."""
    h, w = spec.input_shape[1:]
    halvings = spec.depth if spec.pool_last_block else spec.depth - 1
    if h % (2**halvings) or w % (2**halvings):
        raise StllrError(f"vgg depth {spec.depth} halves {h}x{w} {halvings} times: use an input size "
                         f"divisible by {2**halvings} or a smaller depth")
    return halvings


def build_network(spec: NetworkSpec) -> Network:
    """Build (and initialise, seeded by ``spec.seed``) the network ``spec`` describes."""
    lif = LIFParameters(gamma=spec.gamma, theta=spec.theta, reset=spec.reset, surrogate=spec.surrogate)
    ws = dict(weight_standardization=spec.weight_standardization, ws_unbiased=spec.ws_variance == "unbiased",
              ws_gain=spec.ws_gain)
    saved_rng_state = torch.random.get_rng_state()  # building does not disturb the caller's RNG
    torch.manual_seed(spec.seed)
    try:
        layers: list[SpikingLayer] = []
        shape = spec.input_shape
        if spec.kind in ("rsnn", "mlp"):
            pre = Transform(("flatten",) if len(shape) > 1 else ())
            for _ in range(spec.depth):
                layer = SpikingLayer(
                    "dense", shape, spec.width, lif, pre=pre, recurrent=spec.kind == "rsnn",
                    rec_standardization=spec.recurrent_standardization, **ws,  # type: ignore[arg-type]
                )
                layers.append(layer)
                shape, pre = layer.out_shape, Transform()
            readout = Readout(shape, spec.num_classes, spec.gamma_o)
        elif spec.kind == "flownet":
            layers, readout = _flownet_layers(spec, lif, ws)
        else:
            pool = "avgpool" if spec.pool == "avg" else "maxpool"
            vgg_halvings(spec)
            pre = Transform()
            for k in range(2 * spec.depth):
                block = k // 2
                channels = spec.width if k == 0 else min(spec.width * 2 ** (block + 1), 8 * spec.width)
                layer = SpikingLayer("conv", shape, channels, lif, pre=pre, **ws)  # type: ignore[arg-type]
                layers.append(layer)
                shape = layer.out_shape
                pre = Transform((pool,)) if k % 2 == 1 else Transform()
            last = (pool, "gap") if spec.pool_last_block else ("gap",)
            readout = Readout(shape, spec.num_classes, spec.gamma_o, pre=Transform(last))
    finally:
        torch.random.set_rng_state(saved_rng_state)
    return Network(spec, layers, readout)


def flownet_channels(spec: NetworkSpec) -> tuple[list[int], list[int]]:
    """``(encoder channels, decoder channels)`` of a ``flownet`` spec, one entry per layer.

    >>> flownet_channels(NetworkSpec(kind="flownet", input_shape=(4, 64, 64), num_classes=2, width=64, depth=4))
    ([64, 128, 256, 512], [256, 128, 64, 64])
    """
    enc = [spec.width * 2 ** min(k, 3) for k in range(spec.depth)]
    dec = [enc[spec.depth - 2 - j] for j in range(spec.depth - 1)] + [spec.width]
    return enc, dec


def _flownet_layers(spec: NetworkSpec, lif: LIFParameters, ws: dict[str, Any]) -> tuple[list[SpikingLayer], Readout]:
    """The encoder (stride-2 convs), the decoder (upsample, conv, skip from the encoder
    layer of the same resolution) and the conv flow head of a ``flownet``."""
    enc, dec = flownet_channels(spec)
    layers: list[SpikingLayer] = []
    shape = spec.input_shape
    for channels in enc:
        layer = SpikingLayer("conv", shape, channels, lif, stride=2, **ws)
        layers.append(layer)
        shape = layer.out_shape
    d = spec.depth
    for j, channels in enumerate(dec):
        k = d - 2 - j  # the encoder layer whose output has this decoder layer's resolution
        skip: dict[str, Any] = dict(skip=k, skip_shape=layers[k].out_shape) if k >= 0 else {}
        layer = SpikingLayer("conv", shape, channels, lif, pre=Transform(("upsample",)), **skip, **ws)
        layers.append(layer)
        shape = layer.out_shape
    return layers, Readout(shape, spec.num_classes, spec.gamma_o, kind="conv")
