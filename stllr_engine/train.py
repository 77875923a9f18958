"""Training API: fit / evaluate over DataLoaders of ``[B, T, ...]`` frames and integer labels.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from stllr_engine import NetworkSpec, STLLRConfig, TrainConfig, build_network, fit
>>> x = (torch.rand(32, 8, 10) < 0.3).float(); y = torch.randint(0, 2, (32,))
>>> net = build_network(NetworkSpec(kind="mlp", input_shape=(10,), num_classes=2, width=16))
>>> cfg = TrainConfig(rule="stllr", stllr=STLLRConfig(learn_steps=4), epochs=2)
>>> metrics = list(fit(net, DataLoader(TensorDataset(x, y), batch_size=8), cfg))
>>> m = metrics[-1]
>>> m["epoch"], m["learning_macs_formula_per_sample"], m["forward_macs_formula_per_sample"], m["finished"]
(2, 2176, 1536, True)

Every epoch yields a flat dict of metrics: accuracy and loss, the objective that ran
(``loss_kind``, ``loss_steps``) and its value (``train_objective``), the named costs
(``{quantity}_{formula|measured}_{per_sample|per_batch}``, e.g.
``learning_memory_bytes_measured_per_batch``) with the counting convention, ``T``,
``batch`` and ``learn_steps``, ``wall_time_s`` and ``samples_per_s``. A seed makes CPU runs
bit-for-bit repeatable. Checkpoints hold model, optimiser, scheduler, epoch, RNG states,
the full config and library versions, and load with ``torch.load(weights_only=True)``.
For a whole experiment (data, validation split, one seed) use
:func:`stllr_engine.experiment.run_experiment`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine import fused as fused_steps
from stllr_engine._checks import choice, integer, known_fields, real
from stllr_engine.bptt import LOSSES, bptt_step
from stllr_engine.costs import formula_costs, measure_costs
from stllr_engine.errors import StllrError
from stllr_engine.forward import run_inference
from stllr_engine.network import Network, NetworkSpec, build_network
from stllr_engine.stllr import STLLR_LOSSES, STLLRConfig, StepStats, stllr_step

__all__ = ["TrainConfig", "fit", "evaluate", "rule_step", "save_checkpoint", "load_checkpoint", "restore",
           "resolve_device", "resume_source"]

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        rule: ``"stllr"`` or ``"bptt"``.
        stllr: S-TLLR settings (ignored for BPTT, except ``learn_steps`` with
            ``loss="per_step"``).
        loss: the objective the rule minimises (DESIGN §8, "same objective"), with ``o[t]``
            the readout at step ``t`` and CE the batch-mean cross-entropy:

            * ``"sum_output"``: ``CE(Σ_t o[t], label)``, the paper's BPTT; S-TLLR then
              sends the sequence's output error down at every window step (known only at
              the sequence's end: the window is held until then; :mod:`stllr_engine.stllr`);
            * ``"per_step"``: the mean of ``CE(o[t], label)`` over the last
              ``stllr.learn_steps`` steps, S-TLLR's objective; BPTT takes the window from
              ``stllr.learn_steps`` (which must then be given in :meth:`from_dict`);
            * ``"per_step_all"``: the mean of ``CE(o[t], label)`` over all ``T`` steps (BPTT only);
            * ``None`` (default): the rule's own, ``"per_step"`` for S-TLLR (its temporally
              local learning signal) and ``"sum_output"`` for BPTT.

            :attr:`loss_kind` is the objective that runs; metrics report it as ``loss_kind``
            and its value as ``train_objective``, and a checkpoint resumes only with the same.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr, momentum, weight_decay: optimiser settings (momentum: SGD only).
        epochs: epochs to train; with ``patience`` the most epochs a run may take
            (``max_epochs`` in a study's budget).
        schedule: ``"cosine"`` (to 0 over ``epochs``) or ``"constant"``.
        seed: seeds torch before training (initialisation is seeded by the network spec).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        measure_costs: instrument the first batch (measured memory and FLOPs).
        patience: early stopping on validation (DESIGN §8, "trained to convergence"):
            stop after this many epochs without a better validation result, put the
            best-validation weights back and evaluate those (needs a validation loader).
            Better means a higher ``val_accuracy`` by more than ``min_delta``, or an accuracy
            at least as high with a lower ``val_loss``. ``None`` (default): train all ``epochs``.
        min_delta: the accuracy gain that counts as better (with ``patience``).
        fused: the fused time step (:mod:`stllr_engine.fused`): ``"auto"`` (default: on
            where the CPU kernel builds), ``"on"`` (an unbuildable kernel is an error) or
            ``"off"`` (the eager step). It changes speed, never a result: costs are
            measured on the eager step, and a run resumes under any setting.
        flow_loss: what a flow network (kind ``flownet``) learns from: ``"photometric"``
            (self-supervised, the paper's) or ``"supervised"`` (the known flow; for embedded
            tasks), :class:`stllr_engine.flow.FlowStepLoss`. Ignored by classifiers.
    """

    rule: str = "stllr"
    stllr: STLLRConfig = field(default_factory=STLLRConfig)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 10
    schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    measure_costs: bool = True
    loss: str | None = None  # new fields go last: positional construction keeps its meaning
    patience: int | None = None
    min_delta: float = 0.0
    fused: str = "auto"
    flow_loss: str = "photometric"

    def __post_init__(self) -> None:
        w = "training"
        choice(w, "rule", self.rule, ("stllr", "bptt"))
        choice(w, "optimizer", self.optimizer, ("adam", "sgd"))
        choice(w, "schedule", self.schedule, ("cosine", "constant"))
        real(w, "lr", self.lr, 0.0, None, low_open=True)
        real(w, "momentum", self.momentum, 0.0, 1.0)
        real(w, "weight_decay", self.weight_decay, 0.0)
        integer(w, "epochs", self.epochs, 1)
        integer(w, "seed", self.seed)
        if not isinstance(self.stllr, STLLRConfig):
            raise StllrError(f"{w}: stllr must be an STLLRConfig (or a dict of its fields in from_dict)")
        if self.loss is not None:
            choice(w, "loss", self.loss, LOSSES)
            if self.rule == "stllr" and self.loss not in STLLR_LOSSES:
                raise StllrError(f"{w}: loss={self.loss!r} with rule 'stllr': S-TLLR learns 'per_step' (the mean "
                                 "CE(o[t], label) over its last learn_steps steps; per_step_all is per_step with "
                                 "learn_steps = T) or 'sum_output': use one of those or leave loss unset")
            if self.rule == "stllr" and self.loss == "sum_output" and self.stllr.online:
                raise StllrError(f"{w}: loss='sum_output' with online S-TLLR: its output error is known only at the "
                                 "sequence's end, online updates at every window step: use loss='per_step' or "
                                 "stllr.online: false")
        if self.patience is not None:
            integer(w, "patience", self.patience, 1)
        real(w, "min_delta", self.min_delta, 0.0, 1.0)
        if isinstance(self.fused, bool):  # YAML's on/off/true/false
            object.__setattr__(self, "fused", "on" if self.fused else "off")
        choice(w, "fused", self.fused, fused_steps.MODES)
        choice(w, "flow_loss", self.flow_loss, ("photometric", "supervised"))
        if not isinstance(self.device, str) or not self.device:
            raise StllrError(f"{w}: device={self.device!r} must be a name such as 'cpu' or 'cuda:0'")
        if not isinstance(self.measure_costs, bool):
            raise StllrError(f"{w}: measure_costs={self.measure_costs!r} must be true or false")

    @property
    def loss_kind(self) -> str:
        """The objective that runs: ``loss``, or the rule's own when it is unset.

        >>> TrainConfig(rule="bptt").loss_kind, TrainConfig(rule="stllr").loss_kind
        ('sum_output', 'per_step')
        """
        if self.loss is not None:
            return self.loss
        return "per_step" if self.rule == "stllr" else "sum_output"

    @property
    def loss_steps(self) -> int | None:
        """The steps a per-step objective averages over: ``stllr.learn_steps`` for
        ``"per_step"``; ``None`` (all ``T``) otherwise."""
        return self.stllr.learn_steps if self.loss_kind == "per_step" else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stllr"] = self.stllr.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From plain data (a study file's ``training`` section, a checkpoint's config).

        BPTT with ``loss="per_step"`` needs its window: ``stllr.learn_steps`` must be given,
        so that S-TLLR's default window is never taken silently.

        >>> TrainConfig.from_dict({"rule": "bptt", "loss": "per_step"})
        Traceback (most recent call last):
        ...
        stllr_engine.errors.StllrError: training: loss='per_step' with rule 'bptt' averages over the last learn_steps steps: set training.stllr.learn_steps (S-TLLR's window)
        """
        d = known_fields("training", cls, d)
        stllr = d.get("stllr")
        if (d.get("rule") == "bptt" and d.get("loss") == "per_step"
                and not (isinstance(stllr, STLLRConfig) or (isinstance(stllr, dict) and "learn_steps" in stllr))):
            raise StllrError("training: loss='per_step' with rule 'bptt' averages over the last learn_steps steps: "
                             "set training.stllr.learn_steps (S-TLLR's window)")
        if "stllr" in d and isinstance(d["stllr"], dict):
            d["stllr"] = STLLRConfig.from_dict(d["stllr"])
        return cls(**d)


def resolve_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, or a one-line error when that device is not available here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise StllrError(f"device={str(name)!r} is not supported: use 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StllrError(f"device={str(name)!r} but this torch has no CUDA device available: use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StllrError(f"device={str(name)!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def is_flow(net: Network) -> bool:
    """Whether ``net`` predicts optical flow (kind ``flownet``: targets are images and flows,
    the loss is :class:`stllr_engine.flow.FlowStepLoss`, the measure AEE) rather than classes."""
    return net.spec.kind == "flownet"


def task_loss(net: Network, cfg: TrainConfig | None = None) -> Any:
    """The per-step loss of ``net``'s task: ``None`` (cross-entropy) or the flow loss ``cfg.flow_loss``."""
    if is_flow(net):
        from stllr_engine.flow import FlowStepLoss

        return FlowStepLoss(cfg.flow_loss if cfg is not None else "photometric")
    return None


def rule_step(cfg: TrainConfig, step_loss: Any = None) -> Callable[..., StepStats]:
    """``step(net, x, labels, probe=None) -> StepStats`` for time-major ``x``; ``step_loss``:
    the per-step loss (default cross-entropy; :func:`task_loss`)."""
    if cfg.rule == "bptt":
        loss, learn_steps = cfg.loss_kind, cfg.loss_steps

        def bptt(net: Network, x: Tensor, labels: Tensor, probe: Any = None) -> StepStats:
            return bptt_step(net, x, labels, probe, loss=loss, learn_steps=learn_steps, step_loss=step_loss)

        return bptt

    stllr_loss = cfg.loss_kind

    def step(net: Network, x: Tensor, labels: Tensor, probe: Any = None,
             optimizer: torch.optim.Optimizer | None = None) -> StepStats:
        if optimizer is not None:  # online S-TLLR: the step updates at every window step
            return stllr_step(net, x, labels, cfg.stllr, probe=probe, optimizer=optimizer, step_loss=step_loss)[0]
        return stllr_step(net, x, labels, cfg.stllr, probe=probe, loss=stllr_loss, step_loss=step_loss)[0]

    return step


def _make_optimizer(net: Network, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


def _batch_to(batch: Any, net: Network, device: torch.device) -> tuple[Tensor, Tensor]:
    """Frames ``[B, T, ...]`` → contiguous time-major ``[T, B, ...]``; labels ``[B]`` (or
    per-step ``[B, T]`` → ``[T, B]``), checked against the number of classes."""
    frames, labels = batch[0], batch[1]
    if frames.dim() < 3 or frames.shape[1] < 1:
        raise StllrError(f"data frames must be [B, T, ...] with T >= 1, got shape {tuple(frames.shape)}")
    labels = torch.as_tensor(labels)
    if is_flow(net):  # targets: previous image, next image, ground-truth flow, [B, 4, H, W]
        want = (frames.shape[0], 4, *net.spec.input_shape[1:])
        if tuple(labels.shape) != want:
            raise StllrError(f"flow targets must be [B, 4, H, W] = {want} (previous image, next image, flow u, v), "
                             f"got {tuple(labels.shape)}")
        dtype = net.readout.weight.dtype
        x = frames.to(device=device, dtype=dtype, non_blocking=True).transpose(0, 1).contiguous()
        return x, labels.to(device=device, dtype=dtype)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise StllrError(f"labels must be integer class indices, got dtype {labels.dtype}")
    classes = net.readout.num_classes
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise StllrError(
            f"labels must lie in [0, {classes - 1}] for a {classes}-class network, got {int(labels.min())}..{int(labels.max())}: "
            "set the network's num_classes to the dataset's"
        )
    if labels.dim() == 2:  # per-step targets, batch-first like the frames
        if tuple(labels.shape) != tuple(frames.shape[:2]):
            raise StllrError(f"per-step labels must be [B, T] = {tuple(frames.shape[:2])}, got {tuple(labels.shape)}")
        labels = labels.transpose(0, 1)
    elif labels.dim() != 1 or labels.shape[0] != frames.shape[0]:
        raise StllrError(f"labels must be [B] (or per-step [B, T]) for frames of shape {tuple(frames.shape)}, "
                         f"got {tuple(labels.shape)}")
    x = frames.to(device=device, dtype=net.readout.weight.dtype, non_blocking=True).transpose(0, 1).contiguous()
    return x, labels.to(device=device, dtype=torch.long)


def _check_shape(net: Network, x: Tensor) -> None:
    want = net.spec.input_shape
    if tuple(x.shape[2:]) != tuple(want):
        raise StllrError(
            f"data frames have per-step shape {tuple(x.shape[2:])} but the network expects {tuple(want)}: "
            "set the network's input_shape to the dataset's"
        )


@torch.no_grad()
def evaluate(net: Network, loader: Iterable[Any], device: str | torch.device | None = None,
             output: str = "sum") -> dict[str, float]:
    """Accuracy (argmax Σ_t o[t]) and loss ``CE(Σ_t o[t], label)`` over a loader.

    A flow network (:func:`is_flow`) is scored on its predicted flow instead, ``Σ_t o[t]``
    (``output="sum"``) or the last step's ``o[T-1]`` (``"last"``): ``aee`` and
    ``outliers_pct`` (:class:`stllr_engine.flow.FlowMetrics`: over the pixels with an event and
    a valid ground truth), ``zero_aee``, the AEE of predicting no motion (the floor a
    flow must beat to have learned anything), and ``loss``, the self-supervised loss per sample.
    """
    device = resolve_device(device) if device is not None else net.readout.weight.device
    net.to(device)
    net.eval()
    if is_flow(net):
        return _evaluate_flow(net, loader, device, output)
    n = correct = 0
    loss = 0.0
    for batch in loader:
        x, labels = _batch_to(batch, net, device)
        _check_shape(net, x)
        o_sum = run_inference(net, x).sum(0)
        labels = labels if labels.dim() == 1 else labels[-1]
        loss += float(F.cross_entropy(o_sum, labels, reduction="sum"))
        correct += int((o_sum.argmax(-1) == labels).sum())
        n += labels.shape[0]
    if n == 0:
        raise StllrError("the evaluation loader yielded no samples: check the dataset split")
    return {"accuracy": correct / n, "loss": loss / n}


def _evaluate_flow(net: Network, loader: Iterable[Any], device: torch.device, output: str) -> dict[str, float]:
    from stllr_engine.flow import FlowMetrics, FlowStepLoss

    if output not in ("sum", "last"):
        raise StllrError(f"evaluate: output={output!r}: use 'sum' (Σ_t o[t]) or 'last' (o[T-1])")
    sl, metrics, zero = FlowStepLoss(), FlowMetrics(), FlowMetrics()
    n, loss = 0, 0.0
    h, w = net.spec.input_shape[1:]
    for batch in loader:
        x, targets = _batch_to(batch, net, device)
        _check_shape(net, x)
        o = run_inference(net, x)
        pred = (o.sum(0) if output == "sum" else o[-1]).reshape(-1, 2, h, w)
        b = pred.shape[0]
        loss += float(sl.step(pred.reshape(b, -1), targets)) * b
        events = x.abs().sum(dim=(0, 2)) > 0
        metrics.update(pred, targets[:, 2:4], events)
        zero.update(torch.zeros_like(pred), targets[:, 2:4], events)
        n += b
    if n == 0:
        raise StllrError("the evaluation loader yielded no samples: check the dataset split")
    r = metrics.result()
    return {"aee": r["aee"], "outliers_pct": r["outliers_pct"], "zero_aee": zero.result()["aee"], "loss": loss / n}


def _versions() -> dict[str, str]:
    import platform

    import numpy

    try:
        from importlib.metadata import version

        stllr = version("stllr")
    except Exception:  # not installed (running from a source tree)
        stllr = "unknown"
    return {"stllr": str(stllr), "torch": str(torch.__version__), "numpy": str(numpy.__version__),
            "python": platform.python_version()}


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], net: Network, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any, epoch: int, cfg: TrainConfig, metrics: dict[str, Any] | None = None,
                    loader_rng_state: Tensor | None = None, extra: dict[str, Any] | None = None,
                    early_stopping: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically and durably: temp file, fsync, rename, fsync the folder.

    The file gets the permissions of a normally created file (``0666 & ~umask``). It holds
    the model, optimiser and scheduler state, the epoch, the network spec and training
    config, RNG states (CPU, and CUDA when used), the loader's generator state, the DFA
    feedback matrices, the library versions, the epoch's metrics, ``extra`` (plain data) and,
    with early stopping, its state (best epoch and weights, epochs without improvement).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise StllrError(f"checkpoint path {path} is a folder: give a file name such as {os.path.join(path, 'last.pt')}")
    cuda_rng = None
    if net.readout.weight.is_cuda:
        cuda_rng = torch.cuda.get_rng_state(net.readout.weight.device)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "dfa_feedback": {name: buf.detach().cpu() for name, buf in net.named_buffers() if name.startswith("dfa_feedback_")},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "config": {"network": net.spec.to_dict(), "train": cfg.to_dict()},
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": cuda_rng,
        "loader_rng_state": loader_rng_state,
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (bool, int, float, str, type(None)))},
        "versions": _versions(),
        "extra": extra or {},
        "early_stopping": early_stopping,
    }
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    except OSError as exc:
        raise StllrError(f"cannot write checkpoint {path}: {exc.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StllrError(f"cannot write checkpoint {path}: {exc.strerror}") from None
        if isinstance(exc, RuntimeError) and "writ" in str(exc):  # torch.save's stream writer on a full disk
            raise StllrError(f"cannot write checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
        raise


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (plain data and tensors only).

    RNG states always stay on the CPU (``torch.set_rng_state`` needs a CPU tensor), whatever
    ``map_location`` says for the rest.
    """
    map_location = resolve_device(map_location)
    if os.path.isdir(path):
        raise StllrError(f"checkpoint {path} is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise StllrError(f"checkpoint {path} does not exist: check the path") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError, ImportError,
            pickle.UnpicklingError) as exc:
        # truncated / not a checkpoint (torch.load raises a variety of these)
        raise StllrError(f"checkpoint {path} cannot be read ({type(exc).__name__}): it is corrupt or not a checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise StllrError(f"checkpoint {path} is not a format-{CHECKPOINT_FORMAT} stllr checkpoint")
    for key in ("rng_state", "cuda_rng_state", "loader_rng_state"):
        if isinstance(ckpt.get(key), Tensor):
            ckpt[key] = ckpt[key].cpu()
    return ckpt


def resume_source(checkpoint_path: str | os.PathLike[str] | None, resume_from: str | os.PathLike[str] | None,
                  resume: bool, *, what: str = "checkpoint_path") -> str | None:
    """The checkpoint file a run continues from, or None for a fresh run.

    ``resume_from`` (a checkpoint file, or a folder holding ``checkpoint.pt``) wins; otherwise
    ``resume=True`` continues from ``checkpoint_path``, which must exist. ``what`` names the
    caller's argument in the one-line errors.
    """
    if resume_from is not None:
        source = os.fspath(resume_from)
        if os.path.isdir(source):
            source = os.path.join(source, "checkpoint.pt")
        if not os.path.exists(source):
            raise StllrError(f"resume_from={os.fspath(resume_from)}: no checkpoint there (expected {source})")
        return source
    if not resume:
        return None
    if checkpoint_path is None:
        raise StllrError(f"resume=True needs a {what} to resume from")
    if not os.path.exists(checkpoint_path):
        raise StllrError(f"resume=True but {os.fspath(checkpoint_path)} does not exist: start without resume")
    return os.fspath(checkpoint_path)


def _load_dfa(net: Network, ckpt: dict[str, Any]) -> None:
    """Put the checkpoint's DFA feedback matrices back (they are derived from the seed, but
    the stored ones are what the run used)."""
    ref = net.readout.weight
    for name, m in (ckpt.get("dfa_feedback") or {}).items():
        net.register_buffer(name, m.to(device=ref.device, dtype=ref.dtype), persistent=False)


def restore(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[Network, TrainConfig, dict[str, Any]]:
    """Rebuild the network and training config of a checkpoint; returns ``(net, cfg, ckpt)``."""
    ckpt = load_checkpoint(path, map_location)  # checks map_location first
    spec = NetworkSpec.from_dict(ckpt["config"]["network"])
    cfg = TrainConfig.from_dict(ckpt["config"]["train"])
    net = build_network(spec)
    net.load_state_dict(ckpt["model"])
    net.to(resolve_device(map_location))
    _load_dfa(net, ckpt)
    return net, cfg, ckpt


def _loader_generator(loader: Iterable[Any]) -> torch.Generator | None:
    """The shuffling generator of a DataLoader, when it was given one."""
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _check_resume(ckpt: dict[str, Any], net: Network, cfg: TrainConfig, path: str | os.PathLike[str]) -> None:
    """A run resumes only with the network and settings it was started with."""
    if ckpt["config"]["network"] != net.spec.to_dict():
        raise StllrError(f"checkpoint {path} was written for another network spec: resume with the spec it "
                         "stores (stllr_engine.restore) or write to a new checkpoint path")
    stored = TrainConfig.from_dict(ckpt["config"]["train"])
    then, now = stored.to_dict(), cfg.to_dict()
    if stored.loss_kind == cfg.loss_kind:  # unset means the rule's own: the same objective, named or not
        then["loss"] = now["loss"] = cfg.loss_kind
    changed = sorted(k for k in now if k not in ("device", "measure_costs", "fused") and now[k] != then[k])
    if changed:
        hint = " (the cosine schedule is fixed by epochs when a run starts)" if "epochs" in changed else ""
        raise StllrError(f"checkpoint {path} was trained with other settings ({', '.join(changed)} differ){hint}: "
                         "resume with the stored settings or write to a new checkpoint path")


def fit(
    net: Network,
    train_loader: Iterable[Any],
    cfg: TrainConfig,
    test_loader: Iterable[Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    *,
    val_loader: Iterable[Any] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Train ``net`` with the configured rule; yields one metrics dict per epoch.

    The device, the checkpoint paths and, when resuming, the checkpoint's settings are
    checked at the call, before the first epoch runs.

    Args:
        net: the network (moved to ``cfg.device``).
        train_loader: yields ``(frames [B, T, ...], labels [B] or per-step [B, T])``.
        cfg: training settings.
        test_loader: evaluated after every epoch when given (``test_accuracy``, ``test_loss``).
        checkpoint_path: written after every epoch (atomically, fsynced) when given.
        resume: continue from ``checkpoint_path``, which must exist.
        val_loader: evaluated after every epoch when given (``val_accuracy``, ``val_loss``).
        resume_from: continue from this checkpoint file, or a folder's ``checkpoint.pt``,
            instead (e.g. one restored to another folder); new checkpoints still go to
            ``checkpoint_path``.
        extra: plain data stored in every checkpoint (e.g. the experiment config).

    The network and settings must be the stored ones (the device and ``measure_costs``
    may differ). The resumed run continues bit-for-bit (CPU): torch's RNG and the
    loader's own generator, if it has one, are restored. A checkpoint of a finished run
    yields its final metrics once more (with ``resumed_finished=True``) and trains nothing.

    Metrics per epoch: ``train_loss`` / ``test_loss`` / ``val_loss`` are ``CE(Σ_t o[t], label)``
    for both rules (comparable); ``loss_kind`` names the objective that ran
    (``cfg.loss_kind``: ``"sum_output"``, ``"per_step"`` or ``"per_step_all"``),
    ``loss_steps`` the steps it averages over (``learn_steps`` for ``"per_step"``, else
    ``T``) and ``train_objective`` is its value (``"per_step"``: the mean per-step CE over
    the learning window; ``"sum_output"``, either rule: the same as ``train_loss``); the
    named costs of :func:`stllr_engine.costs.measure_costs` (formula and measured, per
    sample and per batch) with ``T``, ``batch``, ``learn_steps``, ``bytes_per_value`` and
    ``counting``; ``finished`` is true on the last epoch.

    Every epoch also says how the run stops: ``stopped_by`` (``None`` while it goes on;
    ``"patience"``, ``"max_epochs"``, or ``"fixed"`` when ``cfg.patience`` is unset),
    ``epochs_trained`` and, with early stopping, ``best_epoch``. With ``cfg.patience`` the
    last epoch's ``val_*`` and ``test_*`` figures are those of the restored best-validation
    weights (the epoch's own weights' are kept as ``epoch_val_accuracy``, ...).

    A flow network (:func:`is_flow`) reports ``val_aee``, ``val_outliers_pct``, ``val_zero_aee``
    and ``val_loss`` (and ``test_…``) instead of accuracies, early-stops on the lowest validation
    AEE, and its ``train_loss`` is its objective's, the loss of the flow it predicts.
    """
    device = resolve_device(cfg.device)
    ckpt = None
    if cfg.patience is not None and val_loader is None:
        raise StllrError(f"training: patience={cfg.patience} stops on validation, but there is no validation split: "
                         "set data.val_fraction > 0 (or leave patience unset to train every epoch)")
    if checkpoint_path is not None and os.path.isdir(checkpoint_path):
        raise StllrError(f"checkpoint path {checkpoint_path} is a folder: give a file name")
    source = resume_source(checkpoint_path, resume_from, resume)
    if source is not None:
        ckpt = load_checkpoint(source, map_location=device)
        _check_resume(ckpt, net, cfg, source)
    return _fit(net, train_loader, cfg, device, test_loader, val_loader, checkpoint_path, ckpt, extra)


def _evaluate_into(metrics: dict[str, Any], prefix: str, net: Network, loader: Iterable[Any] | None,
                   device: torch.device, output: str = "sum") -> None:
    if loader is not None:
        ev = evaluate(net, loader, device, output)
        for key, value in ev.items():
            metrics[f"{prefix}_{key}"] = value


#: what an epoch's evaluation adds per split (``val_…``, ``test_…``), by task
EVAL_KEYS = {"classification": ("accuracy", "loss"), "flow": ("aee", "outliers_pct", "zero_aee", "loss")}


def _flow_output(cfg: TrainConfig) -> str:
    """The flow a run predicts: the objective's, ``Σ_t o[t]`` for ``sum_output``, else ``o[T-1]``."""
    return "sum" if cfg.loss_kind == "sum_output" else "last"


def fused_metrics(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Whether the run's steps were fused, and the seconds this process spent building the kernel."""
    on = cfg.fused != "off" and device.type == "cpu" and fused_steps.available()
    return {"fused_step": on, "fused_compile_s": fused_steps.compile_seconds() if on else 0.0}


def _first_costs(net: Network, step: Callable[..., StepStats], x: Tensor, labels: Tensor,
                 cfg: TrainConfig) -> dict[str, Any]:
    """The named costs of the run: measured on its first batch, or the formulas alone."""
    if cfg.measure_costs:
        measured = step
        if cfg.rule == "stllr" and cfg.stllr.online:
            # the online step updates as it goes: measure it with an optimiser that moves nothing
            frozen = torch.optim.SGD(net.parameters(), lr=0.0)

            def measured(net: Network, x: Tensor, labels: Tensor, probe: Any = None) -> StepStats:
                return step(net, x, labels, probe=probe, optimizer=frozen)

        return measure_costs(net, measured, x, labels, cfg.rule, cfg.stllr if cfg.rule == "stllr" else None,
                             cfg.loss_kind)
    T, batch = x.shape[0], x.shape[1]
    out: dict[str, Any] = dict(formula_costs(net, cfg.rule, T, cfg.stllr if cfg.rule == "stllr" else None,
                                             x.element_size(), cfg.loss_kind))
    out.update(T=T, batch=batch, learn_steps=cfg.stllr.learn_steps if cfg.rule == "stllr" else T,
               bytes_per_value=x.element_size(), counting="formulas only (measure_costs=False)")
    return out


class _EarlyStopping:
    """Early stopping on validation: the best epoch, its weights and the epochs since.

    Better: a higher ``val_accuracy`` by more than ``min_delta``, or an accuracy at least as
    high (a gain within ``min_delta`` included) with a lower ``val_loss``. ``patience=None``: no early stopping (the run trains every epoch
    and keeps its last weights; ``stopped_by`` is ``"fixed"`` at the end).
    """

    def __init__(self, patience: int | None, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best_epoch: int | None = None
        self.best_accuracy = -math.inf
        self.best_loss = math.inf
        self.bad_epochs = 0
        self.best_state: dict[str, Tensor] = {}
        self.stopped = False

    def update(self, net: Network, metrics: dict[str, Any], epoch: int, last: bool) -> str | None:
        """Take one epoch's validation figures; returns how the run stops, or ``None``.

        A flow run's score is ``−val_aee`` (lower AEE is better; ``−val_loss`` where the
        validation split has no ground truth), compared like an accuracy."""
        if self.patience is None:
            return "fixed" if last else None
        loss = float(metrics["val_loss"])
        if "val_aee" in metrics:
            aee = float(metrics["val_aee"])
            acc = -aee if math.isfinite(aee) else -loss
        else:
            acc = float(metrics["val_accuracy"])
        better = acc > self.best_accuracy + self.min_delta or (
            acc >= self.best_accuracy and loss < self.best_loss and self.best_epoch is not None)
        if self.best_epoch is None or better:
            self.best_epoch, self.best_accuracy, self.best_loss, self.bad_epochs = epoch, acc, loss, 0
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped = True
            return "patience"
        if last:
            self.stopped = True
            return "max_epochs"
        return None

    def state(self) -> dict[str, Any] | None:
        if self.patience is None:
            return None
        return {"best_epoch": self.best_epoch, "best_accuracy": self.best_accuracy, "best_loss": self.best_loss,
                "bad_epochs": self.bad_epochs, "stopped": self.stopped, "best_state": self.best_state}

    def load(self, state: dict[str, Any] | None, device: torch.device) -> None:
        if self.patience is None or not state:
            return
        self.best_epoch, self.bad_epochs = state["best_epoch"], int(state["bad_epochs"])
        self.best_accuracy, self.best_loss = float(state["best_accuracy"]), float(state["best_loss"])
        self.stopped = bool(state["stopped"])
        self.best_state = {k: v.to(device) for k, v in state["best_state"].items()}


def _diverged(loss: float, epoch: int, batch: int | None) -> None:
    where = f" (batch {batch})" if batch is not None else ""
    raise StllrError(f"training diverged: the loss became {loss} in epoch {epoch + 1}{where}: "
                     "lower the learning rate")


def _fit(
    net: Network,
    train_loader: Iterable[Any],
    cfg: TrainConfig,
    device: torch.device,
    test_loader: Iterable[Any] | None,
    val_loader: Iterable[Any] | None,
    checkpoint_path: str | os.PathLike[str] | None,
    ckpt: dict[str, Any] | None,
    extra: dict[str, Any] | None,
) -> Iterator[dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    net.to(device)
    opt = _make_optimizer(net, cfg)
    sched = _make_scheduler(opt, cfg)
    loader_gen = _loader_generator(train_loader)
    early = _EarlyStopping(cfg.patience, cfg.min_delta)
    start = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        _load_dfa(net, ckpt)
        if ckpt["optimizer"] is not None:
            opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scheduler"] is not None:
            sched.load_state_dict(ckpt["scheduler"])
        start = ckpt["epoch"]
        torch.set_rng_state(ckpt["rng_state"])  # the resumed run continues bit-for-bit
        if device.type == "cuda" and ckpt.get("cuda_rng_state") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng_state"], device)
        if loader_gen is not None and ckpt.get("loader_rng_state") is not None:
            loader_gen.set_state(ckpt["loader_rng_state"])
        early.load(ckpt.get("early_stopping"), device)
        if start >= cfg.epochs or early.stopped:
            final = dict(ckpt.get("metrics") or {})
            final["resumed_finished"] = True
            yield final
            return
    step = rule_step(cfg, task_loss(net, cfg))
    flow = is_flow(net)
    output = _flow_output(cfg)
    online = cfg.rule == "stllr" and getattr(cfg.stllr, "online", False)
    costs: dict[str, Any] | None = None
    for epoch in range(start, cfg.epochs):
        net.train()
        n = 0
        # sums stay on the device: no host synchronisation per batch on a GPU
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        steps = 0
        objective_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct_sum = torch.zeros((), device=device, dtype=torch.int64)
        measure_time = 0.0
        t_start = time.perf_counter()
        with fused_steps.use(cfg.fused):
            for batch in train_loader:
                x, labels = _batch_to(batch, net, device)
                steps = x.shape[0]
                if costs is None:
                    _check_shape(net, x)
                    t_m = time.perf_counter()
                    costs = _first_costs(net, step, x, labels, cfg)
                    measure_time += time.perf_counter() - t_m
                opt.zero_grad(set_to_none=True)
                if online:
                    stats = step(net, x, labels, optimizer=opt)  # steps the optimiser at every window step
                else:
                    stats = step(net, x, labels)
                    opt.step()
                # a flow run's loss is that of the flow it predicts (its objective's); ℓ(Σ_t o[t]) is
                # another flow, ~T× larger with an integrating head
                loss_sum += (stats.objective if flow else stats.loss).detach().double() * stats.batch
                objective_sum += stats.objective.detach().double() * stats.batch
                correct_sum += stats.correct
                n += stats.batch
                # NaN/inf: stop at once instead of training on garbage (on a GPU: checked per epoch,
                # so that the step never waits for the host)
                if device.type == "cpu" and not math.isfinite(float(stats.objective if flow else stats.loss)):
                    _diverged(float(stats.objective if flow else stats.loss), epoch, n // max(1, stats.batch))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t_start - measure_time
        if n == 0:
            raise StllrError("the training loader yielded no samples: check the dataset split and batch size")
        loss_total, objective_total, correct = float(loss_sum), float(objective_sum), int(correct_sum)
        if not math.isfinite(loss_total):
            _diverged(loss_total / n, epoch, None)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "rule": cfg.rule,
            "mode": (cfg.stllr.mode + ("+online" if online else "")) if cfg.rule == "stllr" else "fused_scan",
            "lr": opt.param_groups[0]["lr"],
            "train_loss": loss_total / n,
            "loss_kind": cfg.loss_kind,
            "loss_steps": cfg.loss_steps if cfg.loss_steps is not None else steps,
            "train_objective": objective_total / n,
            **({} if flow else {"train_accuracy": correct / n}),
            "wall_time_s": wall,
            "samples_per_s": n / wall if wall > 0 else float("nan"),
        }
        sched.step()
        metrics.update(costs or {})
        metrics.update(fused_metrics(cfg, device))
        with fused_steps.use(cfg.fused):
            _evaluate_into(metrics, "val", net, val_loader, device, output)
            _evaluate_into(metrics, "test", net, test_loader, device, output)
        stopped_by = early.update(net, metrics, epoch + 1, epoch + 1 == cfg.epochs)
        metrics.update(stopped_by=stopped_by, epochs_trained=epoch + 1, best_epoch=early.best_epoch)
        if stopped_by in ("patience", "max_epochs"):
            # the run's result is its best-validation weights: put them back, evaluate those
            for key in (f"{split}_{k}" for split in ("val", "test") for k in EVAL_KEYS["flow" if flow else
                                                                                         "classification"]):
                if key in metrics:
                    metrics[f"epoch_{key}"] = metrics[key]
            net.load_state_dict(early.best_state)
            with fused_steps.use(cfg.fused):
                _evaluate_into(metrics, "val", net, val_loader, device, output)
                _evaluate_into(metrics, "test", net, test_loader, device, output)
        metrics["finished"] = stopped_by is not None
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, net, opt, sched, epoch + 1, cfg, metrics,
                            loader_gen.get_state() if loader_gen is not None else None, extra,
                            early_stopping=early.state())
        yield metrics
        if stopped_by is not None:
            return
