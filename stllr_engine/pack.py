r"""Vectorised trials: K members of one architecture trained as one batched model (DESIGN §9).

A *pack* stacks the parameters of K networks built from one spec (they differ only in
``seed``) into tensors ``[K, ...]``; every GEMM of a step is one batched matrix product
over the members, and the per-step elementwise work (LIF, traces, Ψ) runs once on
``[K, B, n]`` tensors instead of K times on ``[B, n]``. On the small networks where sweeps
spend their time a step is dominated by per-op overhead, so K members cost little more
than one.

Each member keeps everything that makes it its own run:

* its initialisation and DFA matrices (built from its own spec seed, then stacked);
* its data: its own split and shuffling order (the caller's loaders, one per member);
* its S-TLLR factors ``λ_pre, λ_post, α_pre, α_post`` (per layer), ``learn_steps``
  (the window of the pack is the largest; a member's learning signal is masked to zero
  before its own window), ``readout_lambda``;
* its learning rate, weight decay, epochs, early stopping and optimiser state (:class:`PackAdam`, :class:`PackSGD`:
  the formulas of ``torch.optim.Adam`` / ``SGD``, per member);
* its status: a member that diverges or stops early is frozen (its parameters and
  optimiser state no longer change) while the others go on.

What must be common to a pack (:func:`pack_key`): the network spec apart from its seed,
the rule and objective, the learning signal (``bp``/``dfa``), the readout bias mode,
the optimiser kind, momentum and schedule kind, and the data settings apart from the seed
(a member's ``epochs``, ``patience`` and ``min_delta`` are its own). Supported here: ``mlp``,
``rsnn`` and ``vgg`` networks (dense, recurrent, convolutional: a grouped convolution with the
members as groups of channels, and the input transforms, pooling and global average, on the
members' samples side by side), with or without weight standardisation (per member and
output unit; the gains are stacked parameters, and S-TLLR's update passes back through the
standardisation as in :func:`stllr_engine.stllr.apply_gradients`); offline S-TLLR (every
mode: they compute the same update, the pack runs its window as one chunk), online S-TLLR
(the sequence one step at a time, each member's optimiser stepped at every step of its own
window) and BPTT on every objective, with any per-step loss (:mod:`stllr_engine.losses`) and
per-sample or per-step targets.

A member equals its separate run: :mod:`tests.engine.test_pack` compares gradients,
optimiser steps and whole runs with :func:`stllr_engine.stllr.stllr_step`,
:func:`stllr_engine.bptt.bptt_step`, ``torch.optim`` and :func:`stllr_engine.train.fit`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine import fused
from stllr_engine.bptt import scan_backward
from stllr_engine.errors import StllrError
from stllr_engine.layers import standardize_weight
from stllr_engine.losses import StepLoss, get_step_loss
from stllr_engine.network import Network
from stllr_engine.neurons import LIFParameters, get_surrogate
from stllr_engine.train import TrainConfig

__all__ = ["Pack", "PackAdam", "PackSGD", "PackStats", "pack_key", "check_packable", "pack_stllr_step",
           "pack_bptt_step", "pack_inference"]


# ---------------------------------------------------------------------------------------
# what may share a pack
# ---------------------------------------------------------------------------------------

#: TrainConfig fields that may differ between members (the rest must be equal).
MEMBER_TRAIN_FIELDS = ("lr", "weight_decay", "seed", "device", "measure_costs", "epochs", "patience", "min_delta")
#: STLLRConfig fields that may differ between members.
MEMBER_STLLR_FIELDS = ("learn_steps", "lambda_pre", "lambda_post", "alpha_pre", "alpha_post", "readout_lambda",
                       "layer_factors", "mode", "chunk_steps")


def pack_key(spec_dict: dict[str, Any], train: TrainConfig) -> tuple[Any, ...]:
    """What members of one pack must share: the spec without its seed, and the training
    settings that are not per member (hashable; equal keys may share a pack)."""
    spec = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec_dict.items() if k != "seed"}
    t = train.to_dict()
    s = t.pop("stllr")
    for k in MEMBER_TRAIN_FIELDS:
        t.pop(k, None)
    t["loss"] = train.loss_kind
    common_stllr = {k: v for k, v in s.items() if k not in MEMBER_STLLR_FIELDS}
    if train.rule == "bptt":  # only the window of a per-step objective matters to BPTT
        common_stllr = {}
    return (tuple(sorted(spec.items())), tuple(sorted(t.items())), tuple(sorted(common_stllr.items())))


def check_packable(nets: Sequence[Network], cfgs: Sequence[TrainConfig]) -> None:
    """Raise a one-line :class:`StllrError` unless these members can train as one pack."""
    if not nets or len(nets) != len(cfgs):
        raise StllrError("a pack needs one training config per network, and at least one member")
    spec = nets[0].spec
    if spec.kind not in ("mlp", "rsnn", "vgg"):
        raise StllrError(f"a pack trains mlp, rsnn and vgg networks; kind {spec.kind!r} trains unpacked "
                         "(resources.pack: 1)")
    key = pack_key(spec.to_dict(), cfgs[0])
    for net, cfg in zip(nets, cfgs):
        if pack_key(net.spec.to_dict(), cfg) != key:
            raise StllrError("the members of a pack must share the architecture and every setting that is not "
                             "per member (lr, weight_decay, seed, S-TLLR factors and window)")
    devices = {str(n.readout.weight.device) for n in nets}
    dtypes = {n.readout.weight.dtype for n in nets}
    if len(devices) > 1 or len(dtypes) > 1:
        raise StllrError(f"the members of a pack must live on one device with one dtype, got {devices} {dtypes}")


# ---------------------------------------------------------------------------------------
# the stacked model
# ---------------------------------------------------------------------------------------


class PackLayer(NamedTuple):
    """One hidden layer's stacked parameters: ``w [K, out, in]`` (conv: ``[K, out, in, kh, kw]``),
    ``b [K, out]``, ``w_rec [K, out, out]``, and the weight-standardisation gains ``[K, out]``."""

    w: Tensor
    b: Tensor | None
    w_rec: Tensor | None
    gain: Tensor | None = None
    rec_gain: Tensor | None = None


class _Weights(NamedTuple):
    """The weights one hidden layer's synapses use (standardised where enabled): ``w``, ``w_rec``."""

    w: Tensor
    w_rec: Tensor | None


