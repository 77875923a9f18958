r"""The gradient-free forward pass, with the eligibility traces S-TLLR needs.

Work is layer-major: for each layer the feed-forward current of every step of a chunk is
one GEMM / convolution over ``chunk·B`` rows, then a cheap elementwise LIF scan runs
over time (plus ``W_rec y[t-1]`` per step for recurrent layers). A chunk is the whole
sequence in ``window`` mode (fast, memory O(T·n) for the forward) and one step in
``streaming`` mode (memory O(n), independent of T).

Traces (DESIGN §3), reset at the start of each sample and carried across chunks in
:class:`NetState`:

.. math::

    tr_{pre}[t] = λ_{pre} tr_{pre}[t-1] + x[t], \qquad
    tr_{post}[t] = λ_{post} tr_{post}[t-1] + Ψ(u[t] - θ)

For the last ``n_learn`` steps of a chunk the quantities of the update are recorded
(:class:`LayerRecord`): ``x[t]``, ``tr_pre[t]``, ``ψ[t]``, ``tr_post[t-1]`` and, for
recurrent layers, ``y[t-1]`` with its own trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from stllr_engine.network import Network
from stllr_engine.neurons import get_surrogate

__all__ = [
    "LayerFactors",
    "LayerState",
    "ReadoutTraceState",
    "NetState",
    "LayerRecord",
    "ReadoutRecord",
    "initial_state",
    "run_chunk",
    "run_inference",
]


@dataclass(frozen=True)
class LayerFactors:
    """The four S-TLLR factors of one layer (official order: λ_post, λ_pre, α_post, α_pre)."""

    lambda_pre: float
    lambda_post: float
    alpha_pre: float
    alpha_post: float


class LayerState(NamedTuple):
    """Carried between steps: membrane, last spikes (recurrent layers) and traces."""

    u: Tensor
    y: Tensor | None
    tr_pre: Tensor | None
    tr_rec: Tensor | None
    tr_post: Tensor | None


class ReadoutTraceState(NamedTuple):
    """Readout output ``o``, its input trace ``tr`` (λ = readout λ) and the bias trace ``c``."""

    o: Tensor
    tr: Tensor | None
    c: float


class NetState(NamedTuple):
    layers: tuple[LayerState, ...]
    readout: ReadoutTraceState

    def tensors(self) -> list[Tensor]:
        out = [t for s in self.layers for t in s if isinstance(t, Tensor)]
        out += [t for t in self.readout if isinstance(t, Tensor)]
        return out


class LayerRecord(NamedTuple):
    """Window-step quantities of one layer, each ``[n_learn, B, ...]`` (``None`` if unused)."""

    x: Tensor | None  # layer input after its transform (non-causal term)
    x_raw: Tensor | None  # input before the transform (max-pool adjoint only)
    tr_pre: Tensor | None
    psi: Tensor
    tr_post_prev: Tensor | None
    y_prev: Tensor | None  # recurrent input y[t-1]
    tr_rec: Tensor | None


class ReadoutRecord(NamedTuple):
    o: Tensor  # [n_learn, B, C]
    tr: Tensor  # [n_learn, B, F]
    c: Tensor  # [n_learn] bias trace
    x_raw: Tensor | None  # readout input before its transform (max-pool adjoint only)


def initial_state(
    net: Network, batch: int, factors: Sequence[LayerFactors] | None, readout_lambda: float | None,
    device: torch.device | None = None, dtype: torch.dtype | None = None,
) -> NetState:
    """Zero state for a batch. With ``factors=None`` no traces are kept (inference)."""
    ref = net.readout.weight
    device = device or ref.device
    dtype = dtype or ref.dtype

    def zeros(shape: tuple[int, ...]) -> Tensor:
        return torch.zeros(batch, *shape, device=device, dtype=dtype)

    layers = []
    for i, layer in enumerate(net.hidden_layers):
        f = factors[i] if factors is not None else None
        layers.append(
            LayerState(
                u=zeros(layer.out_shape),
                y=zeros(layer.out_shape) if layer.recurrent else None,
                tr_pre=zeros(layer.x_shape) if f is not None and f.alpha_pre != 0 else None,
                tr_rec=zeros(layer.out_shape) if f is not None and layer.recurrent and f.alpha_pre != 0 else None,
                tr_post=zeros(layer.out_shape) if f is not None and f.alpha_post != 0 else None,
            )
        )
    ro = net.readout
    readout = ReadoutTraceState(
        o=zeros((ro.num_classes,)),
        tr=zeros(ro.x_shape) if readout_lambda is not None else None,
        c=0.0,
    )
    return NetState(tuple(layers), readout)


def _scan_trace(x: Tensor, tr: Tensor, lam: float, t0: int, rec: Tensor | None) -> Tensor:
    """``tr ← λ tr + x[t]`` over the chunk; record steps ``t >= t0`` into ``rec``."""
    for t in range(x.shape[0]):
        tr = x[t] if lam == 0.0 else torch.add(x[t], tr, alpha=lam)
        if rec is not None and t >= t0:
            rec[t - t0] = tr
    return tr


def run_chunk(
    net: Network,
    x: Tensor,
    state: NetState,
    weights: Sequence[Tensor],
    n_learn: int = 0,
    factors: Sequence[LayerFactors] | None = None,
    readout_lambda: float | None = None,
) -> tuple[Tensor, list[LayerRecord], ReadoutRecord | None, NetState]:
    """Run a chunk of steps without autograd.

    Args:
        net: the network.
        x: input ``[c, B, *input_shape]`` (time-major).
        state: state before the chunk.
        weights: effective (standardised) feed-forward weights, one per hidden layer.
        n_learn: record the last ``n_learn`` steps for learning.
        factors: S-TLLR factors per layer (``None``: no traces, inference only).
        readout_lambda: λ of the readout's input trace.

    Returns:
        ``(o, layer_records, readout_record, new_state)`` with ``o`` the readout
        trajectory of the chunk ``[c, B, C]``.
    """
    c, batch = x.shape[0], x.shape[1]
    t0 = c - n_learn
    learning = factors is not None
    records: list[LayerRecord] = []
    new_layers: list[LayerState] = []
    inp = x
    with torch.no_grad():
        for i, (layer, w, st) in enumerate(zip(net.hidden_layers, weights, state.layers)):
            f = factors[i] if learning else None
            p = layer.lif
            psi_fn = get_surrogate(p.surrogate)
            xs = layer.pre(inp.reshape(c * batch, *inp.shape[2:]))
            current = layer.add_bias(layer.synapse(xs, w)).view(c, batch, *layer.out_shape)
            xs = xs.view(c, batch, *layer.x_shape)
            rec = n_learn > 0

            def buf(shape: tuple[int, ...]) -> Tensor:
                return x.new_empty(n_learn, batch, *shape)

            x_rec = None
            x_raw = None
            if rec and f is not None:
                if f.alpha_post != 0:
                    # Keep a view of the data when this is the raw input; else a compact copy.
                    x_rec = xs[t0:] if (i == 0 and not layer.pre.steps) else xs[t0:].clone()
                if layer.pre.needs_input_for_adjoint:
                    x_raw = inp[t0:].clone()
            tr_pre_rec = buf(layer.x_shape) if rec and st.tr_pre is not None else None
            tr_pre = st.tr_pre
            if tr_pre is not None:
                tr_pre = _scan_trace(xs, tr_pre, f.lambda_pre, t0, tr_pre_rec)  # type: ignore[union-attr]
            del xs

            psi_rec = buf(layer.out_shape) if rec else None
            trpost_rec = buf(layer.out_shape) if rec and st.tr_post is not None else None
            yprev_rec = buf(layer.out_shape) if rec and layer.recurrent and learning else None
            trrec_rec = buf(layer.out_shape) if rec and st.tr_rec is not None else None
            w_rec = layer.rec_weight
            u, y_prev, tr_post, tr_rec = st.u, st.y, st.tr_post, st.tr_rec
            spikes = torch.empty_like(current)
            for t in range(c):
                cur = current[t]
                if w_rec is not None:
                    cur = torch.addmm(cur, y_prev, w_rec.t())
                u = torch.add(cur, u, alpha=p.gamma)
                v = u - p.theta
                y = spikes[t]
                y.copy_(v >= 0)
                if p.reset == "soft":
                    u = u - p.theta * y
                else:
                    u = u * (1.0 - y)
                psi = None
                if tr_post is not None:
                    psi = psi_fn(v)
                    if rec and t >= t0:
                        trpost_rec[t - t0] = tr_post  # type: ignore[index]
                    tr_post = torch.add(psi, tr_post, alpha=f.lambda_post)  # type: ignore[union-attr]
                if rec and t >= t0:
                    psi_rec[t - t0] = psi if psi is not None else psi_fn(v)  # type: ignore[index]
                if layer.recurrent:
                    if tr_rec is not None:
                        tr_rec = torch.add(y_prev, tr_rec, alpha=f.lambda_pre)  # type: ignore[union-attr,arg-type]
                        if rec and t >= t0:
                            trrec_rec[t - t0] = tr_rec  # type: ignore[index]
                    if yprev_rec is not None and t >= t0:
                        yprev_rec[t - t0] = y_prev
                    y_prev = y
            if layer.recurrent:
                y_prev = y_prev.clone()  # detach from the spikes buffer
            new_layers.append(LayerState(u, y_prev, tr_pre, tr_rec, tr_post))
            if rec:
                records.append(LayerRecord(x_rec, x_raw, tr_pre_rec, psi_rec, trpost_rec, yprev_rec, trrec_rec))  # type: ignore[arg-type]
            inp = spikes

        ro = net.readout
        ro_raw = inp[t0:].clone() if n_learn and ro.pre.needs_input_for_adjoint else None
        xo = ro.pre(inp.reshape(c * batch, *inp.shape[2:]))
        j = (xo @ ro.weight.t() + ro.bias).view(c, batch, -1)
        xo = xo.view(c, batch, -1)
        o = state.readout.o
        o_traj = torch.empty_like(j)
        for t in range(c):
            o = torch.add(j[t], o, alpha=ro.gamma_o)
            o_traj[t] = o
        o_rec = o_traj[t0:] if n_learn else None
        tr, cb = state.readout.tr, state.readout.c
        readout_record = None
        if tr is not None:
            lam = readout_lambda if readout_lambda is not None else ro.gamma_o
            tr_rec_o = x.new_empty(n_learn, batch, ro.x_shape[0]) if n_learn else None
            tr = _scan_trace(xo, tr, lam, t0, tr_rec_o)
            cs = []
            for t in range(c):
                cb = lam * cb + 1.0
                if t >= t0:
                    cs.append(cb)
            if n_learn:
                readout_record = ReadoutRecord(o_rec, tr_rec_o, torch.tensor(cs, dtype=x.dtype, device=x.device), ro_raw)  # type: ignore[arg-type]
        elif n_learn:
            readout_record = ReadoutRecord(o_rec, None, None, ro_raw)  # type: ignore[arg-type]
    return o_traj, records, readout_record, NetState(tuple(new_layers), ReadoutTraceState(o, tr, cb))


def effective_weights(net: Network) -> list[Tensor]:
    """The weights the synapses use (standardised where enabled), detached."""
    with torch.no_grad():
        return [layer.effective_weight() for layer in net.hidden_layers]


def run_inference(net: Network, x: Tensor) -> Tensor:
    """Readout trajectory ``[T, B, C]`` for time-major input ``x`` ``[T, B, ...]``."""
    state = initial_state(net, x.shape[1], None, None, device=x.device, dtype=x.dtype)
    o, _, _, _ = run_chunk(net, x, state, effective_weights(net))
    return o
