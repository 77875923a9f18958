r"""What learning costs: the paper's formulas (DESIGN §4) and exact measurements.

Every figure is named ``{quantity}_{formula|measured}_{per_sample|per_batch}``.
Formulas, learning phase only, per sample (``N`` = spiking neurons per step, readout
excluded; ``S`` = synaptic MACs per step, readout included)::

    learning_memory_values  BPTT: T · N          S-TLLR: 2 · N (two traces)
    learning_macs           BPTT: 2T · S         S-TLLR: 3 · learn_steps · S_hidden (2· when α_post = 0)
                                                         + 2 · learn_steps · S_readout
    forward_macs            T · S (common to both rules)

Measurements (:class:`CostProbe`), all exact and independent of machine load:

* ``learning_memory_bytes_measured_per_batch``: the peak, over a training step, of the
  bytes retained across time steps for learning: tensors autograd saved for backward
  (unique storages, parameters and the input batch excluded; via
  ``torch.autograd.graph.saved_tensors_hooks``) plus the carried state and traces, plus the
  records of a chunk's window steps while they wait for its learning phase (window mode:
  the whole window's; streaming: none, a step's records are temporaries). Per-step
  temporaries are not counted (for either rule).
* ``*_macs_measured_per_sample``: FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode`` in the forward and learning phases,
  halved (GEMM/conv MACs; elementwise work is not counted).
* ``peak_step_bytes_measured_per_batch``: the peak of every tensor storage allocated
  during the step and still alive (:class:`AllocationTracker`, which intercepts every
  op): forward buffers, records, state, ``.grad`` buffers and temporaries, whatever the
  step reports about itself. Parameters and the input batch are not counted.
* ``cuda_peak_bytes_measured_per_batch``: ``torch.cuda.max_memory_allocated`` over the
  step above what was allocated before it (GPU only, None on CPU).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from stllr_engine._checks import integer
from stllr_engine.errors import StllrError
from stllr_engine.network import Network
from stllr_engine.step_types import StepStats
from stllr_engine.stllr import STLLRConfig

__all__ = ["formula_costs", "AllocationTracker", "CostProbe", "measure_costs"]


FORMULA_COUNTING = (
    "formula (DESIGN §4): S-TLLR MACs 3·learn_steps·S_l per hidden layer (2· if α_post=0) + "
    "2·learn_steps·S_readout, memory 2·N trace values (2·N·learn_steps with loss sum_output); BPTT 2T·S MACs, T·N values; N excludes the readout"
)
MEASURED_COUNTING = (
    "measured: MACs = GEMM/conv FLOPs/2; learning memory = saved for backward + state, traces and the window "
    "records a chunk holds until it learns (forward buffers not in it); peak_step = every tensor alive in the "
    "step (forward buffers in); parameters and the input batch excluded"
)


def formula_costs(net: Network, rule: str, T: int, stllr: STLLRConfig | None = None,
                  bytes_per_value: int = 4, loss: str = "per_step") -> dict[str, Any]:
    """Per-sample cost formulas of DESIGN §4.

    Counting: every hidden layer's ``S_l`` (its recurrent weights included) counts three
    times per window step, one error path and two weight-update terms (two when its
    ``α_post = 0``), as the paper counts it, even where the code computes less: S-TLLR's
    learning signal lives within one step, so no error travels through the recurrent
    weights (their share counts the two update terms plus an error path the code does
    not run), the first layer passes no error to the input, and with DFA the error
    reaches a layer through its ``C × N_l`` feedback matrix rather than through the
    layers above; the formula counts DFA like ``"bp"``. The readout counts
    ``2 · learn_steps · S_readout``: its update ``δ_o ⊗ tr`` and the error path
    ``δ_o W_o``; it has no non-causal term. Measured MACs
    (:func:`measure_costs`) count what the code does.

    Args:
        net: the network.
        rule: ``"stllr"`` or ``"bptt"``.
        T: time steps.
        stllr: S-TLLR settings, required for ``"stllr"`` (``learn_steps``; ``α_post``
            per layer picks 3 or 2).
        bytes_per_value: for the ``_bytes`` figure (4 = fp32).
        loss: S-TLLR's objective; with ``"sum_output"`` the output error is known only at
            the sequence's end, so the ``2·N`` trace values of every window step are held:
            ``2·N·learn_steps``.

    Returns:
        ``forward_macs_formula_per_sample``, ``learning_macs_formula_per_sample``,
        ``learning_memory_values_formula_per_sample``,
        ``learning_memory_bytes_formula_per_sample``, plus ``T``, ``learn_steps``
        (``T`` for BPTT), ``bytes_per_value`` and ``counting`` (the convention, in words).

    Raises:
        StllrError: an unknown rule, no ``stllr`` settings for ``"stllr"``, or
            ``learn_steps > T``.

    >>> from stllr_engine.network import build_network, preset
    >>> formula_costs(build_network(preset("shd_rsnn")), "bptt", 100)["learning_macs_formula_per_sample"]
    105300000
    """
    integer("costs", "T", T, 1)
    integer("costs", "bytes_per_value", bytes_per_value, 1)
    S = net.synaptic_macs()
    N = net.num_neurons()
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
        factors = stllr.factors(len(net.hidden_layers))
        macs = sum((3 if f.alpha_post != 0 else 2) * learn_steps * layer.synaptic_macs()
                   for f, layer in zip(factors, net.hidden_layers))
        macs += 2 * learn_steps * net.readout.synaptic_macs()
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


class AllocationTracker(TorchDispatchMode):
    """Every tensor storage allocated while active, alive or not: the step's true footprint.

    An independent oracle for memory: it trusts nothing a step reports about itself.
    Every ATen op is intercepted; each output whose storage is not one of the op's
    inputs (a view, an in-place or ``out=`` result) is a new allocation, counted until
    its storage is freed (a ``weakref.finalize`` on the storage). Tensors that existed
    before (parameters, the input batch) are never outputs, so they are not counted;
    the step's own ``.grad`` buffers, standardised weights, forward buffers, records,
    state and temporaries are. Allocations internal to a kernel (workspaces) are not
    visible.

    >>> with AllocationTracker() as tracker:
    ...     a = torch.zeros(100)           # 400 B
    ...     b = a.view(10, 10).add_(1.0)   # a view and an in-place op: no new storage
    ...     c = torch.ones(50)             # +200 B
    ...     del a, b
    ...     d = torch.ones(10)             # the 400 B are free again
    >>> tracker.peak_bytes, tracker.live_bytes
    (600, 240)
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        fresh = func in _LIFT_OPS  # torch.tensor(data): the op returns its (new) input
        inputs = set() if fresh else {_storage_key(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key, 0)


_LIFT_OPS = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Saved:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t: Tensor):
        self.t = t