@dataclass
class Pack:
    """K members' parameters, stacked; :meth:`from_networks` builds it, :meth:`write_back` undoes it.

    ``factors[name]`` are ``[L, K]`` tensors (per hidden layer, per member); ``learn_steps``
    is ``[K]``; ``readout_lambda`` ``[K]``.
    """

    layers: list[PackLayer]
    ro_w: Tensor
    ro_b: Tensor
    lif: LIFParameters
    gamma_o: float
    recurrent: bool
    feedback: list[Tensor]  # DFA matrices [K, C, N_l]
    cfgs: list[TrainConfig]
    meta: list[Any] = dataclasses.field(default_factory=list)  # the first member's layers: geometry, transforms
    ro_meta: Any = None  # the first member's readout: its input transform and shape

    @property
    def K(self) -> int:
        return self.ro_w.shape[0]

    @classmethod
    def from_networks(cls, nets: Sequence[Network], cfgs: Sequence[TrainConfig]) -> "Pack":
        check_packable(nets, cfgs)
        first = nets[0]
        layers = []
        for i, layer in enumerate(first.hidden_layers):
            w = torch.stack([n.hidden_layers[i].weight.detach() for n in nets]).clone()
            b = (torch.stack([n.hidden_layers[i].bias.detach() for n in nets]).clone()  # type: ignore[union-attr]
                 if layer.bias is not None else None)
            wr = (torch.stack([n.hidden_layers[i].rec_weight.detach() for n in nets]).clone()  # type: ignore[union-attr]
                  if layer.rec_weight is not None else None)
            gain = (torch.stack([n.hidden_layers[i].gain.detach() for n in nets]).clone()  # type: ignore[union-attr]
                    if layer.gain is not None else None)
            rec_gain = (torch.stack([n.hidden_layers[i].rec_gain.detach() for n in nets]).clone()  # type: ignore[union-attr]
                        if layer.rec_gain is not None else None)
            layers.append(PackLayer(w, b, wr, gain, rec_gain))
        ro_w = torch.stack([n.readout.weight.detach() for n in nets]).clone()
        ro_b = torch.stack([n.readout.bias.detach() for n in nets]).clone()
        feedback = []
        if cfgs[0].rule == "stllr" and cfgs[0].stllr.learning_signal == "dfa":
            feedback = [torch.stack([n.feedback_matrix(i) for n in nets]) for i in range(len(layers))]
        return cls(layers, ro_w, ro_b, first.hidden_layers[0].lif, first.readout.gamma_o,
                   first.hidden_layers[0].recurrent, feedback, list(cfgs), list(first.hidden_layers), first.readout)

    def parameters(self) -> list[Tensor]:
        """The stacked parameters, in a fixed order (the optimisers' order)."""
        out = [self.ro_w, self.ro_b]
        for layer in self.layers:
            out += [t for t in layer if t is not None]
        return out

    def member_parameters(self, nets: Sequence[Network]) -> list[list[Tensor]]:
        """Each stacked parameter's counterparts in the member networks, in :meth:`parameters` order."""
        out: list[list[Tensor]] = [[n.readout.weight for n in nets], [n.readout.bias for n in nets]]
        for i, layer in enumerate(self.layers):
            if layer.w is not None:
                out.append([n.hidden_layers[i].weight for n in nets])
            if layer.b is not None:
                out.append([n.hidden_layers[i].bias for n in nets])  # type: ignore[misc]
            if layer.w_rec is not None:
                out.append([n.hidden_layers[i].rec_weight for n in nets])  # type: ignore[misc]
            if layer.gain is not None:
                out.append([n.hidden_layers[i].gain for n in nets])  # type: ignore[misc]
            if layer.rec_gain is not None:
                out.append([n.hidden_layers[i].rec_gain for n in nets])  # type: ignore[misc]
        return out

    def effective(self, layers: Sequence[PackLayer] | None = None) -> list[_Weights]:
        """The weights the members' synapses use: ``W`` (and ``W_rec``) standardised per member
        and output unit where the spec says so (:func:`stllr_engine.layers.standardize_weight`,
        differentiable), else the stacked parameters themselves."""
        out = []
        for meta, layer in zip(self.meta, layers if layers is not None else self.layers):
            w, wr = layer.w, layer.w_rec
            if meta.weight_standardization:
                w = _standardize(w, meta.ws_unbiased, layer.gain)
            if wr is not None and meta.rec_standardization:
                wr = _standardize(wr, meta.ws_unbiased, layer.rec_gain)
            out.append(_Weights(w, wr))
        return out

    @property
    def standardized(self) -> bool:
        return any(m.standardized for m in self.meta)

    @torch.no_grad()
    def write_back(self, nets: Sequence[Network], members: Sequence[int] | None = None) -> None:
        """Copy the stacked parameters into the member networks (``members``: only those)."""
        idx = range(self.K) if members is None else members
        for stacked, own in zip(self.parameters(), self.member_parameters(nets)):
            for k in idx:
                own[k].copy_(stacked[k])

    def factor(self, name: str) -> Tensor:
        """``[L, K]`` values of one S-TLLR factor (per-layer overrides applied)."""
        L = len(self.layers)
        vals = [[getattr(f, name) for f in cfg.stllr.factors(L)] for cfg in self.cfgs]
        return torch.tensor(vals, dtype=self.ro_w.dtype, device=self.ro_w.device).t().contiguous()

    def learn_steps(self, T: int) -> Tensor:
        """``[K]`` windows: S-TLLR's ``learn_steps`` (BPTT: its objective's window)."""
        out = []
        for cfg in self.cfgs:
            if cfg.rule == "stllr" or cfg.loss_kind == "per_step":
                n = cfg.stllr.learn_steps
                if n > T:
                    raise StllrError(f"learn_steps={n} exceeds the T={T} steps of the batch: use learn_steps <= T")
                out.append(n)
            else:
                out.append(T)
        return torch.tensor(out, device=self.ro_w.device)

    def readout_lambdas(self) -> Tensor:
        vals = [c.stllr.readout_lambda if c.stllr.readout_lambda is not None else self.gamma_o for c in self.cfgs]
        return torch.tensor(vals, dtype=self.ro_w.dtype, device=self.ro_w.device)


class PackStats(NamedTuple):
    """Per-member step stats, each ``[K]`` (see :class:`stllr_engine.step_types.StepStats`)."""

    loss: Tensor
    correct: Tensor
    batch: int
    objective: Tensor


def _col(t: Tensor, dims: int) -> Tensor:
    """``[K]`` → ``[K, 1, ..., 1]`` with ``dims`` trailing ones (broadcast per member)."""
    return t.view(t.shape[0], *([1] * dims))


def _standardize(w: Tensor, unbiased: bool, gain: Tensor | None) -> Tensor:
    """:func:`standardize_weight` of each member's ``[out, ...]`` weight, on ``[K, out, ...]``
    (per output unit over its fan-in: the member and unit axes flatten into one)."""
    flat = standardize_weight(w.flatten(0, 1), unbiased=unbiased, gain=None if gain is None else gain.flatten())
    return flat.view_as(w)


