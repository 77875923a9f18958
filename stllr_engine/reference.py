r"""Naive, obviously-correct references for the fast paths (tests and benchmarks only).

* :func:`reference_stllr_grads` steps through time one step at a time, gets
  ``δ[t] = ∂L[t]/∂y[t]`` from autograd on a graph of that step alone (state detached),
  and builds the explicit eligibility tensor ``e_ij[t]`` of every layer (``[B, out, in]``
  for dense layers, ``[B, C_out, positions, C_in·k·k]`` for conv layers via unfold),
  exactly as written in DESIGN §3. Memory and time are huge: small cases only.
  With ``loss="sum_output"`` every window step's output error is the sequence's,
  ``softmax(Σ_t o[t]) − onehot`` (Σ_t o[t] from a first, unrolled pass), and
  ``δ[t] = ∂⟨err, o[t]⟩/∂y[t]`` within step ``t``.
  :func:`reference_stllr_online_sgd` applies each window step's update with a plain
  SGD step before the next step (online S-TLLR).
* :func:`reference_bptt_loss` is the plainly unrolled network, step by step, with
  :func:`stllr_engine.neurons.lif_step`, for autograd to differentiate through time,
  with any of BPTT's objectives (``"sum_output"``, ``"per_step"``, ``"per_step_all"``).

The S-TLLR factors, the weight standardisation and the DFA matrices are computed here
by their own code, not by the fast path's helpers (tests pin those helpers to numbers).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.layers import Readout, SpikingLayer
from stllr_engine.losses import StepLoss, get_step_loss
from stllr_engine.network import Network
from stllr_engine.neurons import LIFState, lif_step
from stllr_engine.stllr import STLLRConfig

__all__ = ["reference_stllr_grads", "reference_stllr_online_sgd", "reference_bptt_loss", "reference_weights",
           "reference_feedback"]


def _eligibility(layer: SpikingLayer, psi: Tensor, tr_pre: Tensor, tr_post_prev: Tensor, x: Tensor,
                 a_pre: float, a_post: float) -> Tensor:
    """Explicit e[t]: dense ``[B, out, in]``; conv ``[B, C_out, L, C_in·k·k]``."""
    if layer.kind == "dense":
        return a_pre * psi[:, :, None] * tr_pre[:, None, :] + a_post * tr_post_prev[:, :, None] * x[:, None, :]
    k, pad, stride = layer.kernel_size, layer.padding, layer.stride
    tr_u = F.unfold(tr_pre, k, padding=pad, stride=stride)  # [B, Cin·k·k, L]
    x_u = F.unfold(x, k, padding=pad, stride=stride)
    b, c = psi.shape[:2]
    psi_l, post_l = psi.reshape(b, c, -1), tr_post_prev.reshape(b, c, -1)  # [B, Cout, L]
    return (a_pre * psi_l[:, :, :, None] * tr_u.transpose(1, 2)[:, None]
            + a_post * post_l[:, :, :, None] * x_u.transpose(1, 2)[:, None])


def _apply_e(layer: SpikingLayer, delta: Tensor, e: Tensor) -> Tensor:
    """ΔW = Σ_b δ_i e_ij (conv: also summed over positions), in weight shape."""
    if layer.kind == "dense":
        return torch.einsum("bi,bij->ij", delta, e)
    b, c = delta.shape[:2]
    return torch.einsum("bcl,bclk->ck", delta.reshape(b, c, -1), e).reshape(layer.weight.shape)


def _readout_current(ro: Readout, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``W x + b`` of the readout, flat ``[B, outputs]``: a matrix product, or a 3×3 convolution
    (padding 1) of ``x`` as ``[B, C, H, W]`` for a conv head."""
    if ro.kind == "dense":
        return x.reshape(x.shape[0], -1) @ w.t() + b
    return F.conv2d(x.reshape(x.shape[0], *ro.x_shape), w, b, padding=1).flatten(1)


def _readout_update(ro: Readout, err: Tensor, tr: Tensor) -> Tensor:
    """``ΔW = Σ_b err ⊗ tr`` by explicit products; a conv head sums them over positions (unfold)."""
    if ro.kind == "dense":
        return torch.einsum("bi,bj->ij", err, tr.reshape(tr.shape[0], -1))
    b = err.shape[0]
    tr_u = F.unfold(tr.reshape(b, *ro.x_shape), 3, padding=1)  # [B, C·9, L]
    e = err.reshape(b, ro.out_channels, -1)  # [B, out, L]
    return torch.einsum("bol,bkl->ok", e, tr_u).reshape(ro.weight.shape)


