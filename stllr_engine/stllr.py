r"""S-TLLR: the STDP-inspired temporally local learning rule (DESIGN §3, exact discrete form).

For a layer with input ``x`` and neurons ``i``, over the learning window
(the last ``learn_steps`` steps of a sample):

.. math::

    e_{ij}[t] &= α_{pre}\, ψ_i[t]\, tr^{pre}_j[t] + α_{post}\, tr^{post}_i[t-1]\, x_j[t] \\
    ΔW_{ij} &= \sum_t δ_i[t]\, e_{ij}[t], \qquad Δb_i = \sum_t δ_i[t]\, ψ_i[t]

``e`` is never built: the update is two GEMMs over all (window step, sample) rows of a
chunk of steps (:attr:`STLLRConfig.mode`),
``α_pre (δ⊙ψ)ᵀ tr_pre + α_post (δ⊙tr_post[t−1])ᵀ x`` (convolutions: two conv weight
gradients). Recurrent weights use ``y[t−1]`` and its own pre-trace as the input.
The readout is learned with ``δ_o[t] ⊗ tr[t]``, ``tr`` its input trace with
λ = ``readout_lambda`` (default γ_o, which makes it the exact online gradient).

The learning signal ``δ[t] = ∂L[t]/∂y[t]``, ``L[t] = CE(o[t], label)`` (batch mean), is
computed within step ``t`` only: back-propagated through the layers above at that step
(``"bp"``) or sent by a fixed random matrix from the output error (``"dfa"``).

With ``loss="sum_output"`` (:func:`stllr_step`; the paper's BPTT objective
``L = CE(Σ_t o[t], label)``, the fourth cell of DESIGN §8's rule × objective) the output
error of every window step is the sequence's, ``∂L/∂(Σ_t o[t]) = softmax(Σ_t o[t]) − onehot``,
sent down within each step as above. It is known only once the sequence has ended, so
the window's records are held until then (one chunk, ``O(learn_steps·n)`` in every
mode) and the rule is no longer local in time in its learning signal; the eligibility
traces are unchanged. With ``learn_steps = T`` the readout's update is the exact gradient
of ``L``.

The resulting update is written to ``.grad`` of the parameters (it is the quantity a
gradient-descent optimiser subtracts), so any ``torch.optim`` optimiser applies it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor

from stllr_engine._checks import FrozenMapping, choice, integer, known_fields, real
from stllr_engine.errors import StllrError
from stllr_engine.forward import (
    LayerFactors,
    LayerRecord,
    NetState,
    ReadoutRecord,
    initial_state,
    run_chunk,
)
from stllr_engine.layers import SynapseWeights
from stllr_engine.losses import CrossEntropy, StepLoss, get_step_loss
from stllr_engine.network import Network
from stllr_engine.step_types import NoProbe, Probe, StepStats

# Probe and StepStats live in stllr_engine.step_types (shared with BPTT); importable here too.
__all__ = ["STLLRConfig", "STLLR_PRESETS", "Probe", "StepStats", "LayerUpdate", "Updates", "stllr_step",
           "apply_gradients"]

_FACTOR_KEYS = ("lambda_pre", "lambda_post", "alpha_pre", "alpha_post")
MODES = ("chunked", "window", "streaming")
#: The objectives S-TLLR learns (:func:`stllr_step`'s ``loss``).
STLLR_LOSSES = ("per_step", "sum_output")


@dataclass(frozen=True)
class STLLRConfig:
    """Settings of S-TLLR.

    Attributes:
        learn_steps: number of final steps in which δ is non-zero (paper: Gesture 5, SHD 90).
        lambda_pre, lambda_post: trace decays in [0, 1].
        alpha_pre, alpha_post: weights of the causal and non-causal terms
            (α_post < 0 favours causality, > 0 synchrony, 0 drops the non-causal term).
        learning_signal: ``"bp"`` (through the layers, within a step) or ``"dfa"``.
        readout_lambda: λ of the readout's input trace; ``None`` means γ_o (exact).
        mode: how many steps run together (DESIGN §8, "Memory as the rule needs it");
            every mode computes the same update. ``"chunked"`` (the default): chunks
            of ``chunk_steps`` steps, memory O(c·n), GEMMs over c·B rows;
            ``"window"``: the whole sequence as one chunk (the window's steps are one
            large batch: fast, but its records, O(learn_steps·n), are held until
            learning, and the hoisted forward is O(T·n)); ``"streaming"``: one step at a
            time, memory O(n) independent of T.
        chunk_steps: ``c`` of ``"chunked"`` mode, an integer >= 1 (``c >= T`` runs as
            window mode, ``c = 1`` as streaming); ``None`` picks it by
            :meth:`chunk_size`. Only ``"chunked"`` takes it: with another mode it is
            refused (window mode is ``c = T``, streaming ``c = 1``).
        online: one optimiser step at every window step (the official ``stllr_online``)
            instead of one per batch; :func:`stllr_step` then needs ``optimizer=``.
            The window then runs one step at a time in every mode (the weights change
            at each step); the steps before it run in chunks as the mode says.
        readout_bias: ``"trace"``: the readout bias learns from the error times its trace
            ``Σ_s λ^s`` (exact for a leaky readout with λ = γ_o); ``"error"``: from the
            output error alone (the official code).
        layer_factors: per-layer overrides ``{layer_index: {"alpha_post": 1.0, ...}}``;
            stored as an immutable mapping, checked once (``to_dict`` gives plain dicts).
    """

    learn_steps: int = 5
    lambda_pre: float = 0.5
    lambda_post: float = 0.2
    alpha_pre: float = 1.0
    alpha_post: float = -1.0
    learning_signal: str = "bp"
    readout_lambda: float | None = None
    mode: str = "chunked"
    chunk_steps: int | None = None
    online: bool = False
    readout_bias: str = "trace"
    layer_factors: Mapping[int, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = "S-TLLR"
        integer(w, "learn_steps", self.learn_steps, 1)
        choice(w, "learning_signal", self.learning_signal, ("bp", "dfa"))
        choice(w, "mode", self.mode, MODES)
        if self.chunk_steps is not None:
            integer(w, "chunk_steps", self.chunk_steps, 1)
            if self.mode != "chunked":
                raise StllrError(f"{w}: chunk_steps={self.chunk_steps!r} applies to mode 'chunked' only, not "
                                 f"{self.mode!r} (window mode is chunk_steps = T, streaming chunk_steps = 1): "
                                 "drop chunk_steps or set mode: chunked")
        choice(w, "readout_bias", self.readout_bias, ("trace", "error"))
        real(w, "lambda_pre", self.lambda_pre, 0.0, 1.0)
        real(w, "lambda_post", self.lambda_post, 0.0, 1.0)
        real(w, "alpha_pre", self.alpha_pre)
        real(w, "alpha_post", self.alpha_post)
        if self.readout_lambda is not None:
            real(w, "readout_lambda", self.readout_lambda, 0.0, 1.0)
        if not isinstance(self.online, bool):
            raise StllrError(f"{w}: online={self.online!r} must be true or false")
        if not isinstance(self.layer_factors, Mapping):
            raise StllrError(f"{w}: layer_factors must map a layer index to factors, e.g. {{0: {{'alpha_post': 1.0}}}}")
        normalised: dict[int, Mapping[str, float]] = {}
        for idx, over in self.layer_factors.items():
            # keys arrive as str from JSON/YAML: normalise, so lookups never miss silently
            try:
                i = int(idx)
            except (TypeError, ValueError):
                raise StllrError(f"{w}: layer_factors key {idx!r} is not a layer index (0, 1, ...)") from None
            if i < 0 or i in normalised:
                raise StllrError(f"{w}: layer_factors key {idx!r} is negative or given twice")
            if not isinstance(over, Mapping):
                raise StllrError(f"{w}: layer_factors[{i}] must map factor names to numbers")
            bad = set(over) - set(_FACTOR_KEYS)
            if bad:
                raise StllrError(f"{w}: layer_factors[{i}] has unknown keys {sorted(bad)}: use {', '.join(_FACTOR_KEYS)}")
            for k, v in over.items():
                real(w, f"layer_factors[{i}].{k}", v, *((0.0, 1.0) if k.startswith("lambda") else ()))
            normalised[i] = MappingProxyType({k: float(v) for k, v in over.items()})
        # immutable once checked: a later change could not be validated
        object.__setattr__(self, "layer_factors", FrozenMapping(normalised))

    def factors(self, num_layers: int) -> list[LayerFactors]:
        """The factors of each hidden layer, network defaults with per-layer overrides."""
        for idx in self.layer_factors:
            if not 0 <= idx < num_layers:
                raise StllrError(f"S-TLLR: layer_factors names layer {idx}, but the network has {num_layers} hidden layers")
        out = []
        for i in range(num_layers):
            d = {k: getattr(self, k) for k in _FACTOR_KEYS}
            d.update(self.layer_factors.get(i, {}))
            out.append(LayerFactors(**d))
        return out

    def chunk_size(self, T: int) -> int:
        """The steps run together, ``c``, for a sequence of ``T`` steps (``c >= T``: one chunk).

        Window mode: ``T``; streaming: 1; chunked: ``chunk_steps`` where given, else the
        automatic default: chunks of at most ``c_max = max(1, T // 16)`` steps, and the
        learning window ``L = min(learn_steps, T)`` split into equal ones,
        ``c = ceil(L / ceil(L / c_max))`` (as many chunks as ``c_max`` needs, as short as
        that count allows). E.g. T = 100: learn_steps 90 → 6, 10 → 5; T = 40: 2; T <= 31: 1.

        Why: a chunk holds its window steps' records until it learns, ``c + 1`` steps'
        worth with the carried state, against BPTT's ``T`` steps of saved activations. A
        step's records (traces of the input and of every layer, ψ, the readout's) measured
        1.5–3.5x BPTT's per step on the study networks (SHD net: 2970 values per sample
        against ~905; more where the input is much wider than the layers), so
        ``c ≈ T/16`` keeps the measured learning memory near or under 1/4 of BPTT's
        (SHD net, T = 100, learn_steps 90: 0.23; window mode: 3.0). The carried state is
        the floor: with a wide input, a narrow layer and a short T it alone reaches
        BPTT's figure (2312 inputs, 128 neurons, T = 10: equal). On the CPU the chunks
        cost little time: chunks of ``c·B`` rows still run as GEMMs and their working
        set stays in cache (SHD net, batch 128: about window mode's step time;
        ``stllr bench engine`` measures both ratios in one run). Short sequences
        (T <= 31) stream step by step, up to ~2x window mode's time on small networks,
        which is what keeps their memory under BPTT's.
        """
        if self.mode == "window":
            return T
        if self.mode == "streaming":
            return 1
        if self.chunk_steps is not None:
            return self.chunk_steps
        c_max = max(1, T // 16)
        window = max(1, min(self.learn_steps, T))
        return -(-window // -(-window // c_max))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["layer_factors"] = {str(k): dict(v) for k, v in self.layer_factors.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "STLLRConfig":
        d = known_fields("S-TLLR", cls, d)
        return cls(**d)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle / deepcopy through plain data (the frozen mappings are rebuilt and re-checked)
        return (_stllr_config_from_dict, (self.to_dict(),))


def _stllr_config_from_dict(d: dict[str, Any]) -> STLLRConfig:
    return STLLRConfig.from_dict(d)


STLLR_PRESETS: dict[str, STLLRConfig] = {
    # The official code's per-task factors [λ_post, λ_pre, α_post, α_pre] and windows.
    "dvs_gesture": STLLRConfig(learn_steps=5, lambda_post=0.2, lambda_pre=0.75, alpha_post=-1.0, alpha_pre=1.0),
    "cifar10_dvs": STLLRConfig(learn_steps=5, lambda_post=0.2, lambda_pre=0.5, alpha_post=-1.0, alpha_pre=1.0),
    "shd": STLLRConfig(learn_steps=90, lambda_post=0.5, lambda_pre=1.0, alpha_post=1.0, alpha_pre=1.0),
    # For the network presets of the same name, as the authors' code trains them: SHD's readout
    # weight learns from a trace with λ = 0.99 (their factors [0, 0.99, 0, 1] on the readout),
    # the VGG's plain linear readout from its input (λ = 0); both biases from the error alone.
    "shd_rsnn_official": STLLRConfig(learn_steps=90, lambda_post=0.5, lambda_pre=1.0, alpha_post=1.0,
                                     alpha_pre=1.0, readout_lambda=0.99, readout_bias="error"),
    "vgg9_official": STLLRConfig(learn_steps=5, lambda_post=0.2, lambda_pre=0.75, alpha_post=-1.0,
                                 alpha_pre=1.0, readout_lambda=0.0, readout_bias="error"),
}


class LayerUpdate(NamedTuple):
    """One hidden layer's S-TLLR update, accumulated over the window.

    ``weight`` and ``rec_weight`` are updates of the weights the synapses use (the
    standardised ones where enabled); :func:`apply_gradients` carries them back to the
    parameters (and the gains) through the standardisation.
    """

    weight: Tensor
    bias: Tensor | None
    rec_weight: Tensor | None


class Updates(NamedTuple):
    """The whole network's S-TLLR update: readout, then one :class:`LayerUpdate` per hidden layer."""

    readout_weight: Tensor
    readout_bias: Tensor
    layers: tuple[LayerUpdate, ...]

    @staticmethod
    def zeros(net: Network, weights: list[SynapseWeights]) -> "Updates":
        def zeros_like(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.zeros_like(t)

        layers = tuple(LayerUpdate(torch.zeros_like(sw.w), zeros_like(layer.bias), zeros_like(sw.w_rec))
                       for layer, sw in zip(net.hidden_layers, weights))
        return Updates(torch.zeros_like(net.readout.weight), torch.zeros_like(net.readout.bias), layers)

    def tensors(self) -> list[Tensor]:
        return [self.readout_weight, self.readout_bias, *(t for u in self.layers for t in u if t is not None)]


def _learn(
    net: Network,
    weights: list[SynapseWeights],
    records: list[LayerRecord],
    ro_rec: ReadoutRecord,
    labels: Tensor,
    factors: list[LayerFactors],
    cfg: STLLRConfig,
    updates: Updates,
    seq_error: Tensor | None = None,
    step_loss: StepLoss | None = None,
) -> Tensor:
    """Accumulate the S-TLLR update of a window (or one step) into ``updates``; return Σ_t L[t].

    ``labels``: the window's targets ``[n, B, ...]``; ``step_loss``: ``L[t]`` (default
    cross-entropy). ``seq_error`` (``[B, C]``): the output error of every step is this one
    (``loss="sum_output"``); the returned per-step loss is then that of the window's outputs,
    for the record only."""
    n, batch, classes = ro_rec.o.shape
    rows = n * batch
    loss, err3 = (step_loss or CrossEntropy()).error(ro_rec.o, labels)
    if seq_error is not None:
        err3 = seq_error.expand(n, batch, classes).contiguous()
    err = err3.reshape(rows, classes)
    ro = net.readout
    updates.readout_weight.add_(ro.weight_grad(err, ro_rec.tr.reshape(rows, -1)))
    if cfg.readout_bias == "trace":  # ∂o[t]/∂b = Σ_s λ^s: the bias trace
        updates.readout_bias.add_(ro.bias_grad((err3 * ro_rec.c[:, None, None]).reshape(rows, classes)))
    else:  # the official code: the output error alone
        updates.readout_bias.add_(ro.bias_grad(err))
    layers = net.hidden_layers
    delta = None
    skipped: dict[int, Tensor] = {}  # δ that layers above send to layer i through their skip input
    if cfg.learning_signal == "bp":
        delta = ro.pre.adjoint(ro.input_grad(err, ro.weight), ro.in_shape, _flat(ro_rec.x_raw))
    for i in reversed(range(len(layers))):
        layer, rec, f, sw, upd = layers[i], records[i], factors[i], weights[i], updates.layers[i]
        if cfg.learning_signal == "dfa":
            delta = err @ net.feedback_matrix(i)
        d = delta.reshape(rows, *layer.out_shape)  # type: ignore[union-attr]
        if i in skipped:
            d = d + skipped.pop(i).reshape(rows, *layer.out_shape)
        g = d * rec.psi.reshape(rows, *layer.out_shape)  # δ ⊙ ψ
        h = d * rec.tr_post_prev.reshape(rows, *layer.out_shape) if f.alpha_post != 0 else None  # type: ignore[union-attr]
        if f.alpha_pre != 0:
            upd.weight.add_(layer.weight_grad(g, rec.tr_pre.reshape(rows, *layer.x_shape)), alpha=f.alpha_pre)  # type: ignore[union-attr]
        if h is not None:
            upd.weight.add_(layer.weight_grad(h, rec.x.reshape(rows, *layer.x_shape)), alpha=f.alpha_post)  # type: ignore[union-attr]
        if upd.bias is not None:
            upd.bias.add_(layer.bias_grad(g))
        if upd.rec_weight is not None:
            if f.alpha_pre != 0:
                upd.rec_weight.add_(layer.weight_grad(g, rec.tr_rec.reshape(rows, -1)), alpha=f.alpha_pre)  # type: ignore[union-attr]
            if h is not None:
                upd.rec_weight.add_(layer.weight_grad(h, rec.y_prev.reshape(rows, -1)), alpha=f.alpha_post)  # type: ignore[union-attr]
        if cfg.learning_signal == "bp" and i > 0:
            gx, g_skip = layer.split_input_grad(layer.input_grad(g, sw.w))
            if g_skip is not None:
                j = layer.skip
                skipped[j] = g_skip if j not in skipped else skipped[j] + g_skip  # type: ignore[index]
            delta = layer.pre.adjoint(gx, layer.in_shape, _flat(rec.x_raw))
    return loss


def _flat(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _add_grad(p: Tensor, g: Tensor) -> None:
    p.grad = g if p.grad is None else p.grad + g


def apply_gradients(net: Network, w_graph: list[SynapseWeights], updates: Updates) -> None:
    """Add the updates to ``.grad``; standardised weights pass back through the
    standardisation (autograd, the chain rule), which also gives the gains their update."""
    _add_grad(net.readout.weight, updates.readout_weight)
    _add_grad(net.readout.bias, updates.readout_bias)
    outputs: list[Tensor] = []
    incoming: list[Tensor] = []
    for layer, sw, upd in zip(net.hidden_layers, w_graph, updates.layers):
        if layer.bias is not None and upd.bias is not None:
            _add_grad(layer.bias, upd.bias)
        for used, param, g in ((sw.w, layer.weight, upd.weight), (sw.w_rec, layer.rec_weight, upd.rec_weight)):
            if param is None or used is None or g is None:
                continue
            if used is param:
                _add_grad(param, g)
            else:
                outputs.append(used)
                incoming.append(g)
    if outputs:
        torch.autograd.backward(outputs, incoming)


def _effective_weights(net: Network, probe: Probe) -> tuple[list[SynapseWeights], list[SynapseWeights]]:
    """The synapses' weights with their graph to the parameters, and detached."""
    with torch.enable_grad():
        w_graph = [layer.effective_weights() for layer in net.hidden_layers]
    weights = [SynapseWeights(sw.w.detach(), None if sw.w_rec is None else sw.w_rec.detach()) for sw in w_graph]
    probe.exclude([t for sw in weights for t in sw if t is not None])  # derived from the parameters
    return w_graph, weights


def _split(a: int, b: int, c: int) -> list[tuple[int, int]]:
    """``[a, b)`` in consecutive chunks of ``c`` steps (the last one shorter)."""
    return [(s, min(s + c, b)) for s in range(a, b, c)]


def _chunks(cfg: STLLRConfig, T: int, t_win: int, whole_window: bool = False) -> list[tuple[int, int]]:
    """Steps ``[a, b)`` run together, in chunks of ``c = cfg.chunk_size(T)``.

    ``c >= T`` (window mode) hoists the whole sequence as one chunk. Otherwise the steps
    before the window and the window's are each split into chunks of ``c``, so that a
    chunk never straddles the window's start (its records are all window steps). Online,
    the window runs one step at a time, since the weights change at every step.
    ``whole_window`` (``loss="sum_output"``): the window is one chunk, learned at the end.

    >>> cfg = STLLRConfig(learn_steps=4, chunk_steps=3)
    >>> _chunks(cfg, 10, 6), _chunks(cfg, 10, 6, whole_window=True)
    ([(0, 3), (3, 6), (6, 9), (9, 10)], [(0, 3), (3, 6), (6, 10)])
    """
    c = cfg.chunk_size(T)
    if cfg.online:
        return _split(0, t_win, c) + _split(t_win, T, 1)
    if c >= T:
        return [(0, T)]
    if whole_window:
        return _split(0, t_win, c) + [(t_win, T)]
    return _split(0, t_win, c) + _split(t_win, T, c)


def stllr_step(
    net: Network,
    x: Tensor,
    labels: Tensor,
    cfg: STLLRConfig,
    probe: Probe | None = None,
    state: NetState | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss: str = "per_step",
    step_loss: StepLoss | str | None = None,
) -> tuple[StepStats, NetState]:
    """One S-TLLR training step on a batch: writes the update into ``.grad``.

    With ``cfg.online`` the step also applies it: ``optimizer.zero_grad()``, the update
    of one window step, ``optimizer.step()``, at every window step (the caller does not
    step the optimiser; ``.grad`` then holds the last window step's update).

    Args:
        net: the network.
        x: input ``[T, B, *input_shape]`` (time-major).
        labels: ``[B]`` class labels, or ``[T, B]`` per-step targets.
        cfg: rule settings.
        probe: optional instrumentation (costs); see :mod:`stllr_engine.costs`.
        state: start from this state instead of zeros (continue a sequence); the window
            is the last ``learn_steps`` steps of ``x``.
        optimizer: required with ``cfg.online`` (a ``torch.optim`` optimiser over the
            network's parameters).
        loss: the objective whose output error drives learning: ``"per_step"`` (the
            rule's own, ``L[t] = CE(o[t], label)``) or ``"sum_output"``
            (``CE(Σ_t o[t], label)``, per-step labels: the last step's; module docstring).
        step_loss: ``L[t] = ℓ(o[t], target[t])`` (:mod:`stllr_engine.losses`): ``"ce"`` (the
            default: ``labels`` are classes) or ``"mse"`` (``labels`` are regression targets
            ``[B, C]`` or ``[T, B, C]``), or any :class:`~stllr_engine.losses.StepLoss`.

    Returns:
        ``(stats, final_state)``; ``stats.objective`` is the mean of ``L[t]`` over the
        window (``"per_step"``) or ``ℓ(Σ_t o[t], target)`` (``"sum_output"``); ``stats.loss`` is
        ``ℓ(Σ_t o[t], target)`` (with the default ``ℓ``: ``CE(Σ_t o[t], label)``).
    """
    probe = probe or NoProbe()
    if loss not in STLLR_LOSSES:
        raise StllrError(f"S-TLLR: loss={loss!r} is not an objective S-TLLR learns: use one of {', '.join(STLLR_LOSSES)}")
    seq = loss == "sum_output"
    if cfg.online and optimizer is None:
        raise StllrError("S-TLLR: online=True steps the optimiser at every window step: pass optimizer= to stllr_step")
    if cfg.online and seq:
        raise StllrError("S-TLLR: online=True updates at every window step, but loss='sum_output' knows its output "
                         "error only at the sequence's end: use loss='per_step' or online=False")
    x = x.contiguous()
    T, batch = x.shape[0], x.shape[1]
    layers = net.hidden_layers
    factors = cfg.factors(len(layers))
    if cfg.learn_steps > T:
        raise StllrError(f"S-TLLR: learn_steps={cfg.learn_steps} exceeds the T={T} steps of the batch: "
                         "use learn_steps <= T")
    n_learn = cfg.learn_steps
    readout_lambda = cfg.readout_lambda if cfg.readout_lambda is not None else net.readout.gamma_o
    t_win = T - n_learn
    w_graph, weights = _effective_weights(net, probe)
    updates = Updates.zeros(net, weights)
    if state is None:
        state = initial_state(net, batch, factors, readout_lambda, device=x.device, dtype=x.dtype)
    o_sum = torch.zeros(batch, net.readout.num_classes, device=x.device, dtype=x.dtype)
    per_step_sum = torch.zeros((), device=x.device, dtype=x.dtype)
    probe.observe(state.tensors())
    sl = get_step_loss(step_loss)
    final_labels = sl.final(labels)
    seq_error = None
    for a, b in _chunks(cfg, T, t_win, whole_window=seq):
        n_window = max(0, b - max(a, t_win))  # window steps in this chunk (its last ones)
        with probe.phase("forward"):
            o, records, ro_rec, state = run_chunk(net, x[a:b], state, weights, n_window, factors, readout_lambda,
                                                  record_pool_inputs=cfg.learning_signal == "bp")
            o_sum += o.sum(0)
        held = state.tensors()
        if b - a > 1 and n_window:  # a multi-step chunk keeps its window records until learning
            held += [t for r in records for t in r if isinstance(t, Tensor)]
            held += [t for t in ro_rec if isinstance(t, Tensor)]  # type: ignore[union-attr]
        probe.observe(held)
        if n_window:
            with probe.phase("learning"), torch.no_grad():
                if seq:  # the window ends the sequence: Σ_t o[t] is complete (whole_window)
                    seq_error = sl.error(o_sum[None], final_labels[None])[1][0]
                per_step_sum += _learn(net, weights, records, ro_rec, sl.window(labels, T, b - n_window, b),  # type: ignore[arg-type]
                               factors, cfg, updates, seq_error, sl)
        del records, ro_rec
        if n_window and cfg.online:
            # the official stllr_online: one optimiser step per window step; the next
            # step's forward sees the new (re-standardised) weights
            assert optimizer is not None
            with probe.phase("learning"):
                optimizer.zero_grad()
                apply_gradients(net, w_graph, updates)
                optimizer.step()
            for t in updates.tensors():
                t.zero_()
            w_graph, weights = _effective_weights(net, probe)
    if not cfg.online:
        with probe.phase("learning"):
            apply_gradients(net, w_graph, updates)
    correct = sl.correct(o_sum, labels)
    ce = sl.values(o_sum[None], final_labels[None])[0]
    return StepStats(ce, correct, batch, ce if seq else per_step_sum / n_learn), state
