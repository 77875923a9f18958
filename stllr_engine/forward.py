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
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.layers import SynapseWeights
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


def _trace(x: Tensor, tr: Tensor, lam: float, t0: int, record: str | None) -> tuple[Tensor, Tensor | None]:
    """``tr ← λ tr + x[t]`` over a chunk ``x`` ``[c, ...]``.

    Steps before ``t0`` collapse into one weighted sum over time (a GEMV:
    ``λ^{t0} tr + Σ_{s<t0} λ^{t0-1-s} x[s]``); steps from ``t0`` on are scanned. With
    ``record="after"`` the trace after each of those steps is returned stacked
    (``tr[t]``), with ``"before"`` the trace before it (``tr[t-1]``).

    Returns:
        ``(final trace, records or None)``.
    """
    c = x.shape[0]
    if t0 == 1:
        tr = torch.add(x[0], tr, alpha=lam)
    elif t0 > 1:
        if lam == 0.0:
            tr = x[t0 - 1].clone()
        else:
            decay = lam ** torch.arange(t0 - 1, -1, -1, dtype=x.dtype, device=x.device)
            tr = torch.add((decay @ x[:t0].reshape(t0, -1)).view_as(tr), tr, alpha=lam**t0)
    rec = x.new_empty(c - t0, *x.shape[1:]) if record and c > t0 else None
    for t in range(t0, c):
        if rec is not None and record == "before":
            rec[t - t0] = tr
        tr = torch.add(x[t], tr, alpha=lam)
        if rec is not None and record == "after":
            rec[t - t0] = tr
    return tr, rec


def _window(t: Tensor, t0: int) -> Tensor:
    """Steps ``t0:`` of a chunk tensor, copied unless they are the whole tensor."""
    return t if t0 == 0 else t[t0:].clone()