def _grouped(t: Tensor) -> Tensor:
    """``[K, N, C, H, W]`` → ``[N, K·C, H, W]``: the members as groups of channels."""
    K, N = t.shape[0], t.shape[1]
    return t.transpose(0, 1).reshape(N, K * t.shape[2], *t.shape[3:])


def _ungrouped(t: Tensor, K: int) -> Tensor:
    """``[N, K·C, H, W]`` → ``[K, N, C, H, W]`` (contiguous)."""
    N = t.shape[0]
    return t.view(N, K, t.shape[1] // K, *t.shape[2:]).transpose(0, 1).contiguous()


def _transformed(pre: Any, in_shape: tuple[int, ...], inp: Tensor) -> Tensor:
    """A layer's input transform (pooling, global average) on ``[K, T, B, n]`` spikes; flat out."""
    if not pre.steps:
        return inp
    K, T, B = inp.shape[:3]
    return pre(inp.reshape(K * T * B, *in_shape)).reshape(K, T, B, -1)


def _synapse(meta: Any, xs: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Input currents ``[K, T, B, n]`` of every member for transformed input ``xs [K, T, B, F]``:
    one batched GEMM (dense) or one grouped convolution (conv)."""
    K, T, B, F_in = xs.shape
    if meta.kind == "dense":
        flat = xs.reshape(K, T * B, F_in)
        cur = torch.baddbmm(b[:, None, :], flat, w.transpose(1, 2)) if b is not None else torch.bmm(flat, w.transpose(1, 2))
        return cur.view(K, T, B, -1)
    x = _grouped(xs.reshape(K, T * B, *meta.x_shape))
    cur = F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1), padding=meta.padding, groups=K)
    return _ungrouped(cur, K).view(K, T, B, -1)


def _weight_grad(meta: Any, g: Tensor, x: Tensor, w_shape: torch.Size) -> Tensor:
    """``Σ_rows g ⊗ x`` per member, ``[K, *w_shape]``: ``g [K, rows, n]``, ``x [K, rows, F]``."""
    K, rows = g.shape[0], g.shape[1]
    if meta.kind == "dense":
        return torch.bmm(g.transpose(1, 2), x)
    gw = torch.nn.grad.conv2d_weight(_grouped(x.reshape(K, rows, *meta.x_shape)), (K * w_shape[1], *w_shape[2:]),
                                     _grouped(g.reshape(K, rows, *meta.out_shape)), padding=meta.padding, groups=K)
    return gw.view(w_shape)


def _bias_grad(meta: Any, g: Tensor) -> Tensor:
    K, rows = g.shape[0], g.shape[1]
    if meta.kind == "dense":
        return g.sum(1)
    return g.reshape(K, rows, meta.out_shape[0], -1).sum((1, 3))


def _input_grad(meta: Any, g: Tensor, w: Tensor, x_raw: Tensor | None) -> Tensor:
    """The adjoint of a layer's synapse and input transform, per member: ``[K, rows, n_in]``."""
    K, rows = g.shape[0], g.shape[1]
    if meta.kind == "dense":
        d = torch.bmm(g, w)
    else:
        d = torch.nn.grad.conv2d_input((rows, K * meta.x_shape[0], *meta.x_shape[1:]), w.reshape(-1, *w.shape[2:]),
                                       _grouped(g.reshape(K, rows, *meta.out_shape)), padding=meta.padding, groups=K)
        d = _ungrouped(d, K)
    return _adjoint(meta.pre, meta.in_shape, d, x_raw)


def _adjoint(pre: Any, in_shape: tuple[int, ...], d: Tensor, x_raw: Tensor | None) -> Tensor:
    """A transform's vector-Jacobian product on ``[K, rows, ...]`` (``x_raw``: its input, max pooling)."""
    K, rows = d.shape[0], d.shape[1]
    if not pre.steps:
        return d.reshape(K, rows, -1)
    raw = None if x_raw is None else x_raw.reshape(K * rows, *in_shape)
    return pre.adjoint(d.reshape(K * rows, *d.shape[2:]), in_shape, raw).reshape(K, rows, -1)


def _flatten_input(x: Tensor) -> Tensor:
    """``[K, T, B, *shape]`` → ``[K, T, B, F]``."""
    return x.reshape(*x.shape[:3], -1)


def _lif_advance(u: Tensor, current: Tensor, p: LIFParameters, one: Tensor, y_prev: Tensor | None,
                 w_rec_t: Tensor | None, v: Tensor | None = None, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The LIF step of :func:`stllr_engine.neurons.lif_advance_` on ``[K, B, n]``, written
    into ``v`` and ``y`` where given (views of the caller's records); returns ``(v, y)``."""
    torch.add(current, u, alpha=p.gamma, out=u)
    if w_rec_t is not None and y_prev is not None:
        u.baddbmm_(y_prev, w_rec_t)
    v = torch.sub(u, p.theta, out=v) if v is not None else u - p.theta
    y = torch.heaviside(v, one, out=y) if y is not None else torch.heaviside(v, one)
    if p.reset == "soft":
        u.sub_(y, alpha=p.theta)
    else:
        u.mul_(1.0 - y)
    return v, y


def _trace_window(x: Tensor, lam: Tensor, t0: int) -> Tensor:
    """``tr[t] = λ tr[t-1] + x[t]`` (zero start) for the steps ``t >= t0`` of ``x [K, T, B, F]``,
    per-member ``λ [K]``: the steps before ``t0`` collapse into one batched weighted sum."""
    K, T = x.shape[0], x.shape[1]
    lam3 = _col(lam, 2)
    if t0 > 0:
        powers = torch.arange(t0 - 1, -1, -1, dtype=x.dtype, device=x.device)  # t0-1-s
        decay = torch.pow(lam[:, None], powers[None, :])  # [K, t0]; 0**0 = 1
        tr = torch.bmm(decay[:, None, :], x[:, :t0].reshape(K, t0, -1)).view(K, *x.shape[2:])
    else:
        tr = torch.zeros_like(x[:, 0])
    out = x.new_empty(K, T - t0, *x.shape[2:])
    for t in range(t0, T):
        tr = torch.addcmul(x[:, t], tr, lam3, out=out[:, t - t0])
    return out


class _Records(NamedTuple):
    x: Tensor  # layer input after its transform, at window steps [K, L, B, F]
    tr_pre: Tensor
    psi: Tensor
    tr_post_prev: Tensor
    y_prev: Tensor | None
    tr_rec: Tensor | None
    x_raw: Tensor | None = None  # the input before its transform (max pooling's adjoint)


def _layer_forward(pack: Pack, i: int, inp: Tensor, t0: int, lam_pre: Tensor, lam_post: Tensor,
                   record: bool, weights: _Weights) -> tuple[Tensor, _Records | None]:
    """Spikes ``[K, T, B, n]`` of hidden layer ``i`` for input ``[K, T, B, F]`` (flat), and the
    window's records; ``weights``: the layer's synapses' weights (:meth:`Pack.effective`)."""
    layer, meta = pack.layers[i], pack.meta[i]
    xs = _transformed(meta.pre, meta.in_shape, inp)
    current = _synapse(meta, xs, weights.w, layer.b)
    K, T, B, n = current.shape
    p = pack.lif
    psi_fn = get_surrogate(p.surrogate)
    L = T - t0
    u = current.new_zeros(K, B, n)
    one = u.new_ones(())
    spikes = torch.empty_like(current)
    w_rec_t = weights.w_rec.transpose(1, 2) if weights.w_rec is not None else None
    y_prev = u.new_zeros(K, B, n) if w_rec_t is not None else None
    lam_post3, lam_pre3 = _col(lam_post, 2), _col(lam_pre, 2)
    # traces live in history buffers (step t writes slot t + 1): the window's
    # tr_post[t-1] and tr_rec[t] are views of them, never copied
    psi_rec = post_hist = yprev_rec = rec_hist = None
    if record:
        psi_rec = u.new_empty(K, L, B, n)
        post_hist = u.new_empty(K, T + 1, B, n)  # every slot but the first is written before it is read
        post_hist[:, 0].zero_()
        if w_rec_t is not None:
            rec_hist = u.new_empty(K, T + 1, B, n)
            rec_hist[:, 0].zero_()
    v_buf = torch.empty_like(u)
    psi_buf = torch.empty_like(u)
    if fused.active(u):
        for t in range(T):
            w = t - t0
            if rec_hist is not None:
                assert y_prev is not None
                torch.addcmul(y_prev, rec_hist[:, t], lam_pre3, out=rec_hist[:, t + 1])
            rec = None
            if w_rec_t is not None:  # y[t-1] W_recᵀ, in v's buffer (the kernel reads it first)
                rec = torch.bmm(y_prev, w_rec_t, out=v_buf)  # type: ignore[arg-type]
            psi_out = (psi_rec[:, w] if w >= 0 else psi_buf) if post_hist is not None else None  # type: ignore[index]
            fused.lif_step(u, current[:, t], rec, v_buf if rec is not None else None, spikes[:, t], psi_out,
                           post_hist[:, t] if post_hist is not None else None,
                           post_hist[:, t + 1] if post_hist is not None else None, None,
                           lam_post if post_hist is not None else None, p.gamma, p.theta, p.reset, p.surrogate,
                           groups=K, fma_trace=False)
            if w_rec_t is not None:
                y_prev = spikes[:, t]
    else:
        for t in range(T):
            w = t - t0
            if rec_hist is not None:
                assert y_prev is not None
                torch.addcmul(y_prev, rec_hist[:, t], lam_pre3, out=rec_hist[:, t + 1])
            _, y = _lif_advance(u, current[:, t], p, one, y_prev, w_rec_t, v_buf, spikes[:, t])
            if w_rec_t is not None:
                y_prev = y
            if post_hist is not None:
                psi = psi_fn(v_buf, out=psi_rec[:, w] if w >= 0 else psi_buf)  # type: ignore[index]
                torch.addcmul(psi, post_hist[:, t], lam_post3, out=post_hist[:, t + 1])
    if record and w_rec_t is not None:
        # y[t-1] at window steps: the spikes one step back (zeros before the first)
        yprev_rec = torch.cat([spikes.new_zeros(K, 1, B, n), spikes[:, :-1]], 1)[:, t0:] if t0 == 0 else spikes[:, t0 - 1:T - 1]
    trpost_rec = post_hist[:, t0:T] if post_hist is not None else None
    trrec_rec = rec_hist[:, t0 + 1:T + 1] if rec_hist is not None else None
    if not record:
        return spikes, None
    tr_pre = _trace_window(xs, lam_pre, t0)
    x_raw = inp[:, t0:] if meta.pre.needs_input_for_adjoint else None
    return spikes, _Records(xs[:, t0:], tr_pre, psi_rec, trpost_rec, yprev_rec, trrec_rec, x_raw)  # type: ignore[arg-type]


def _readout_input(pack: Pack, inp: Tensor) -> Tensor:
    """The readout's input transform (vgg: pooling, global average) on ``[K, T, B, n]``."""
    ro = pack.ro_meta
    return inp if ro is None else _transformed(ro.pre, ro.in_shape, inp)


def _readout_forward(pack: Pack, inp: Tensor) -> Tensor:
    """Readout trajectory ``o [K, T, B, C]`` for its (transformed) input ``[K, T, B, F]``."""
    K, T, B, F_in = inp.shape
    z = torch.baddbmm(pack.ro_b[:, None, :], inp.reshape(K, T * B, F_in), pack.ro_w.transpose(1, 2))
    z = z.view(K, T, B, -1)
    o = torch.empty_like(z)
    o[:, 0] = z[:, 0]
    for t in range(1, T):
        torch.add(z[:, t], o[:, t - 1], alpha=pack.gamma_o, out=o[:, t])
    return o


def _check_batch(pack: Pack, x: Tensor, labels: Tensor, sl: StepLoss) -> bool:
    """Check the batch's shapes; return whether its targets are per step (``[K, T, B, ...]``)."""
    if x.dim() < 4 or x.shape[0] != pack.K:
        raise StllrError(f"a pack of {pack.K} members takes input [K={pack.K}, T, B, ...], got {tuple(x.shape)}")
    K, T, B = x.shape[:3]
    extra = ", C" * sl.target_dims
    per_step = labels.dim() == sl.target_dims + 3
    lead = (K, T, B) if per_step else (K, B)
    if labels.dim() not in (sl.target_dims + 2, sl.target_dims + 3) or tuple(labels.shape[:len(lead)]) != lead:
        raise StllrError(f"a pack takes targets [K, B{extra}] = [{K}, {B}{extra}] or per step [K, T, B{extra}] = "
                         f"[{K}, {T}, {B}{extra}], got {tuple(labels.shape)}")
    return per_step


def _window_targets(labels: Tensor, per_step: bool, first: int, T: int) -> Tensor:
    if per_step:
        return labels[:, first:]
    return labels[:, None].expand(labels.shape[0], T - first, *labels.shape[1:])


def _final_targets(labels: Tensor, per_step: bool) -> Tensor:
    return labels[:, -1] if per_step else labels


def _per_member(sl: StepLoss, o: Tensor, target: Tensor) -> Tensor:
    """``ℓ`` of each member's ``[B, C]`` output: ``o [K, B, C]`` → ``[K]`` (the members as steps)."""
    return sl.values(o, target)


def _correct(sl: StepLoss, o_sum: Tensor, final: Tensor) -> Tensor:
    if not sl.classification:
        return torch.zeros(o_sum.shape[0], dtype=torch.int64, device=o_sum.device)
    return (o_sum.argmax(-1) == final).sum(1)


def _grad_into(t: Tensor, g: Tensor) -> None:
    t.grad = g if t.grad is None else t.grad + g


def _weights_for_learning(pack: Pack) -> tuple[list[_Weights] | None, list[_Weights]]:
    """``(graph, weights)``: with weight standardisation, the synapses' weights with their
    graph to the stacked parameters (and gains), and detached; else ``(None, parameters)``."""
    if not pack.standardized:
        return None, pack.effective()
    for t in pack.parameters():  # until _apply_updates (AccumulateGrad skips a leaf that no longer requires grad)
        t.requires_grad_(True)
    with torch.enable_grad():
        graph = pack.effective()
    return graph, [_Weights(w.w.detach(), None if w.w_rec is None else w.w_rec.detach()) for w in graph]


def _apply_updates(pack: Pack, graph: list[_Weights] | None, updates: Sequence[tuple[Tensor, Tensor | None]]) -> None:
    """Add the hidden layers' updates (of the weights the synapses use) to ``.grad``; standardised
    weights pass back through the standardisation, which also gives the gains their update
    (:func:`stllr_engine.stllr.apply_gradients`, per member)."""
    outputs: list[Tensor] = []
    incoming: list[Tensor] = []
    for i, (layer, (dw, dr)) in enumerate(zip(pack.layers, updates)):
        for used, param, g in ((None if graph is None else graph[i].w, layer.w, dw),
                               (None if graph is None else graph[i].w_rec, layer.w_rec, dr)):
            if param is None or g is None:
                continue
            if used is None or not used.requires_grad:
                _grad_into(param, g)
            else:
                outputs.append(used)
                incoming.append(g)
    if outputs:
        torch.autograd.backward(outputs, incoming)
    for t in pack.parameters():
        t.requires_grad_(False)


def _learn_window(pack: Pack, w_graph: list[_Weights] | None, weights: list[_Weights], records: list[_Records],
                  err: Tensor, tr_ro: Tensor, c_bias: Tensor | None, ro_raw: Tensor | None, a_pre: Tensor,
                  a_post: Tensor) -> None:
    """S-TLLR's update of every member over ``L`` window steps, into ``.grad`` of the stacked
    parameters: ``err [K, L, B, C]`` the output errors (zero outside a member's window),
    ``tr_ro [K, L, B, F]`` the readout's input trace, ``c_bias [K, L]`` the bias trace
    (``readout_bias: trace``; ``None``: the error alone), the layers' window ``records``."""
    K, L, B, C = err.shape
    rows = L * B
    err_f = err.reshape(K, rows, C)
    _grad_into(pack.ro_w, torch.bmm(err_f.transpose(1, 2), tr_ro.reshape(K, rows, -1)))
    if c_bias is not None:  # ∂o[t]/∂b = Σ_s λ^s: the bias trace
        _grad_into(pack.ro_b, (err * c_bias[:, :, None, None]).sum((1, 2)))
    else:
        _grad_into(pack.ro_b, err.sum((1, 2)))
    bp = pack.cfgs[0].stllr.learning_signal == "bp"
    delta = None
    if bp:
        delta = torch.bmm(err_f, pack.ro_w)
        if pack.ro_meta is not None:
            delta = _adjoint(pack.ro_meta.pre, pack.ro_meta.in_shape, delta, ro_raw)
    updates: list[tuple[Tensor, Tensor | None]] = [None] * len(pack.layers)  # type: ignore[list-item]
    for i in reversed(range(len(pack.layers))):
        layer, rec, meta, wts = pack.layers[i], records[i], pack.meta[i], weights[i]
        n = rec.psi.shape[-1]
        if not bp:
            delta = torch.bmm(err_f, pack.feedback[i])
        d = delta.view(K, rows, n)  # type: ignore[union-attr]
        g = d * rec.psi.reshape(K, rows, n)
        h = d * rec.tr_post_prev.reshape(K, rows, n)
        ap, aq = _col(a_pre[i], wts.w.dim() - 1), _col(a_post[i], wts.w.dim() - 1)
        dw = (_weight_grad(meta, g, rec.tr_pre.reshape(K, rows, -1), wts.w.shape) * ap
              + _weight_grad(meta, h, rec.x.reshape(K, rows, -1), wts.w.shape) * aq)
        if layer.b is not None:
            _grad_into(layer.b, _bias_grad(meta, g))
        dr = None
        if wts.w_rec is not None:
            assert rec.tr_rec is not None and rec.y_prev is not None
            gt, ht = g.transpose(1, 2), h.transpose(1, 2)
            ap2, aq2 = _col(a_pre[i], 2), _col(a_post[i], 2)
            dr = (torch.bmm(gt, rec.tr_rec.reshape(K, rows, n)) * ap2
                  + torch.bmm(ht, rec.y_prev.reshape(K, rows, n)) * aq2)
        updates[i] = (dw, dr)
        if bp and i > 0:
            delta = _input_grad(meta, g, wts.w, rec.x_raw)
    _apply_updates(pack, w_graph, updates)


@torch.no_grad()
def pack_stllr_step(pack: Pack, x: Tensor, labels: Tensor, loss: str = "per_step",
                    optimizer: "_PackOptimizer | None" = None, step_loss: StepLoss | str | None = None) -> PackStats:
    """One S-TLLR step of every member on its own batch: the update goes into ``.grad`` of the
    stacked parameters (what :func:`stllr_engine.stllr.stllr_step` writes for each member).

    Args:
        pack: the members.
        x: ``[K, T, B, *input_shape]``, member-major, time before batch.
        labels: ``[K, B, ...]`` targets (class labels ``[K, B]`` by default), or per step
            ``[K, T, B, ...]``.
        loss: ``"per_step"`` or ``"sum_output"`` (every member the same).
        step_loss: ``ℓ`` of ``L[t] = ℓ(o[t], target[t])`` (:mod:`stllr_engine.losses`; default
            cross-entropy).
        optimizer: the members' optimiser, required with online S-TLLR (``stllr.online``): each
            member then takes one optimiser step at every step of its own window, and the next
            step's forward sees its new weights (:func:`stllr_engine.stllr.stllr_step`'s online
            mode); ``.grad`` then holds the last step's update.
    """
    try:
        if pack.cfgs[0].rule == "stllr" and pack.cfgs[0].stllr.online:
            if optimizer is None:
                raise StllrError("online S-TLLR steps the optimiser at every window step: pass optimizer= to "
                                 "pack_stllr_step")
            if loss != "per_step":
                raise StllrError("online S-TLLR updates at every window step, but loss='sum_output' knows its "
                                 "output error only at the sequence's end: use loss='per_step' or online=False")
            return _pack_stllr_online(pack, x, labels, optimizer, get_step_loss(step_loss))
        return _pack_stllr_step(pack, x, labels, loss, get_step_loss(step_loss))
    finally:
        for t in pack.parameters():  # a standardised pack's weights required grad for the step's update
            t.requires_grad_(False)


def _pack_stllr_step(pack: Pack, x: Tensor, labels: Tensor, loss: str, sl: StepLoss) -> PackStats:
    """The body of :func:`pack_stllr_step`."""
    per_step_targets = _check_batch(pack, x, labels, sl)
    x = _flatten_input(x)
    K, T, B = x.shape[0], x.shape[1], x.shape[2]
    n_learn = pack.learn_steps(T)  # [K]
    L = int(n_learn.max())
    t0 = T - L
    lam_pre, lam_post = pack.factor("lambda_pre"), pack.factor("lambda_post")
    a_pre, a_post = pack.factor("alpha_pre"), pack.factor("alpha_post")
    w_graph, weights = _weights_for_learning(pack)
    records: list[_Records] = []
    inp = x
    for i in range(len(pack.layers)):
        inp, rec = _layer_forward(pack, i, inp, t0, lam_pre[i], lam_post[i], record=True, weights=weights[i])
        records.append(rec)  # type: ignore[arg-type]
    ro_raw = inp[:, t0:] if pack.ro_meta is not None and pack.ro_meta.pre.needs_input_for_adjoint else None
    inp = _readout_input(pack, inp)
    o = _readout_forward(pack, inp)  # [K, T, B, C]
    C = o.shape[-1]
    lam_ro = pack.readout_lambdas()
    tr_ro = _trace_window(inp, lam_ro, t0)  # [K, L, B, F]
    # the window mask: member k learns at steps t >= T - n_k
    steps = torch.arange(t0, T, device=x.device)
    mask = (steps[None, :] >= (T - n_learn)[:, None]).to(x.dtype)  # [K, L]
    o_win = o[:, t0:]
    target_win = _window_targets(labels, per_step_targets, t0, T)  # [K, L, B, ...]
    final = _final_targets(labels, per_step_targets)
    flat_win = target_win.reshape(K * L, *target_win.shape[2:])
    o_sum = o.sum(1)
    if loss == "sum_output":
        seq_err = sl.error(o_sum, final)[1]  # [K, B, C]: the members as steps, each its own batch mean
        err = seq_err[:, None].expand(K, L, B, C) * mask[:, :, None, None]
        per_step_l = None
    elif loss == "per_step":
        per_step_l, e = sl.values_and_error(o_win.reshape(K * L, B, C), flat_win)
        err = e.view(K, L, B, C) * mask[:, :, None, None]
        per_step_l = per_step_l.view(K, L)
    else:
        raise StllrError(f"S-TLLR: loss={loss!r} is not an objective S-TLLR learns: use per_step or sum_output")
    if pack.cfgs[0].stllr.readout_bias == "trace":
        s = (steps + 1).to(x.dtype)  # steps since the sequence began
        lam_c = lam_ro[:, None]
        c_bias = torch.where(lam_c == 1.0, s[None, :].expand(K, L),
                             (1.0 - torch.pow(lam_c, s[None, :])) / (1.0 - torch.where(lam_c == 1.0, 0.0, lam_c)))
    else:
        c_bias = None
    _learn_window(pack, w_graph, weights, records, err, tr_ro, c_bias, ro_raw, a_pre, a_post)
    loss_sum = _per_member(sl, o_sum, final)
    correct = _correct(sl, o_sum, final)
    if per_step_l is None:
        objective = loss_sum
    else:
        objective = (per_step_l * mask).sum(1) / n_learn.to(x.dtype)
    return PackStats(loss_sum, correct, B, objective)


def _pack_stllr_online(pack: Pack, x: Tensor, labels: Tensor, optimizer: "_PackOptimizer",
                       sl: StepLoss) -> PackStats:
    """Online S-TLLR for every member: the whole sequence one step at a time (the weights change
    within it), an optimiser step of the members whose window holds step ``t`` after it."""
    per_step_targets = _check_batch(pack, x, labels, sl)
    x = _flatten_input(x)
    K, T, B = x.shape[0], x.shape[1], x.shape[2]
    n_learn = pack.learn_steps(T)
    t_first = T - n_learn  # [K]: member k learns at steps t >= t_first[k]
    lam_pre, lam_post = pack.factor("lambda_pre"), pack.factor("lambda_post")
    a_pre, a_post = pack.factor("alpha_pre"), pack.factor("alpha_post")
    lam_ro = pack.readout_lambdas()
    trace_bias = pack.cfgs[0].stllr.readout_bias == "trace"
    p = pack.lif
    psi_fn = get_surrogate(p.surrogate)
    w_graph, weights = _weights_for_learning(pack)
    C = pack.ro_w.shape[1]
    targets = _window_targets(labels, per_step_targets, 0, x.shape[1])  # [K, T, B, ...]
    final = _final_targets(labels, per_step_targets)
    base_active = optimizer.active.clone()
    one = x.new_ones(())

    def zeros(n: int) -> Tensor:
        return x.new_zeros(K, B, n)

    state: list[dict[str, Tensor | None]] = []
    for i, meta in enumerate(pack.meta):
        n, fx = math.prod(meta.out_shape), math.prod(meta.x_shape)
        state.append({"u": zeros(n), "y": zeros(n) if pack.layers[i].w_rec is not None else None,
                      "tr_pre": zeros(fx), "tr_post": zeros(n),
                      "tr_rec": zeros(n) if pack.layers[i].w_rec is not None else None})
    f_ro = pack.ro_w.shape[2]
    o, tr_ro = x.new_zeros(K, B, C), zeros(f_ro)
    c_bias = x.new_zeros(K)
    o_sum = x.new_zeros(K, B, C)
    per_step = x.new_zeros(K)
    try:
        for t in range(T):
            inp = x[:, t]
            records = []
            for i, (meta, layer) in enumerate(zip(pack.meta, pack.layers)):
                st, wts = state[i], weights[i]
                xs = _transformed(meta.pre, meta.in_shape, inp[:, None])[:, 0]
                x_raw = inp if meta.pre.needs_input_for_adjoint else None
                current = _synapse(meta, xs[:, None], wts.w, layer.b)[:, 0]
                st["tr_pre"] = st["tr_pre"] * _col(lam_pre[i], 2) + xs  # type: ignore[operator]
                y_prev = st["y"]
                if y_prev is not None:
                    st["tr_rec"] = st["tr_rec"] * _col(lam_pre[i], 2) + y_prev  # type: ignore[operator]
                w_rec_t = wts.w_rec.transpose(1, 2) if wts.w_rec is not None else None
                v, y = _lif_advance(st["u"], current, p, one, y_prev, w_rec_t)  # type: ignore[arg-type]
                psi = psi_fn(v)
                tr_post_prev = st["tr_post"]
                st["tr_post"] = tr_post_prev * _col(lam_post[i], 2) + psi  # type: ignore[operator]
                if y_prev is not None:
                    st["y"] = y
                records.append(_Records(xs[:, None], st["tr_pre"][:, None], psi[:, None],  # type: ignore[index]
                                        tr_post_prev[:, None],  # type: ignore[index]
                                        None if y_prev is None else y_prev[:, None],
                                        None if st["tr_rec"] is None else st["tr_rec"][:, None],  # type: ignore[index]
                                        None if x_raw is None else x_raw[:, None]))
                inp = y
            ro_raw = inp[:, None] if pack.ro_meta is not None and pack.ro_meta.pre.needs_input_for_adjoint else None
            xo = _readout_input(pack, inp[:, None])[:, 0]
            o = torch.baddbmm(pack.ro_b[:, None, :], xo, pack.ro_w.transpose(1, 2)) + pack.gamma_o * o
            tr_ro = tr_ro * _col(lam_ro, 2) + xo
            c_bias = c_bias * lam_ro + 1.0
            o_sum += o
            learning = t >= t_first  # [K]
            if not bool(learning.any()):
                continue
            m = learning.to(x.dtype)
            values, e = sl.values_and_error(o, targets[:, t])  # the members as steps
            per_step += values * m
            err = (e * _col(m, 2))[:, None]  # [K, 1, B, C]
            optimizer.zero_grad()
            _learn_window(pack, w_graph, weights, records, err, tr_ro[:, None],
                          c_bias[:, None] if trace_bias else None, ro_raw, a_pre, a_post)
            optimizer.active.copy_(base_active & learning)
            optimizer.step()
            optimizer.active.copy_(base_active)
            w_graph, weights = _weights_for_learning(pack)  # the next step sees the new (re-standardised) weights
    finally:
        optimizer.active.copy_(base_active)
    return PackStats(_per_member(sl, o_sum, final), _correct(sl, o_sum, final), B, per_step / n_learn.to(x.dtype))


# ---------------------------------------------------------------------------------------
# BPTT
# ---------------------------------------------------------------------------------------


class PackLIFScan(torch.autograd.Function):
    """:class:`stllr_engine.bptt.LIFScan` for ``[K, T, B, n]`` currents: spikes forward, the
    same hand-written backward through time, the recurrent weights ``[K, n, n]`` batched."""

    @staticmethod
    def forward(ctx, current: Tensor, w_rec: Tensor | None, p: LIFParameters) -> Tensor:  # type: ignore[override]
        K, T = current.shape[0], current.shape[1]
        spikes = torch.empty_like(current)
        vs = torch.empty_like(current)
        u = torch.zeros_like(current[:, 0])
        one = u.new_ones(())
        wt = w_rec.transpose(1, 2) if w_rec is not None else None
        y_prev = None
        if fused.active(u):
            for t in range(T):
                rec = None
                if wt is not None and t > 0:  # in v[t]'s buffer (the kernel reads it first)
                    rec = torch.bmm(spikes[:, t - 1], wt, out=vs[:, t])  # type: ignore[arg-type]
                fused.lif_step(u, current[:, t], rec, vs[:, t], spikes[:, t], None, None, None,
                               None, None, p.gamma, p.theta, p.reset, p.surrogate, groups=K)
        else:
            for t in range(T):
                v, y = _lif_advance(u, current[:, t], p, one, y_prev, wt)
                vs[:, t] = v
                spikes[:, t] = y
                y_prev = y if wt is not None else None
        ctx.save_for_backward(vs, spikes, w_rec)
        ctx.p = p
        return spikes

    @staticmethod
    def backward(ctx, g_spikes: Tensor):  # type: ignore[override]
        vs, spikes, w_rec = ctx.saved_tensors
        K = vs.shape[0]
        g_cur = scan_backward(g_spikes.contiguous(), vs, w_rec, ctx.p, time_dim=1)  # a transform's adjoint may stride
        g_w = None
        if w_rec is not None and ctx.needs_input_grad[1]:
            n = w_rec.shape[1]
            g_w = torch.bmm(g_cur[:, 1:].reshape(K, -1, n).transpose(1, 2), spikes[:, :-1].reshape(K, -1, n))
        return g_cur, g_w, None


def _bptt_readout_inputs(pack: Pack, x: Tensor, params: list[PackLayer]) -> Tensor:
    """The readout's (transformed) input ``[K, T, B, F]``, differentiable in ``params``."""
    inp = x
    for meta, layer, wts in zip(pack.meta, params, pack.effective(params)):
        cur = _synapse(meta, _transformed(meta.pre, meta.in_shape, inp), wts.w, layer.b)
        inp = PackLIFScan.apply(cur, wts.w_rec, pack.lif)
    return _readout_input(pack, inp)


def pack_bptt_step(pack: Pack, x: Tensor, labels: Tensor, loss: str = "sum_output",
                   step_loss: StepLoss | str | None = None) -> PackStats:
    """One BPTT step of every member on its own batch, gradients into ``.grad`` of the stacked
    parameters (each member's own objective's gradient: members never mix).

    ``loss``: ``"sum_output"``, ``"per_step"`` (each member over its own ``learn_steps``)
    or ``"per_step_all"``; ``step_loss``: ``ℓ`` of ``L[t]`` (default cross-entropy; ``labels``
    as for :func:`pack_stllr_step`).
    """
    sl = get_step_loss(step_loss)
    per_step_targets = _check_batch(pack, x, labels, sl)
    final = _final_targets(labels, per_step_targets)
    x = _flatten_input(x)
    K, T, B = x.shape[0], x.shape[1], x.shape[2]
    params = []
    for layer in pack.layers:
        params.append(PackLayer(*(t.requires_grad_(True) if t is not None else None for t in layer)))  # type: ignore[arg-type]
    pack.ro_w.requires_grad_(True)
    pack.ro_b.requires_grad_(True)
    try:
        with torch.enable_grad():
            xo = _bptt_readout_inputs(pack, x, params)
            z = torch.baddbmm(pack.ro_b[:, None, :], xo.reshape(K, T * B, -1), pack.ro_w.transpose(1, 2))
            C = z.shape[-1]
            z = z.view(K, T, B, C)
            steps = torch.arange(T, device=x.device, dtype=x.dtype)
            g = pack.gamma_o
            lag = steps[:, None] - steps[None, :]
            leak = torch.where(lag >= 0, torch.pow(torch.tensor(g, dtype=x.dtype, device=x.device), lag.clamp_min(0.0)),
                               torch.zeros((), dtype=x.dtype, device=x.device))  # [T, T]: o = leak @ z
            k_sum = leak.sum(0)  # Σ_t o[t] = Σ_s k_s z[s]
            o_sum = torch.einsum("s,ksbc->kbc", k_sum, z)
            ce_sum = _per_member(sl, o_sum, final)
            if loss == "sum_output":
                objective = ce_sum
            elif loss in ("per_step", "per_step_all"):
                n_learn = pack.learn_steps(T) if loss == "per_step" else torch.full((K,), T, device=x.device)
                first = T - int(n_learn.max())
                o = torch.einsum("ts,ksbc->ktbc", leak[first:], z)  # [K, L, B, C]
                L = T - first
                tw = _window_targets(labels, per_step_targets, first, T)
                ce = sl.values(o.reshape(K * L, B, C), tw.reshape(K * L, *tw.shape[2:])).view(K, L)
                mask = (torch.arange(first, T, device=x.device)[None, :] >= (T - n_learn)[:, None]).to(x.dtype)
                objective = (ce * mask).sum(1) / n_learn.to(x.dtype)
            else:
                raise StllrError(f"BPTT: loss={loss!r}: use one of sum_output, per_step, per_step_all")
            objective.sum().backward()
    finally:
        for t in pack.parameters():
            t.requires_grad_(False)
    with torch.no_grad():
        correct = _correct(sl, o_sum, final)
    return PackStats(ce_sum.detach(), correct, B, objective.detach())


@torch.no_grad()
def pack_inference(pack: Pack, x: Tensor) -> Tensor:
    """``Σ_t o[t]`` ``[K, B, C]`` of every member for ``x [K, T, B, ...]`` (inference, no traces)."""
    inp = _flatten_input(x)
    zero = torch.zeros(pack.K, dtype=inp.dtype, device=inp.device)
    for i, wts in enumerate(pack.effective()):
        inp, _ = _layer_forward(pack, i, inp, inp.shape[1], zero, zero, record=False, weights=wts)
    return _readout_forward(pack, _readout_input(pack, inp)).sum(1)


# ---------------------------------------------------------------------------------------
# optimisers over stacked parameters, per member
# ---------------------------------------------------------------------------------------


class _PackOptimizer:
    """Steps stacked parameters ``[K, ...]`` with per-member ``lr`` and ``weight_decay``;
    members not ``active`` are left exactly as they are (parameters and state)."""

    def __init__(self, params: list[Tensor], lr: Sequence[float], weight_decay: Sequence[float]):
        self.params = params
        ref = params[0]
        self.K = ref.shape[0]
        self.lr = torch.tensor(list(lr), dtype=torch.float64)
        self.weight_decay = torch.tensor(list(weight_decay), dtype=ref.dtype, device=ref.device)
        self.active = torch.ones(self.K, dtype=torch.bool, device=ref.device)

    def set_lr(self, lr: Sequence[float]) -> None:
        """Each member's learning rate from now on (its schedule's value)."""
        self.lr = torch.tensor(list(lr), dtype=torch.float64)

    def step(self) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _grad(self, p: Tensor) -> Tensor:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if bool((self.weight_decay != 0).any()):
            g = g + _col(self.weight_decay, p.dim() - 1) * p
        return g


class PackAdam(_PackOptimizer):
    """``torch.optim.Adam`` (default betas and eps, L2 ``weight_decay``), per member."""

    def __init__(self, params: list[Tensor], lr: Sequence[float], weight_decay: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps = betas, eps
        self.steps = torch.zeros(self.K, dtype=torch.float64)
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        act_cpu = self.active.cpu()
        self.steps += act_cpu.to(torch.float64)
        step = self.steps.clamp_min(1.0)
        # the scalars torch's Adam computes in Python floats (float64), per member
        bc1 = 1.0 - torch.pow(torch.tensor(b1, dtype=torch.float64), step)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(torch.tensor(b2, dtype=torch.float64), step))
        step_size = (self.lr / bc1)
        ref = self.params[0]
        step_size_t = step_size.to(device=ref.device, dtype=ref.dtype)
        bc2_t = bc2_sqrt.to(device=ref.device, dtype=ref.dtype)
        everyone = bool(self.active.all())
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            g = self._grad(p)
            dims = p.dim() - 1
            if everyone:  # in place, torch's own sequence of operations
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denom = (v.sqrt() / _col(bc2_t, dims)).add_(self.eps)
                p.sub_(_col(step_size_t, dims) * m / denom)
                continue
            act = _col(self.active, dims)
            m_new = torch.lerp(m, g, 1.0 - b1)
            v_new = (v * b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v_new.sqrt() / _col(bc2_t, dims)).add_(self.eps)
            p_new = p - _col(step_size_t, dims) * m_new / denom
            m.copy_(torch.where(act, m_new, m))
            v.copy_(torch.where(act, v_new, v))
            p.copy_(torch.where(act, p_new, p))


class PackSGD(_PackOptimizer):
    """``torch.optim.SGD`` with momentum (dampening 0, no Nesterov), per member."""

    def __init__(self, params: list[Tensor], lr: Sequence[float], weight_decay: Sequence[float], momentum: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.buf: list[Tensor | None] = [None for _ in params]
        self.started = torch.zeros(self.K, dtype=torch.bool, device=params[0].device)

    @torch.no_grad()
    def step(self) -> None:
        ref = self.params[0]
        lr = self.lr.to(device=ref.device, dtype=ref.dtype)
        for j, p in enumerate(self.params):
            g = self._grad(p)
            dims = p.dim() - 1
            act = _col(self.active, dims)
            if self.momentum != 0:
                buf = self.buf[j]
                if buf is None:
                    buf = self.buf[j] = torch.zeros_like(p)
                started = _col(self.started, dims)
                new = torch.where(started, buf * self.momentum + g, g)
                buf.copy_(torch.where(act, new, buf))
                g = new
            p.copy_(torch.where(act, p - _col(lr, dims) * g, p))
        self.started |= self.active


def make_pack_optimizer(pack: Pack) -> _PackOptimizer:
    """The members' optimiser (``cfg.optimizer`` of the pack) over the stacked parameters."""
    cfg = pack.cfgs[0]
    lrs = [c.lr for c in pack.cfgs]
    wds = [c.weight_decay for c in pack.cfgs]
    if cfg.optimizer == "adam":
        return PackAdam(pack.parameters(), lrs, wds)
    return PackSGD(pack.parameters(), lrs, wds, momentum=cfg.momentum)


def member_lr_schedules(pack: Pack) -> list[Any]:
    """One torch scheduler per member over a dummy optimiser: each member's learning rate
    follows exactly the schedule its separate run's would."""
    from stllr_engine.train import _make_scheduler

    out = []
    for cfg in pack.cfgs:
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        out.append(_make_scheduler(dummy, cfg))
    return out


def finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())