def _readout_bias_update(ro: Readout, err: Tensor) -> Tensor:
    return err.reshape(err.shape[0], ro.out_channels, -1).sum((0, 2))


def _layer_input(layer: SpikingLayer, inp: Tensor, ys: list[Tensor]) -> Tensor:
    """The synapse's input: the transformed spikes of the layer below, with the skip's spikes
    concatenated along the channels where the layer has one."""
    xs = layer.pre(inp)
    if layer.skip is not None:
        xs = torch.cat([xs, ys[layer.skip]], dim=1)
    return xs


def reference_weights(layer: SpikingLayer) -> tuple[Tensor, Tensor | None]:
    """The weights the synapses use, written out here (not the fast path's helper):
    ``(W − mean) / sqrt(var · fan_in + 1e-4) · gain`` per output unit where enabled."""

    def standardise(w: Tensor, gain: Tensor | None) -> Tensor:
        flat = w.reshape(w.shape[0], -1)
        n = flat.shape[1]
        mean = flat.sum(1, keepdim=True) / n
        var = ((flat - mean) ** 2).sum(1, keepdim=True) / (n - 1 if layer.ws_unbiased else n)
        out = (flat - mean) / torch.sqrt(var * n + 1e-4)
        if gain is not None:
            out = out * gain[:, None]
        return out.reshape(w.shape)

    w = standardise(layer.weight, layer.gain) if layer.weight_standardization else layer.weight
    w_rec = layer.rec_weight
    if w_rec is not None and layer.rec_standardization:
        w_rec = standardise(w_rec, layer.rec_gain)
    return w, w_rec


def reference_feedback(net: Network, index: int) -> Tensor:
    """The DFA matrix of hidden layer ``index``, drawn here from its documented seed."""
    from stllr_engine.network import derived_seed

    c, n = net.readout.num_classes, net.hidden_layers[index].num_neurons
    g = torch.Generator().manual_seed(derived_seed(net.spec.seed, f"dfa/{index}"))
    return (torch.randn(c, n, generator=g) / c**0.5).to(net.readout.weight)


def _factors(cfg: STLLRConfig, i: int) -> dict[str, float]:
    """λ_pre, λ_post, α_pre, α_post of hidden layer ``i``: the defaults, then its overrides."""
    d = {"lambda_pre": cfg.lambda_pre, "lambda_post": cfg.lambda_post,
         "alpha_pre": cfg.alpha_pre, "alpha_post": cfg.alpha_post}
    for key, value in cfg.layer_factors.get(i, {}).items():
        d[key] = value
    return d


def reference_stllr_grads(net: Network, x: Tensor, labels: Tensor, cfg: STLLRConfig,
                          loss: str = "per_step", step_loss: StepLoss | str | None = None) -> dict[str, Tensor]:
    """S-TLLR updates by the equations, by parameter name (``net.named_parameters()``).

    Args:
        net: network (its parameters are not modified).
        x: input ``[T, B, ...]``.
        labels: ``[B]`` or per-step ``[T, B]`` (regression targets: ``[B, C]``, ``[T, B, C]``).
        cfg: the rule settings (``mode`` and ``online`` are irrelevant here).
        loss: ``"per_step"`` or ``"sum_output"`` (the output error, module docstring).
        step_loss: ``ℓ`` (default cross-entropy); every error here is autograd's ``∂ℓ/∂o``.
    """
    total = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for update in _reference_steps(net, x, labels, cfg, loss, step_loss):
        for name, g in update.items():
            total[name] += g
    return total


def reference_stllr_online_sgd(net: Network, x: Tensor, labels: Tensor, cfg: STLLRConfig, lr: float,
                               step_loss: StepLoss | str | None = None) -> None:
    """Online S-TLLR by the equations: after every window step, ``p ← p − lr · update``.

    A plain SGD step on the parameters after each window step's explicit-eligibility
    update; the next step's forward uses the new weights. Modifies ``net`` in place.
    """
    params = dict(net.named_parameters())
    with torch.no_grad():
        for update in _reference_steps(net, x, labels, cfg, "per_step", step_loss):
            for name, g in update.items():
                params[name].sub_(g, alpha=lr)