class CostProbe:
    """Measures learning memory and per-phase FLOPs of one training step.

    Pass it as ``probe=`` to :func:`stllr_engine.stllr.stllr_step` or
    :func:`stllr_engine.bptt.bptt_step`.

    Args:
        exclude: tensors whose storages are not counted (parameters, the input batch).
        count_flops: also count FLOPs per phase (slower; off for timing runs).
    """

    def __init__(self, exclude: list[Tensor] = (), count_flops: bool = True):  # type: ignore[assignment]
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.count_flops = count_flops
        self.flops: dict[str, int] = {}
        self._live: dict[int, list[int]] = {}
        self.saved_bytes = 0
        self.state_bytes = 0
        self.peak_bytes = 0
        self.peak_saved_bytes = 0

    # -- saved tensors -------------------------------------------------------------
    def _pack(self, t: Tensor) -> Any:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        key = storage.data_ptr()
        if key in self._excluded or storage.nbytes() == 0:
            return t
        handle = _Saved(t)
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [1, storage.nbytes()]
            self.saved_bytes += storage.nbytes()
            self._update_peak()
        else:
            entry[0] += 1
        weakref.finalize(handle, self._release, key)
        return handle

    @staticmethod
    def _unpack(h: Any) -> Tensor:
        return h.t if isinstance(h, _Saved) else h

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.saved_bytes -= entry[1]
            del self._live[key]

    def _update_peak(self) -> None:
        total = self.saved_bytes + self.state_bytes
        self.peak_bytes = max(self.peak_bytes, total)
        self.peak_saved_bytes = max(self.peak_saved_bytes, self.saved_bytes)

    # -- Probe protocol --------------------------------------------------------------
    def exclude(self, tensors: list[Tensor]) -> None:
        """Never count these tensors' storages (e.g. standardised weights)."""
        self._excluded.update(t.untyped_storage().data_ptr() for t in tensors)

    def observe(self, tensors: list[Tensor]) -> None:
        """Count ``tensors`` (unique storages) as the state/traces/records held right now."""
        seen: dict[int, int] = {}
        for t in tensors:
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in self._excluded:
                seen[key] = st.nbytes()
        self.state_bytes = sum(seen.values())
        self._update_peak()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
            counter = stack.enter_context(FlopCounterMode(display=False)) if self.count_flops else None
            yield
        if counter is not None:
            self.flops[name] = self.flops.get(name, 0) + int(counter.get_total_flops())


def measure_costs(net: Network, step: Callable[..., StepStats], x: Tensor, labels: Tensor,
                  rule: str, stllr: STLLRConfig | None = None, loss: str = "per_step") -> dict[str, Any]:
    """Run one instrumented training step and return formula and measured costs.

    ``step(net, x, labels, probe=...)`` is a rule's step function (time-major ``x``).
    Parameter gradients are restored afterwards.

    Returns:
        the per-sample formulas of :func:`formula_costs` plus
        ``forward_macs_measured_per_sample``, ``learning_macs_measured_per_sample``,
        ``learning_memory_bytes_measured_per_batch`` (and ``_per_sample``),
        ``peak_step_bytes_measured_per_batch``, ``cuda_peak_bytes_measured_per_batch``
        (None on CPU), ``T``, ``batch``, ``learn_steps`` (effective; ``T`` for BPTT),
        ``bytes_per_value`` and ``counting``.
    """
    x = x.contiguous()  # the step sees this storage: exclude it, not a transposed original
    T, batch = x.shape[0], x.shape[1]
    out: dict[str, Any] = formula_costs(net, rule, T, stllr, x.element_size(), loss)
    saved_grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    probe = CostProbe(exclude=[*net.parameters(), *net.buffers(), x])
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
    from stllr_engine import fused

    with AllocationTracker() as tracker, fused.use("off"):  # the eager step: what the formulas describe
        step(net, x, labels, probe=probe)
    out["forward_macs_measured_per_sample"] = probe.flops.get("forward", 0) // 2 // batch
    out["learning_macs_measured_per_sample"] = probe.flops.get("learning", 0) // 2 // batch
    out["learning_memory_bytes_measured_per_batch"] = probe.peak_bytes
    out["learning_memory_bytes_measured_per_sample"] = probe.peak_bytes / batch
    out["peak_step_bytes_measured_per_batch"] = tracker.peak_bytes
    out["cuda_peak_bytes_measured_per_batch"] = (torch.cuda.max_memory_allocated(x.device) - base) if cuda else None
    out["batch"] = batch
    out["counting"] = f"{out['counting']}; {MEASURED_COUNTING}"
    for p, g in zip(net.parameters(), saved_grads):
        p.grad = g
    return out
