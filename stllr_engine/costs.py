r"""What learning costs: the paper's formulas (DESIGN §4) and exact measurements.

Formulas, learning phase only, per sample (``N`` = spiking neurons per step, readout
excluded; ``S`` = synaptic MACs per step, readout included)::

    mem_BPTT  = T · N values          mem_STLLR = 2 · N values (two traces)
    MAC_BPTT  = 2T · S                MAC_STLLR = 3 · learn_steps · S  (2· when α_post = 0)
    forward   = T · S                 (common to both rules)

Measurements (:class:`CostProbe`), all exact and independent of machine load:

* ``learning_memory_bytes``: the peak, over a training step, of the bytes retained
  across time steps for learning: tensors autograd saved for backward (unique storages,
  parameters and the input batch excluded; via ``torch.autograd.graph.saved_tensors_hooks``)
  plus the carried state and traces, plus a window's records while they wait for the
  learning phase. Per-step temporaries are not counted (for either rule).
* ``*_macs_measured``: FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
  in the forward and learning phases, halved (GEMM/conv MACs; elementwise work is not
  counted).
* ``cuda_peak_bytes``: ``torch.cuda.max_memory_allocated`` over the step (GPU only).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from stllr_engine.network import Network
from stllr_engine.stllr import STLLRConfig, StepStats

__all__ = ["formula_costs", "CostProbe", "measure_costs"]


def formula_costs(net: Network, rule: str, T: int, stllr: STLLRConfig | None = None,
                  bytes_per_value: int = 4) -> dict[str, int]:
    """Per-sample cost formulas of DESIGN §4.

    Args:
        net: the network.
        rule: ``"stllr"`` or ``"bptt"``.
        T: time steps.
        stllr: S-TLLR settings (``learn_steps``; ``α_post`` per layer picks 3 or 2 MACs).
        bytes_per_value: for the ``_bytes`` figure (4 = fp32).

    Returns:
        ``forward_macs``, ``learning_macs``, ``learning_memory_values`` and
        ``learning_memory_bytes_formula_per_sample`` (all per sample).

    >>> from stllr_engine.network import build_network, preset
    >>> formula_costs(build_network(preset("shd_rsnn")), "bptt", 100)["learning_macs"]
    105300000
    """
    S = net.synaptic_macs()
    N = net.num_neurons()
    out = {"forward_macs": T * S}
    if rule == "bptt":
        out["learning_macs"] = 2 * T * S
        out["learning_memory_values"] = T * N
    elif rule == "stllr":
        cfg = stllr or STLLRConfig()
        ls = min(cfg.learn_steps, T)
        factors = cfg.factors(len(net.hidden_layers))
        macs = sum((3 if f.alpha_post != 0 else 2) * ls * layer.synaptic_macs()
                   for f, layer in zip(factors, net.hidden_layers))
        macs += (3 if cfg.alpha_post != 0 else 2) * ls * net.readout.synaptic_macs()
        out["learning_macs"] = macs
        out["learning_memory_values"] = 2 * N
    else:
        raise ValueError(f"unknown rule {rule!r}")
    out["learning_memory_bytes_formula_per_sample"] = out["learning_memory_values"] * bytes_per_value
    return out


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
                  rule: str, stllr: STLLRConfig | None = None) -> dict[str, Any]:
    """Run one instrumented training step and return formula and measured costs.

    ``step(net, x, labels, probe=...)`` is a rule's step function (time-major ``x``).
    Parameter gradients are restored afterwards.

    Returns:
        per-sample formulas (see :func:`formula_costs`) plus ``forward_macs_measured``,
        ``learning_macs_measured`` (per sample), ``learning_memory_bytes`` (the whole
        batch, measured) and ``cuda_peak_bytes`` (None on CPU).
    """
    x = x.contiguous()  # the step sees this storage: exclude it, not a transposed original
    T, batch = x.shape[0], x.shape[1]
    saved_grads = [None if p.grad is None else p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    probe = CostProbe(exclude=[*net.parameters(), *net.buffers(), x])
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
    step(net, x, labels, probe=probe)
    out: dict[str, Any] = dict(formula_costs(net, rule, T, stllr, x.element_size()))
    out["forward_macs_measured"] = probe.flops.get("forward", 0) // 2 // batch
    out["learning_macs_measured"] = probe.flops.get("learning", 0) // 2 // batch
    out["learning_memory_bytes"] = probe.peak_bytes
    out["learning_memory_bytes_per_sample"] = probe.peak_bytes / batch
    out["cuda_peak_bytes"] = (torch.cuda.max_memory_allocated(x.device) - base) if cuda else None
    out["batch"] = batch
    out["T"] = T
    for p, g in zip(net.parameters(), saved_grads):
        p.grad = g
    return out
