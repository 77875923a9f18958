"""Fused time steps (DESIGN §9): the per-step elementwise work of the LIF scans in one pass.

An eager time step of a layer is ~8–12 small tensor operations (membrane, threshold, spike,
reset, the surrogate Ψ(v), the post-synaptic trace and its record; backward through time
another ~7), each a pass over memory and a dispatch. On the small networks sweeps spend
their time on, that overhead, not the GEMMs, sets the step time. Here one hand-written C++
kernel (``_fused.cpp``) does each step in one pass, for one network or a pack of ``K``
members (per-member λ_post), float32 and float64, the same arithmetic as the eager step.

* The switch: :func:`use` (a context manager; ``TrainConfig.fused`` sets it for a run) with
  ``"auto"`` (fused where the kernel is built and the tensors are on the CPU), ``"on"``
  (the same, but an unbuildable kernel is an error) or ``"off"`` (today's eager step).
* The kernel is compiled on first use with the machine's C++ compiler and cached
  (:func:`build_directory`: ``$STLLR_FUSED_DIR`` or under ``$TORCH_EXTENSIONS_DIR``): the
  first process on a machine pays the build (~50 s on 2 cores), later ones load it.
  :func:`compile_seconds` reports what this process spent; runs record it as
  ``fused_compile_s``. Without a compiler ``"auto"`` warns once and stays eager.
* CUDA tensors always take the eager step (no GPU kernel yet).
* Measured costs (:func:`stllr_engine.costs.measure_costs`) always come from the eager step,
  the one the formulas describe: a fused run measures what an eager one does.

The eager step stays the reference: ``tests/engine/test_fused.py`` compares every fused scan
with it (S-TLLR window and records, BPTT forward and backward, recurrent and not, packs).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from typing import Any, Iterator

import torch
from torch import Tensor

from stllr_engine.errors import StllrError

__all__ = ["MODES", "use", "mode", "active", "available", "build_directory", "compile_seconds", "lif_step", "lif_backward_step",
           "SURROGATE_IDS"]

MODES = ("auto", "on", "off")
SURROGATE_IDS = {"inverse_square": 0, "triangle": 1, "sigmoid": 2, "arctan": 3}

_mode = "auto"  # what a direct call of a step gets; a run sets TrainConfig.fused
_lock = threading.Lock()
_ext: Any = None
_error: str | None = None
_compile_s = 0.0
_warned = False


@contextlib.contextmanager
def use(setting: str | bool) -> Iterator[None]:
    """Fused steps within the block: ``"auto"``, ``"on"`` or ``"off"`` (``True``/``False`` for on/off)."""
    global _mode
    setting = {True: "on", False: "off"}.get(setting, setting)  # type: ignore[arg-type]
    if setting not in MODES:
        raise StllrError(f"fused must be one of {', '.join(MODES)}, not {setting!r}")
    if setting == "on" and not available():
        raise StllrError(f"fused: on, but the fused kernel cannot be built: {_error} (set fused: off or auto)")
    old, _mode = _mode, setting
    try:
        yield
    finally:
        _mode = old


def mode() -> str:
    return _mode


def _flags() -> list[str]:
    flags = ["-O3", "-ffp-contract=off"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # the vector width torch's kernels use here
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def build_directory() -> str:
    """Where the kernel is built and cached: ``$STLLR_FUSED_DIR``, else a folder under
    ``$TORCH_EXTENSIONS_DIR`` (``~/.cache/torch_extensions``) named by the torch version, CPU
    capability and a hash of the source, its path, the Python environment and the flags, so
    that two checkouts or environments sharing a home folder never rebuild each other's kernel
    (nor overwrite a library another process has loaded)."""
    if os.environ.get("STLLR_FUSED_DIR"):
        return os.environ["STLLR_FUSED_DIR"]
    import hashlib
    import sys

    base = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    src = _source()
    h = hashlib.sha256()
    with open(src, "rb") as fh:
        h.update(fh.read())
    for part in (os.path.abspath(src), sys.prefix, " ".join(_flags())):
        h.update(b"\0" + part.encode())
    version = torch.__version__.replace("+", "_")
    cap = torch.backends.cpu.get_cpu_capability().lower()
    return os.path.join(base, f"stllr_fused-torch{version}-{cap}-{h.hexdigest()[:12]}")


def _source() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_fused.cpp")


def _build() -> None:
    global _ext, _error, _compile_s
    import fcntl

    from torch.utils.cpp_extension import load

    t = time.perf_counter()
    src = _source()
    try:
        cap = torch.backends.cpu.get_cpu_capability()
        flags = _flags()
        folder = build_directory()
        os.makedirs(folder, exist_ok=True)
        # One builder per machine. torch's own lock file outlives a builder that was killed
        # (and then every later load waits for ever): under our flock, which the kernel
        # releases with its holder, a lock file left there is stale.
        with open(os.path.join(folder, ".stllr-build.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                stale = os.path.join(folder, "lock")
                if os.path.exists(stale):
                    os.remove(stale)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _ext = load(name=f"stllr_fused_{cap.lower()}", sources=[src], extra_cflags=flags,
                                build_directory=folder, verbose=False)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except Exception as exc:  # no compiler, no headers, a read-only cache: stay eager
        msg = [line for line in str(exc).strip().splitlines() if line.strip()]
        _error = (msg[-1] if msg else type(exc).__name__)[:300]
    _compile_s += time.perf_counter() - t


def available() -> bool:
    """Whether the fused kernel is built (building it on the first call)."""
    if _ext is None and _error is None:
        with _lock:
            if _ext is None and _error is None:
                _build()
    return _ext is not None


def compile_seconds() -> float:
    """Seconds this process spent building or loading the fused kernel."""
    return _compile_s


def active(t: Tensor) -> bool:
    """Whether steps on ``t`` take the fused kernel now."""
    global _warned
    if _mode == "off" or t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return False
    if available():
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"fused steps unavailable, running eager steps: {_error}", RuntimeWarning, stacklevel=2)
    return False


def lif_step(u: Tensor, current: Tensor, rec: Tensor | None, v: Tensor | None, y: Tensor, psi: Tensor | None,
             tr_in: Tensor | None, tr_out: Tensor | None, tr_save: Tensor | None, lam: Tensor | float | None,
             gamma: float, theta: float, reset: str, surrogate: str, groups: int = 1,
             fma_trace: bool = True) -> None:
    """One fused LIF step, in place (see ``_fused.cpp``): ``u ← γ u + I (+ rec)``, ``v = u − θ``
    into ``v`` (``rec`` may be ``v``'s buffer), ``H(v)`` into ``y``, the reset; then, where given,
    ``Ψ(v)`` into ``psi``, ``tr_in`` into ``tr_save`` and ``Ψ(v) + λ tr_in`` into ``tr_out``
    (``lam``: one number, or ``[groups]``; ``fma_trace``: rounded as ``torch.add(Ψ, tr, alpha=λ)``,
    else as ``torch.addcmul(Ψ, tr, λ)``)."""
    per_group = lam if isinstance(lam, Tensor) else None
    _ext.lif_step(u, current, rec, v, y, psi, tr_in, tr_out, tr_save, per_group,
                  0.0 if per_group is not None or lam is None else float(lam), float(gamma), float(theta),
                  reset == "soft", SURROGATE_IDS[surrogate], groups, fma_trace)


def lif_backward_step(g_spike: Tensor, g_rec: Tensor | None, g_u: Tensor, v: Tensor, g_cur: Tensor, gamma: float,
                      theta: float, reset: str, surrogate: str, groups: int = 1) -> None:
    """One fused step back through time (:class:`stllr_engine.bptt.LIFScan`): writes ``g_I`` into
    ``g_cur`` and ``γ g_I`` into ``g_u``."""
    _ext.lif_backward_step(g_spike, g_rec, g_u, v, g_cur, float(gamma), float(theta), reset == "soft",
                           SURROGATE_IDS[surrogate], groups)