def run_chunk(
    net: Network,
    x: Tensor,
    state: NetState,
    weights: Sequence[SynapseWeights],
    n_learn: int = 0,
    factors: Sequence[LayerFactors] | None = None,
    readout_lambda: float | None = None,
    record_pool_inputs: bool = True,
) -> tuple[Tensor, list[LayerRecord], ReadoutRecord | None, NetState]:
    """Run a chunk of steps without autograd.

    Args:
        net: the network.
        x: input ``[c, B, *input_shape]`` (time-major).
        state: state before the chunk.
        weights: the weights the synapses use (standardised where enabled), per hidden layer.
        n_learn: record the last ``n_learn`` steps for learning.
        factors: S-TLLR factors per layer (``None``: no traces, inference only).
        readout_lambda: λ of the readout's input trace.
        record_pool_inputs: keep the inputs of max-pooling transforms at window steps
            (their adjoint needs them; only the ``"bp"`` learning signal uses it).

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
        for i, (layer, sw, st) in enumerate(zip(net.hidden_layers, weights, state.layers)):
            f = factors[i] if factors is not None else None
            lam_pre = f.lambda_pre if f is not None else 0.0
            lam_post = f.lambda_post if f is not None else 0.0
            p = layer.lif
            psi_fn = get_surrogate(p.surrogate)
            xs = layer.pre(inp.reshape(c * batch, *inp.shape[2:]))
            current = layer.synapse(xs, sw.w, layer.bias).view(c, batch, *layer.out_shape)
            xs = xs.view(c, batch, *layer.x_shape)
            rec = n_learn > 0

            x_rec = None
            x_raw = None
            if rec and f is not None:
                if f.alpha_post != 0:
                    # A view of the data when this is the raw input; else a compact copy.
                    x_rec = xs[t0:] if (i == 0 and not layer.pre.steps) else _window(xs, t0)
                if layer.pre.needs_input_for_adjoint and record_pool_inputs:
                    x_raw = _window(inp, t0)
            tr_pre, tr_pre_rec = st.tr_pre, None
            if tr_pre is not None:
                tr_pre, tr_pre_rec = _trace(xs, tr_pre, lam_pre, t0, "after" if rec else None)
            del xs

            # LIF scan: in-place, cache-resident per-step work; window steps recorded.
            w_rec_t = sw.w_rec.t() if sw.w_rec is not None else None
            u = st.u.clone()
            y_prev = st.y
            tr_post = st.tr_post.clone() if st.tr_post is not None else None
            tr_rec = st.tr_rec.clone() if st.tr_rec is not None else None
            spikes = torch.empty_like(current)
            v = torch.empty_like(u)
            one = u.new_ones(())
            psi_rec = u.new_empty(n_learn, *u.shape) if rec else None
            trpost_rec = u.new_empty(n_learn, *u.shape) if rec and tr_post is not None else None
            yprev_rec = u.new_empty(n_learn, *u.shape) if rec and layer.recurrent and learning else None
            trrec_rec = u.new_empty(n_learn, *u.shape) if rec and tr_rec is not None else None
            scratch = torch.empty_like(u)
            for t in range(c):
                k = t - t0  # window index (records when >= 0)
                torch.add(current[t], u, alpha=p.gamma, out=u)
                if w_rec_t is not None:
                    assert y_prev is not None  # a recurrent layer's state carries its last spikes
                    if yprev_rec is not None and k >= 0:
                        yprev_rec[k] = y_prev
                    if tr_rec is not None:
                        torch.add(y_prev, tr_rec, alpha=lam_pre, out=tr_rec)
                        if trrec_rec is not None and k >= 0:
                            trrec_rec[k] = tr_rec
                    torch.addmm(u, y_prev, w_rec_t, out=u)  # (FlopCounterMode misses addmm_)
                torch.sub(u, p.theta, out=v)
                y = torch.heaviside(v, one, out=spikes[t])  # H(0) = 1
                if p.reset == "soft":
                    u.sub_(y, alpha=p.theta)
                else:
                    u.mul_(1.0 - y)
                y_prev = y
                if tr_post is not None or (psi_rec is not None and k >= 0):
                    psi = psi_fn(v, out=psi_rec[k] if psi_rec is not None and k >= 0 else scratch)
                    if trpost_rec is not None and tr_post is not None and k >= 0:
                        trpost_rec[k] = tr_post
                    if tr_post is not None:
                        torch.add(psi, tr_post, alpha=lam_post, out=tr_post)
            # Only a recurrent layer carries its last spikes (a copy, not a view of the chunk).
            y_prev = spikes[-1].clone() if layer.recurrent else None
            new_layers.append(LayerState(u, y_prev, tr_pre, tr_rec, tr_post))
            if rec:
                records.append(LayerRecord(x_rec, x_raw, tr_pre_rec, psi_rec, trpost_rec, yprev_rec, trrec_rec))  # type: ignore[arg-type]
            inp = spikes

        ro = net.readout
        ro_raw = _window(inp, t0) if n_learn and ro.pre.needs_input_for_adjoint and record_pool_inputs else None
        xo = ro.pre(inp.reshape(c * batch, *inp.shape[2:]))
        j = F.linear(xo, ro.weight, ro.bias).view(c, batch, -1)
        xo = xo.view(c, batch, -1)
        o = state.readout.o
        o_traj = torch.empty_like(j)
        for t in range(c):
            o = torch.add(j[t], o, alpha=ro.gamma_o)
            o_traj[t] = o
        o_rec = _window(o_traj, t0) if n_learn else None
        tr, cb = state.readout.tr, state.readout.c
        readout_record = None
        if tr is not None:
            lam = readout_lambda if readout_lambda is not None else ro.gamma_o
            tr, tr_rec_o = _trace(xo, tr, lam, t0, "after" if n_learn else None)
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


def effective_weights(net: Network) -> list[SynapseWeights]:
    """The weights the synapses use (standardised where enabled), without autograd."""
    with torch.no_grad():
        return [layer.effective_weights() for layer in net.hidden_layers]


def run_inference(net: Network, x: Tensor) -> Tensor:
    """Readout trajectory ``[T, B, C]`` for time-major input ``x`` ``[T, B, ...]``."""
    state = initial_state(net, x.shape[1], None, None, device=x.device, dtype=x.dtype)
    o, _, _, _ = run_chunk(net, x, state, effective_weights(net))
    return o
