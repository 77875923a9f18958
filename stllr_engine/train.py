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

from stllr_engine._checks import choice, integer, known_fields, real
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
        if not isinstance(self.device, str) or not self.device:
            raise StllrError(f"{w}: device={self.device!r} must be a name such as 'cpu' or 'cuda:0'")
        if not isinstance(self.measure_costs, bool):
            raise StllrError(f"{w}: measure_costs={self.measure_costs!r} must be true or false")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stllr"] = self.stllr.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = known_fields("training", cls, d)
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
    """Frames ``[B, T, ...]`` → contiguous time-major ``[T, B, ...]``; labels ``[B]`` (or
    per-step ``[B, T]`` → ``[T, B]``), checked against the number of classes."""
    frames, labels = batch[0], batch[1]
    if frames.dim() < 3 or frames.shape[1] < 1:
        raise StllrError(f"data frames must be [B, T, ...] with T >= 1, got shape {tuple(frames.shape)}")
    labels = torch.as_tensor(labels)
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
def evaluate(net: Network, loader: Iterable[Any], device: str | torch.device | None = None) -> dict[str, float]:
    """Accuracy (argmax Σ_t o[t]) and loss ``CE(Σ_t o[t], label)`` over a loader."""
    device = resolve_device(device) if device is not None else net.readout.weight.device
    net.to(device)
    net.eval()
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


def save_checkpoint(path: str | os.PathLike[str], net: Network, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any, epoch: int, cfg: TrainConfig, metrics: dict[str, Any] | None = None,
                    loader_rng_state: Tensor | None = None) -> None:
    """Write a checkpoint atomically (temp file + rename): never a torn file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise StllrError(f"checkpoint path {path} is a folder: give a file name such as {os.path.join(path, 'last.pt')}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "config": {"network": net.spec.to_dict(), "train": cfg.to_dict()},
        "rng_state": torch.get_rng_state(),
        "loader_rng_state": loader_rng_state,
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
    map_location = resolve_device(map_location)
    if os.path.isdir(path):
        raise StllrError(f"checkpoint {path} is a folder, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise StllrError(f"checkpoint {path} does not exist: check the path") from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError, ImportError) as exc:
        # truncated / not a checkpoint (torch.load raises a variety of these)
        raise StllrError(f"checkpoint {path} cannot be read ({type(exc).__name__}): it is corrupt or not a checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise StllrError(f"checkpoint {path} is not a format-{CHECKPOINT_FORMAT} stllr checkpoint")
    return ckpt


def restore(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> tuple[Network, TrainConfig, dict[str, Any]]:
    """Rebuild the network and training config of a checkpoint; returns ``(net, cfg, ckpt)``."""
    ckpt = load_checkpoint(path, map_location)  # checks map_location first
    spec = NetworkSpec.from_dict(ckpt["config"]["network"])
    cfg = TrainConfig.from_dict(ckpt["config"]["train"])
    net = build_network(spec)
    net.load_state_dict(ckpt["model"])
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
    then = TrainConfig.from_dict(ckpt["config"]["train"]).to_dict()
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in ("device", "measure_costs") and now[k] != then[k])
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
) -> Iterator[dict[str, Any]]:
    """Train ``net`` with the configured rule; yields one metrics dict per epoch.

    The device, the checkpoint path and, when resuming, the checkpoint's settings are
    checked at the call, before the first epoch runs.

    Args:
        net: the network (moved to ``cfg.device``).
        train_loader: yields ``(frames [B, T, ...], labels [B] or per-step [B, T])``.
        cfg: training settings.
        test_loader: evaluated after every epoch when given.
        checkpoint_path: written after every epoch (atomically) when given.
        resume: continue from ``checkpoint_path`` if it exists; the network and settings
            must be the stored ones. The resumed run continues bit-for-bit (CPU): torch's
            RNG and the loader's own generator, if it has one, are restored.

    Metrics per epoch: ``train_loss`` / ``test_loss`` are ``CE(Σ_t o[t], label)`` for both
    rules (comparable); ``train_objective`` is what the rule minimises (S-TLLR: the mean
    per-step CE over the learning window; BPTT: the same as ``train_loss``).
    """
    device = resolve_device(cfg.device)
    ckpt = None
    if checkpoint_path is not None and os.path.isdir(checkpoint_path):
        raise StllrError(f"checkpoint path {checkpoint_path} is a folder: give a file name")
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        ckpt = load_checkpoint(checkpoint_path, map_location=device)
        _check_resume(ckpt, net, cfg, checkpoint_path)
    return _fit(net, train_loader, cfg, device, test_loader, checkpoint_path, ckpt)


def _fit(
    net: Network,
    train_loader: Iterable[Any],
    cfg: TrainConfig,
    device: torch.device,
    test_loader: Iterable[Any] | None,
    checkpoint_path: str | os.PathLike[str] | None,
    ckpt: dict[str, Any] | None,
) -> Iterator[dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    net.to(device)
    opt = _make_optimizer(net, cfg)
    sched = _make_scheduler(opt, cfg)
    loader_gen = _loader_generator(train_loader)
    start = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        if ckpt["optimizer"] is not None:
            opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scheduler"] is not None:
            sched.load_state_dict(ckpt["scheduler"])
        start = ckpt["epoch"]
        torch.set_rng_state(ckpt["rng_state"])  # the resumed run continues bit-for-bit
        if loader_gen is not None and ckpt.get("loader_rng_state") is not None:
            loader_gen.set_state(ckpt["loader_rng_state"])
    step = rule_step(cfg)
    costs: dict[str, Any] | None = None
    for epoch in range(start, cfg.epochs):
        net.train()
        n = correct = 0
        loss_sum = objective_sum = 0.0
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
            objective_sum += stats.objective * stats.batch
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
            "train_objective": objective_sum / n,
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
            save_checkpoint(checkpoint_path, net, opt, sched, epoch + 1, cfg, metrics,
                            loader_gen.get_state() if loader_gen is not None else None)
        yield metrics