def _reference_steps(net: Network, x: Tensor, labels: Tensor, cfg: STLLRConfig,
                     loss_kind: str = "per_step", step_loss: StepLoss | str | None = None) -> Iterator[dict[str, Tensor]]:
    """Yields each window step's update by parameter name, step by step; reads the
    parameters afresh at every step, so a caller may change them between steps."""
    T, batch = x.shape[0], x.shape[1]
    layers = net.hidden_layers
    ro = net.readout
    sl = get_step_loss(step_loss)
    per_step_targets = sl.per_step(labels)

    def output_error(o: Tensor, target: Tensor) -> Tensor:  # ∂ℓ(o, target)/∂o, by autograd
        with torch.enable_grad():
            leaf = o.detach().requires_grad_(True)
            return torch.autograd.grad(sl.step(leaf, target), leaf)[0]

    seq_err = None
    if loss_kind == "sum_output":
        with torch.no_grad():
            o_sum = torch.stack(_unrolled_outputs(net, x)).sum(0)
        seq_err = output_error(o_sum, labels[-1] if per_step_targets else labels)
    elif loss_kind != "per_step":
        raise ValueError(f"unknown loss {loss_kind!r}")
    factors = [_factors(cfg, i) for i in range(len(layers))]
    lam_ro = cfg.readout_lambda if cfg.readout_lambda is not None else ro.gamma_o
    t_win = T - cfg.learn_steps

    def zeros(shape):
        return x.new_zeros(batch, *shape)

    u = [zeros(layer.out_shape) for layer in layers]
    y_prev = [zeros(layer.out_shape) for layer in layers]
    tr_pre = [zeros(layer.x_shape) for layer in layers]
    tr_rec = [zeros(layer.out_shape) for layer in layers]
    tr_post = [zeros(layer.out_shape) for layer in layers]
    o = x.new_zeros(batch, ro.num_classes)
    tr_ro = zeros(ro.x_shape)
    c_ro = 0.0

    for t in range(T):
        with torch.no_grad():
            weights = [reference_weights(layer) for layer in layers]
        lab = labels[t] if per_step_targets else labels
        # requires_grad on the input makes the step's graph exist even without a bias
        inp: Tensor = x[t].clone().requires_grad_(cfg.learning_signal == "bp")
        xs_all: list[Tensor] = []
        ys: list[Tensor] = []
        vs: list[Tensor] = []
        with torch.enable_grad():
            for i, layer in enumerate(layers):
                w, w_rec = weights[i]
                xs = _layer_input(layer, inp, ys)
                cur = layer.add_bias(layer.synapse(xs, w))
                if w_rec is not None:
                    cur = cur + y_prev[i] @ w_rec.t()
                y, v, st = lif_step(cur, LIFState(u[i]), layer.lif)
                xs_all.append(xs)
                ys.append(y)
                vs.append(v.detach())
                u[i] = st.u.detach()
                inp = y
            xo = ro.pre(inp)
            o = ro.gamma_o * o.detach() + _readout_current(ro, xo, ro.weight.detach(), ro.bias.detach())
            if seq_err is not None:  # the sequence's output error at every step
                err = seq_err
                deltas = (list(torch.autograd.grad(o, ys, grad_outputs=seq_err))
                          if t >= t_win and cfg.learning_signal == "bp" else None)
            elif t >= t_win and cfg.learning_signal == "bp":
                *deltas, err = torch.autograd.grad(sl.step(o, lab), ys + [o])  # δ_l[t] = ∂L[t]/∂y_l[t]
            else:
                deltas = None
                err = output_error(o, lab)
        o = o.detach()
        tr_ro = lam_ro * tr_ro + xo.detach()
        c_ro = lam_ro * c_ro + 1.0
        update = {"readout.weight": _readout_update(ro, err, tr_ro),
                  "readout.bias": _readout_bias_update(ro, err) * (c_ro if cfg.readout_bias == "trace" else 1.0)}
        for i, layer in enumerate(layers):
            f = factors[i]
            psi = _psi(layer, vs[i])
            xs = xs_all[i].detach()
            tr_pre[i] = f["lambda_pre"] * tr_pre[i] + xs
            if t >= t_win:
                if cfg.learning_signal == "bp":
                    delta = deltas[i]  # type: ignore[index]
                else:
                    delta = (err @ reference_feedback(net, i)).reshape(batch, *layer.out_shape)
                e = _eligibility(layer, psi, tr_pre[i], tr_post[i], xs, f["alpha_pre"], f["alpha_post"])
                g_w = _apply_e(layer, delta, e)
                g_rec = None
                if layer.recurrent:
                    tr_rec_now = f["lambda_pre"] * tr_rec[i] + y_prev[i]
                    e_rec = _eligibility(layer, psi, tr_rec_now, tr_post[i], y_prev[i], f["alpha_pre"], f["alpha_post"])
                    g_rec = torch.einsum("bi,bij->ij", delta, e_rec)
                update.update(_to_parameters(layer, f"layers.{i}.", g_w, g_rec))
                if layer.bias is not None:
                    update[f"layers.{i}.bias"] = (delta * psi).sum(dim=0 if layer.kind == "dense" else (0, 2, 3))
            if layer.recurrent:
                tr_rec[i] = f["lambda_pre"] * tr_rec[i] + y_prev[i]
            tr_post[i] = f["lambda_post"] * tr_post[i] + psi
            y_prev[i] = ys[i].detach()
        if t >= t_win:
            yield update


