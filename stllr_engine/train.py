"""Training API: fit / evaluate over DataLoaders of ``[B, T, ...]`` frames and integer labels.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from stllr_engine import NetworkSpec, STLLRConfig, TrainConfig, build_network, fit
>>> x = (torch.rand(32, 8, 10) < 0.3).float(); y = torch.randint(0, 2, (32,))
>>> net = build_network(NetworkSpec(kind="mlp", input_shape=(10,), num_classes=2, width=16))
>>> cfg = TrainConfig(rule="stllr", stllr=STLLRConfig(learn_steps=4), epochs=2)
>>> metrics = list(fit(net, DataLoader(TensorDataset(x, y), batch_size=8), cfg))
>>> [m["epoch"] for m in metrics], metrics[-1]["learning_macs"], metrics[-1]["forward_macs"]
([1, 2], 2304, 1536)

Every epoch yields a flat dict of metrics (units in the names): accuracy, loss, formula
costs per sample (``forward_macs``, ``learning_macs``, ``learning_memory_values``),
measured costs (``learning_memory_bytes`` for the batch, ``learning_macs_measured``
per sample), ``wall_time_s`` and ``samples_per_s``. A seed makes CPU runs bit-for-bit
repeatable. Checkpoints hold model, optimiser, scheduler, epoch and the full config, and
load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.bptt import bptt_step
from stllr_engine.costs import measure_costs
from stllr_engine.errors import StllrError
from stllr_engine.forward import run_inference
from stllr_engine.network import Network, NetworkSpec, build_network
from stllr_engine.stllr import STLLRConfig, StepStats, stllr_step

__all__ = ["TrainConfig", "fit", "evaluate", "rule_step", "save_checkpoint", "load_checkpoint", "restore",
           "resolve_device"]

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        rule: ``"stllr"`` or ``"bptt"``.
        stllr: S-TLLR settings (ignored for BPTT).
        optimizer: ``"adam"`` or ``"sgd"``.
        lr, momentum, weight_decay: optimiser settings (momentum: SGD only).
        epochs: epochs to train.
        schedule: ``"cosine"`` (to 0 over ``epochs``) or ``"constant"``.
        seed: seeds torch before training (initialisation is seeded by the network spec).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        measure_costs: instrument the first batch (measured memory and FLOPs).
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

    def __post_init__(self) -> None:
        if self.rule not in ("stllr", "bptt"):
            raise StllrError(f"rule={self.rule!r}: use 'stllr' or 'bptt'")
        if self.optimizer not in ("adam", "sgd"):
            raise StllrError(f"optimizer={self.optimizer!r}: use 'adam' or 'sgd'")
        if self.schedule not in ("cosine", "constant"):
            raise StllrError(f"schedule={self.schedule!r}: use 'cosine' or 'constant'")
        if not self.lr > 0:
            raise StllrError(f"lr={self.lr} must be > 0")
        if self.epochs < 1:
            raise StllrError(f"epochs={self.epochs} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stllr"] = self.stllr.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise StllrError(f"unknown training keys {sorted(unknown)}: valid keys are {sorted(names)}")
        if "stllr" in d and isinstance(d["stllr"], dict):
            d["stllr"] = STLLRConfig.from_dict(d["stllr"])
        return cls(**d)


def resolve_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, or a one-line error when that device is not available here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StllrError(f"device={str(name)!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StllrError(f"device={str(name)!r} but this torch has no CUDA device available: use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StllrError(f"device={str(name)!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def rule_step(cfg: TrainConfig) -> Callable[..., StepStats]:
    """``step(net, x, labels, probe=None) -> StepStats`` for time-major ``x``."""
    if cfg.rule == "bptt":
        return bptt_step

    def step(net: Network, x: Tensor, labels: Tensor, probe: Any = None) -> StepStats:
        return stllr_step(net, x, labels, cfg.stllr, probe=probe)[0]

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
    frames, labels = batch[0], batch[1]
    x = frames.to(device=device, dtype=net.readout.weight.dtype, non_blocking=True).transpose(0, 1)
    return x, torch.as_tensor(labels).to(device=device, dtype=torch.long)


def _check_shape(net: Network, x: Tensor) -> None:
    want = net.spec.input_shape
    if tuple(x.shape[2:]) != tuple(want):
        raise StllrError(
            f"data frames have per-step shape {tuple(x.shape[2:])} but the network expects {tuple(want)}: "
            "set the network's input_shape to the dataset's"
        )


@torch.no_grad()
def evaluate(net: Network, loader: Iterable[Any], device: str | torch.device | None = None) -> dict[str, float]:
    """Accuracy (argmax Σ_t o[t]) and loss ``CE(Σ_t o[t], label)`` over a loader."""
    device = torch.device(device) if device is not None else net.readout.weight.device
    net.eval()
    n = correct = 0
    loss = 0.0
    for batch in loader:
        x, labels = _batch_to(batch, net, device)
        _check_shape(net, x)
        o_sum = run_inference(net, x).sum(0)
        loss += float(F.cross_entropy(o_sum, labels, reduction="sum"))
        correct += int((o_sum.argmax(-1) == labels).sum())
        n += labels.shape[0]
    if n == 0:
        raise StllrError("the evaluation loader yielded no samples: check the dataset split")
    return {"accuracy": correct / n, "loss": loss / n}


def save_checkpoint(path: str | os.PathLike[str], net: Network, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any, epoch: int, cfg: TrainConfig, metrics: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (temp file + rename): never a torn file."""
    path = os.fspath(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "config": {"network": net.spec.to_dict(), "train": cfg.to_dict()},
        "rng_state": torch.get_rng_state(),
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, type(None)))},
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (plain data and tensors only)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise StllrError(f"checkpoint {path} does not exist: check the path") from None
    except Exception as exc:  # truncated / not a checkpoint
        raise StllrError(f"checkpoint {path} cannot be read ({type(exc).__name__}): it is corrupt or not a checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise StllrError(f"checkpoint {path} is not a format-{CHECKPOINT_FORMAT} stllr checkpoint")
    return ckpt


def restore(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[Network, TrainConfig, dict[str, Any]]:
    """Rebuild the network and training config of a checkpoint; returns ``(net, cfg, ckpt)``."""
    ckpt = load_checkpoint(path, map_location)
    spec = NetworkSpec.from_dict(ckpt["config"]["network"])
    cfg = TrainConfig.from_dict(ckpt["config"]["train"])
    net = build_network(spec)
    net.load_state_dict(ckpt["model"])
    return net, cfg, ckpt


def fit(
    net: Network,
    train_loader: Iterable[Any],
    cfg: TrainConfig,
    test_loader: Iterable[Any] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> Iterator[dict[str, Any]]:
    """Train ``net`` with the configured rule; yields one metrics dict per epoch.

    Args:
        net: the network (moved to ``cfg.device``).
        train_loader: yields ``(frames [B, T, ...], labels [B])``.
        cfg: training settings.
        test_loader: evaluated after every epoch when given.
        checkpoint_path: written after every epoch (atomically) when given.
        resume: continue from ``checkpoint_path`` if it exists.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    net.to(device)
    opt = _make_optimizer(net, cfg)
    sched = _make_scheduler(opt, cfg)
    start = 0
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        ckpt = load_checkpoint(checkpoint_path, map_location=device)
        net.load_state_dict(ckpt["model"])
        if ckpt["optimizer"] is not None:
            opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scheduler"] is not None:
            sched.load_state_dict(ckpt["scheduler"])
        start = ckpt["epoch"]
        torch.set_rng_state(ckpt["rng_state"])  # the resumed run continues bit-for-bit
    step = rule_step(cfg)
    costs: dict[str, Any] | None = None
    for epoch in range(start, cfg.epochs):
        net.train()
        n = correct = 0
        loss_sum = 0.0
        measure_time = 0.0
        t_start = time.perf_counter()
        for batch in train_loader:
            x, labels = _batch_to(batch, net, device)
            if costs is None:
                _check_shape(net, x)
                if cfg.measure_costs:
                    t_m = time.perf_counter()
                    costs = measure_costs(net, step, x, labels, cfg.rule, cfg.stllr)
                    measure_time += time.perf_counter() - t_m
                else:
                    costs = {}
            opt.zero_grad(set_to_none=True)
            stats = step(net, x, labels)
            opt.step()
            loss_sum += stats.loss * stats.batch
            correct += stats.correct
            n += stats.batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t_start - measure_time
        if n == 0:
            raise StllrError("the training loader yielded no samples: check the dataset split and batch size")
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "rule": cfg.rule,
            "mode": cfg.stllr.mode if cfg.rule == "stllr" else "fused_scan",
            "lr": opt.param_groups[0]["lr"],
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "wall_time_s": wall,
            "samples_per_s": n / wall if wall > 0 else float("nan"),
        }
        sched.step()
        metrics.update({k: v for k, v in (costs or {}).items() if k not in ("batch", "T")})
        if test_loader is not None:
            ev = evaluate(net, test_loader, device)
            metrics["test_accuracy"], metrics["test_loss"] = ev["accuracy"], ev["loss"]
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, net, opt, sched, epoch + 1, cfg, metrics)
        yield metrics
