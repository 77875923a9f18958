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
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch
from torch import Tensor

from stllr_engine import fused
from stllr_engine.layers import Readout, SpikingLayer, SynapseWeights
from stllr_engine.neurons import get_surrogate, lif_advance_

if TYPE_CHECKING:  # network.py imports this module (Network.forward runs inference)
    from stllr_engine.network import Network

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
        tr=zeros((ro.x_size,)) if readout_lambda is not None else None,  # flat: records are [n, B, x_size]
        c=0.0,
    )
    return NetState(tuple(layers), readout)


def _trace(x: Tensor, tr: Tensor, lam: float, t0: int, record: bool) -> tuple[Tensor, Tensor | None]:
    """``tr ← λ tr + x[t]`` over a chunk ``x`` ``[c, ...]``.

    Steps before ``t0`` collapse into one weighted sum over time (a GEMV:
    ``λ^{t0} tr + Σ_{s<t0} λ^{t0-1-s} x[s]``); steps from ``t0`` on are scanned, and with
    ``record`` the trace after each of them is returned stacked (``tr[t]``).

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
        tr = torch.add(x[t], tr, alpha=lam)
        if rec is not None:
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
    records: list[LayerRecord] = []
    new_layers: list[LayerState] = []
    spikes = x
    outputs: list[Tensor] = []  # every layer's spikes, for the layers that take a skip
    with torch.no_grad():
        for i, (layer, sw, st) in enumerate(zip(net.hidden_layers, weights, state.layers)):
            f = factors[i] if factors is not None else None
            skip = outputs[layer.skip] if layer.skip is not None else None
            spikes, layer_state, record = _layer_chunk(layer, sw, st, spikes, f, n_learn, record_pool_inputs,
                                                       input_is_data=i == 0, skip=skip)
            outputs.append(spikes)
            new_layers.append(layer_state)
            if record is not None:
                records.append(record)
        o, readout_state, readout_record = _readout_chunk(net.readout, spikes, state.readout, n_learn,
                                                          readout_lambda, record_pool_inputs)
    return o, records, readout_record, NetState(tuple(new_layers), readout_state)


def _layer_chunk(
    layer: SpikingLayer, sw: SynapseWeights, st: LayerState, inp: Tensor, f: LayerFactors | None, n_learn: int,
    record_pool_inputs: bool, input_is_data: bool, skip: Tensor | None = None,
) -> tuple[Tensor, LayerState, LayerRecord | None]:
    """One hidden layer over a chunk: one GEMM / convolution for the currents of every
    step, the input trace, then the LIF scan. Returns ``(spikes, state, record)``.
    ``skip``: the spikes ``[c, B, ...]`` of the layer this one takes a skip from."""
    c, batch = inp.shape[0], inp.shape[1]
    t0 = c - n_learn
    xs = layer.pre(inp.reshape(c * batch, *inp.shape[2:]))
    if skip is not None or layer.skip is not None:
        xs = layer.gather(xs, None if skip is None else skip.reshape(c * batch, *skip.shape[2:]))
        input_is_data = False  # the concatenation is a new tensor
    current = layer.synapse(xs, sw.w, layer.bias).view(c, batch, *layer.out_shape)
    xs = xs.view(c, batch, *layer.x_shape)
    x_rec = x_raw = None
    if n_learn and f is not None:
        if f.alpha_post != 0:
            # A view of the data when this is the raw input; else a compact copy.
            x_rec = xs[t0:] if (input_is_data and not layer.pre.steps) else _window(xs, t0)
        if layer.pre.needs_input_for_adjoint and record_pool_inputs:
            x_raw = _window(inp, t0)
    tr_pre, tr_pre_rec = st.tr_pre, None
    if tr_pre is not None:
        tr_pre, tr_pre_rec = _trace(xs, tr_pre, f.lambda_pre if f is not None else 0.0, t0, n_learn > 0)
    del xs
    spikes, state, scan = _lif_scan(layer, sw, st, current, f, n_learn)
    state = state._replace(tr_pre=tr_pre)
    record = None
    if n_learn:
        record = LayerRecord(x_rec, x_raw, tr_pre_rec, scan.psi, scan.tr_post_prev, scan.y_prev, scan.tr_rec)  # type: ignore[arg-type]
    return spikes, state, record


class _ScanRecords(NamedTuple):
    psi: Tensor | None
    tr_post_prev: Tensor | None
    y_prev: Tensor | None
    tr_rec: Tensor | None


def _lif_scan(
    layer: SpikingLayer, sw: SynapseWeights, st: LayerState, current: Tensor, f: LayerFactors | None, n_learn: int,
) -> tuple[Tensor, LayerState, _ScanRecords]:
    """The LIF scan over a chunk, in place and cache-resident per step, with the
    post-synaptic and recurrent traces; the last ``n_learn`` steps are recorded."""
    c = current.shape[0]
    t0 = c - n_learn
    p = layer.lif
    psi_fn = get_surrogate(p.surrogate)
    lam_pre = f.lambda_pre if f is not None else 0.0
    lam_post = f.lambda_post if f is not None else 0.0
    w_rec_t = sw.w_rec.t() if sw.w_rec is not None else None
    u = st.u.clone()
    y_prev = st.y
    tr_post = st.tr_post.clone() if st.tr_post is not None else None
    tr_rec = st.tr_rec.clone() if st.tr_rec is not None else None
    spikes = torch.empty_like(current)
    v = torch.empty_like(u)
    one = u.new_ones(())

    def window_buffer(wanted: bool) -> Tensor | None:
        return u.new_empty(n_learn, *u.shape) if n_learn and wanted else None

    psi_rec = window_buffer(True)
    trpost_rec = window_buffer(tr_post is not None)
    yprev_rec = window_buffer(layer.recurrent and f is not None)
    trrec_rec = window_buffer(tr_rec is not None)
    scratch = torch.empty_like(u)
    if fused.active(u):
        rec = v if w_rec_t is not None else None  # y[t-1] W_recᵀ, in v's buffer (the kernel reads it first)
        for t in range(c):
            w_idx = t - t0
            recording = w_idx >= 0
            if w_rec_t is not None:
                assert y_prev is not None and rec is not None
                if yprev_rec is not None and recording:
                    yprev_rec[w_idx] = y_prev
                if tr_rec is not None:
                    torch.add(y_prev, tr_rec, alpha=lam_pre, out=tr_rec)
                    if trrec_rec is not None and recording:
                        trrec_rec[w_idx] = tr_rec
                torch.mm(y_prev, w_rec_t, out=rec)
            psi_out = psi_rec[w_idx] if psi_rec is not None and recording else (scratch if tr_post is not None else None)
            fused.lif_step(u, current[t], rec, v if rec is not None else None, spikes[t], psi_out, tr_post, tr_post,
                           trpost_rec[w_idx] if trpost_rec is not None and tr_post is not None and recording else None,
                           lam_post if tr_post is not None else None, p.gamma, p.theta, p.reset, p.surrogate)
            y_prev = spikes[t]
        last = spikes[-1].clone() if layer.recurrent else None
        return spikes, LayerState(u, last, st.tr_pre, tr_rec, tr_post), _ScanRecords(psi_rec, trpost_rec, yprev_rec,
                                                                                       trrec_rec)
    for t in range(c):
        w_idx = t - t0  # index among the window steps (recorded when >= 0)
        if w_rec_t is not None:
            assert y_prev is not None  # a recurrent layer's state carries its last spikes
            if yprev_rec is not None and w_idx >= 0:
                yprev_rec[w_idx] = y_prev
            if tr_rec is not None:
                torch.add(y_prev, tr_rec, alpha=lam_pre, out=tr_rec)
                if trrec_rec is not None and w_idx >= 0:
                    trrec_rec[w_idx] = tr_rec
        y_prev = lif_advance_(u, current[t], p, v, spikes[t], one, y_prev, w_rec_t)
        if tr_post is not None or (psi_rec is not None and w_idx >= 0):
            psi = psi_fn(v, out=psi_rec[w_idx] if psi_rec is not None and w_idx >= 0 else scratch)
            if trpost_rec is not None and tr_post is not None and w_idx >= 0:
                trpost_rec[w_idx] = tr_post
            if tr_post is not None:
                torch.add(psi, tr_post, alpha=lam_post, out=tr_post)
    # Only a recurrent layer carries its last spikes (a copy, not a view of the chunk).
    last = spikes[-1].clone() if layer.recurrent else None
    state = LayerState(u, last, st.tr_pre, tr_rec, tr_post)
    return spikes, state, _ScanRecords(psi_rec, trpost_rec, yprev_rec, trrec_rec)


def _readout_chunk(
    ro: Readout, inp: Tensor, st: ReadoutTraceState, n_learn: int, readout_lambda: float | None,
    record_pool_inputs: bool,
) -> tuple[Tensor, ReadoutTraceState, ReadoutRecord | None]:
    """The leaky readout over a chunk (one GEMM, then the scan), its input trace and the
    bias trace ``c[t] = λ c[t-1] + 1``, computed on the device from the carried value."""
    c, batch = inp.shape[0], inp.shape[1]
    t0 = c - n_learn
    ro_raw = _window(inp, t0) if n_learn and ro.pre.needs_input_for_adjoint and record_pool_inputs else None
    xo = ro.pre(inp.reshape(c * batch, *inp.shape[2:]))
    j = ro.synapse(xo, ro.weight, ro.bias).view(c, batch, -1)
    xo = xo.view(c, batch, -1)
    o = st.o
    o_traj = torch.empty_like(j)
    for t in range(c):
        o = torch.add(j[t], o, alpha=ro.gamma_o)
        o_traj[t] = o
    o_rec = _window(o_traj, t0) if n_learn else None
    tr, cb = st.tr, st.c
    record = None
    if tr is not None:
        lam = readout_lambda if readout_lambda is not None else ro.gamma_o
        tr, tr_rec = _trace(xo, tr, lam, t0, n_learn > 0)
        if n_learn:
            steps = torch.arange(t0 + 1, c + 1, dtype=inp.dtype, device=inp.device)  # steps since the chunk began
            record = ReadoutRecord(o_rec, tr_rec, _bias_trace(cb, lam, steps), ro_raw)  # type: ignore[arg-type]
        cb = lam**c * cb + (c if lam == 1.0 else (1.0 - lam**c) / (1.0 - lam))
    elif n_learn:
        record = ReadoutRecord(o_rec, None, None, ro_raw)  # type: ignore[arg-type]
    return o_traj, ReadoutTraceState(o, tr, cb), record


def _bias_trace(c0: float, lam: float, n: Tensor) -> Tensor:
    """``c`` after ``n`` more steps of ``c ← λ c + 1`` from ``c0``: ``λ^n c0 + Σ_{j<n} λ^j``."""
    if lam == 1.0:
        return n + c0
    decay = torch.pow(lam, n)
    return decay * c0 + (1.0 - decay) / (1.0 - lam)


def effective_weights(net: Network) -> list[SynapseWeights]:
    """The weights the synapses use (standardised where enabled), without autograd."""
    with torch.no_grad():
        return [layer.effective_weights() for layer in net.hidden_layers]


def run_inference(net: Network, x: Tensor) -> Tensor:
    """Readout trajectory ``[T, B, C]`` for time-major input ``x`` ``[T, B, ...]``."""
    state = initial_state(net, x.shape[1], None, None, device=x.device, dtype=x.dtype)
    o, _, _, _ = run_chunk(net, x, state, effective_weights(net))
    return o