def _to_parameters(layer: SpikingLayer, prefix: str, g_w: Tensor, g_rec: Tensor | None) -> dict[str, Tensor]:
    """Updates of the parameters (weights, gains) for updates of the weights the synapses
    use: the chain rule through the standardisation, by autograd."""
    params = {name: p.detach().requires_grad_(True) for name, p in layer.named_parameters()}
    with torch.enable_grad():
        clone = _LayerView(layer, params)
        w, w_rec = reference_weights(clone)  # type: ignore[arg-type]
        outs, grads = [w], [g_w]
        if w_rec is not None and g_rec is not None:
            outs.append(w_rec)
            grads.append(g_rec)
        names = [n for n in params if n != "bias"]
        found = torch.autograd.grad(outs, [params[n] for n in names], grads, allow_unused=True)
    return {prefix + n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, found)}


class _LayerView:
    """A layer's settings with stand-in parameters (for differentiating the standardisation)."""

    def __init__(self, layer: SpikingLayer, params: dict[str, Tensor]):
        self.ws_unbiased = layer.ws_unbiased
        self.weight_standardization = layer.weight_standardization
        self.rec_standardization = layer.rec_standardization
        self.weight = params["weight"]
        self.rec_weight = params.get("rec_weight")
        self.gain = params.get("gain")
        self.rec_gain = params.get("rec_gain")


def _psi(layer: SpikingLayer, v: Tensor) -> Tensor:
    from stllr_engine.neurons import get_surrogate

    return get_surrogate(layer.lif.surrogate)(v)


def reference_bptt_loss(net: Network, x: Tensor, labels: Tensor, loss: str = "sum_output",
                        learn_steps: int | None = None, step_loss: StepLoss | str | None = None) -> Tensor:
    """The objective ``loss`` of the plainly unrolled network (differentiable).

    ``"sum_output"``: ``CE(Σ_t o[t], label)`` (per-step labels: the last step's);
    ``"per_step"``: the mean over the last ``learn_steps`` steps of ``CE(o[t], label[t])``;
    ``"per_step_all"``: the same mean over all ``T`` steps. CE is the batch mean;
    ``step_loss`` replaces it by any ``ℓ`` (:mod:`stllr_engine.losses`, its ``step``).
    """
    sl = get_step_loss(step_loss)
    per_step_targets = sl.per_step(labels)
    T, batch = x.shape[0], x.shape[1]
    if loss not in ("sum_output", "per_step", "per_step_all"):
        raise ValueError(f"unknown loss {loss!r}")
    if loss == "per_step" and (learn_steps is None or not 1 <= learn_steps <= T):
        raise ValueError(f"loss='per_step' needs 1 <= learn_steps <= T={T}, got {learn_steps}")
    first = T - learn_steps if loss == "per_step" else 0  # type: ignore[operator]
    outputs = _unrolled_outputs(net, x)
    if loss == "sum_output":
        return sl.step(torch.stack(outputs).sum(0), labels[-1] if per_step_targets else labels)
    per_step = [sl.step(o, labels[t] if per_step_targets else labels)
                for t, o in enumerate(outputs) if t >= first]
    return torch.stack(per_step).sum() / len(per_step)


def _unrolled_outputs(net: Network, x: Tensor) -> list[Tensor]:
    """The readout ``o[t]`` of every step of the plainly unrolled network (differentiable)."""
    batch = x.shape[1]
    layers = net.hidden_layers
    ro = net.readout
    u = [x.new_zeros(batch, *layer.out_shape) for layer in layers]
    y_prev = [x.new_zeros(batch, *layer.out_shape) for layer in layers]
    o = x.new_zeros(batch, ro.num_classes)
    outputs: list[Tensor] = []
    for xt in x.unbind(0):
        inp = xt
        ys: list[Tensor] = []
        for i, layer in enumerate(layers):
            w, w_rec = reference_weights(layer)
            cur = layer.add_bias(layer.synapse(_layer_input(layer, inp, ys), w))
            if w_rec is not None:
                cur = cur + y_prev[i] @ w_rec.t()
            y, _, st = lif_step(cur, LIFState(u[i]), layer.lif)
            u[i], y_prev[i] = st.u, y
            ys.append(y)
            inp = y
        o = ro.gamma_o * o + _readout_current(ro, ro.pre(inp), ro.weight, ro.bias)
        outputs.append(o)
    return outputs
