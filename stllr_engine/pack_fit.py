"""Training a pack: K experiments of one architecture as one batched model, each its own run.

:func:`run_pack` is :func:`stllr_engine.experiment.run_experiment` for K experiment configs
that may share a pack (:func:`stllr_engine.pack.pack_key`); :func:`fit_pack` is
:func:`stllr_engine.train.fit` for K networks. Every epoch yields one metrics dict per
member (``None`` for a member that had already ended), with the keys a separate run
yields plus ``pack_size`` (members training in that epoch), ``pack_member`` and
``pack_wall_time_s`` (the pack's own epoch time; a member's ``wall_time_s`` is its share) and
``pack_peak_step_bytes_measured_per_batch`` (every allocation alive at the peak of one step of
the whole pack, :class:`stllr_engine.costs.AllocationTracker`, measured once per pack size).

Between epochs the member networks and their own ``torch.optim`` optimisers and schedulers
are the record: an epoch stacks the members still running into a pack, trains it, and
writes parameters and optimiser state back. So each member's checkpoint is an ordinary
checkpoint of its own run (it resumes packed or alone), its learning rate follows its own
scheduler, and a member that stops early or diverges simply leaves the next epoch's pack:

* ``stopped_by="patience"`` / ``"max_epochs"``: as a separate run, the best-validation
  weights restored and evaluated;
* a loss that is not finite: the member is frozen at once (the others go on) and its last
  metrics say ``status="diverged"`` with the separate run's message in ``error``.

Costs: a member's measured costs come from the member alone (one instrumented step of its
own network on its own first batch, as a separate run measures), never from the pack.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine import fused as fused_steps
from stllr_engine.costs import AllocationTracker
from stllr_engine.errors import StllrError
from stllr_engine.network import Network
from stllr_engine.pack import Pack, PackAdam, PackSGD, _PackOptimizer, pack_bptt_step, pack_inference, pack_key, pack_stllr_step
from stllr_engine.train import (
    TrainConfig,
    _batch_to,
    _check_resume,
    _check_shape,
    _EarlyStopping,
    _first_costs,
    _load_dfa,
    _loader_generator,
    _make_optimizer,
    _make_scheduler,
    evaluate,
    fused_metrics,
    load_checkpoint,
    resolve_device,
    resume_source,
    rule_step,
    save_checkpoint,
)

__all__ = ["fit_pack", "run_pack"]


# -- the pack's optimiser <-> the members' torch optimisers --------------------------------


def _pack_optimizer(pack: Pack, member_params: list[list[Tensor]], opts: Sequence[torch.optim.Optimizer]) -> _PackOptimizer:
    """A pack optimiser holding exactly the members' optimiser state and current learning rates."""
    cfg = pack.cfgs[0]
    lrs = [float(o.param_groups[0]["lr"]) for o in opts]
    wds = [c.weight_decay for c in pack.cfgs]
    with torch.no_grad():
        if cfg.optimizer == "adam":
            g = opts[0].param_groups[0]
            adam = PackAdam(pack.parameters(), lrs, wds, betas=tuple(g["betas"]), eps=g["eps"])  # type: ignore[arg-type]
            for j, own in enumerate(member_params):
                for k, p in enumerate(own):
                    st = opts[k].state.get(p)
                    if st:
                        adam.exp_avg[j][k] = st["exp_avg"]
                        adam.exp_avg_sq[j][k] = st["exp_avg_sq"]
                        adam.steps[k] = float(st["step"])
            return adam
        sgd = PackSGD(pack.parameters(), lrs, wds, momentum=cfg.momentum)
        if cfg.momentum != 0:
            for j, own in enumerate(member_params):
                buf = torch.zeros_like(pack.parameters()[j])
                for k, p in enumerate(own):
                    b = opts[k].state.get(p, {}).get("momentum_buffer")
                    if b is not None:
                        buf[k] = b
                        sgd.started[k] = True
                sgd.buf[j] = buf
        return sgd


def _store_optimizer(opt: _PackOptimizer, member_params: list[list[Tensor]], opts: Sequence[torch.optim.Optimizer]) -> None:
    """Write the pack optimiser's state back into each member's own optimiser (torch's format)."""
    with torch.no_grad():
        for j, own in enumerate(member_params):
            for k, p in enumerate(own):
                if isinstance(opt, PackAdam):
                    if float(opt.steps[k]) == 0:
                        continue
                    step = torch.tensor(float(opt.steps[k]), dtype=torch.get_default_dtype())
                    opts[k].state[p] = {"step": step, "exp_avg": opt.exp_avg[j][k].clone(),
                                        "exp_avg_sq": opt.exp_avg_sq[j][k].clone()}
                elif isinstance(opt, PackSGD) and opt.momentum != 0 and bool(opt.started[k]):
                    opts[k].state[p] = {"momentum_buffer": opt.buf[j][k].clone()}  # type: ignore[index]


# -- evaluation -----------------------------------------------------------------------------


def _stack_batches(batches: Sequence[Any], nets: Sequence[Network], device: torch.device) -> tuple[Tensor, Tensor]:
    """One batch per member → ``x [K, T, B, ...]``, ``labels [K, B]`` (same shapes required)."""
    xs, ys = [], []
    for batch, net in zip(batches, nets):
        x, y = _batch_to(batch, net, device)
        if y.dim() != 1:
            raise StllrError("a pack trains on class labels [B]; per-step labels train unpacked (resources.pack: 1)")
        xs.append(x)
        ys.append(y)
    if len({tuple(x.shape) for x in xs}) > 1:
        raise StllrError(f"the members of a pack got batches of different shapes {sorted({tuple(x.shape) for x in xs})}: "
                         "their data splits must have the same sizes (same dataset, val_fraction and batch_size)")
    return torch.stack(xs), torch.stack(ys)


def _zip_exact(loaders: Sequence[Iterable[Any]]) -> Iterator[tuple[Any, ...]]:
    iters = [iter(ld) for ld in loaders]
    while True:
        out = []
        for it in iters:
            try:
                out.append(next(it))
            except StopIteration:
                if out:
                    raise StllrError("the members of a pack have data splits of different lengths: "
                                     "same dataset, val_fraction and batch_size are needed") from None
                return
        yield tuple(out)


def _evaluate_pack(pack: Pack, nets: Sequence[Network], loaders: Sequence[Iterable[Any]],
                   device: torch.device) -> list[dict[str, float]]:
    """:func:`stllr_engine.train.evaluate` of every member on its own loader, as one pack."""
    K = pack.K
    loss = torch.zeros(K, dtype=torch.float64)
    correct = torch.zeros(K, dtype=torch.int64)
    n = 0
    for batches in _zip_exact(loaders):
        x, labels = _stack_batches(batches, nets, device)
        _check_shape(nets[0], x[0])
        o_sum = pack_inference(pack, x)
        C = o_sum.shape[-1]
        loss += F.cross_entropy(o_sum.reshape(-1, C), labels.reshape(-1), reduction="none").view(K, -1).sum(1).double().cpu()
        correct += (o_sum.argmax(-1) == labels).sum(1).cpu()
        n += labels.shape[1]
    if n == 0:
        raise StllrError("the evaluation loader yielded no samples: check the dataset split")
    return [{"accuracy": int(correct[k]) / n, "loss": float(loss[k]) / n} for k in range(K)]


# -- training -------------------------------------------------------------------------------


class _Member:
    """One member's own run: network, optimiser, scheduler, loaders, early stopping, status."""

    def __init__(self, index: int, net: Network, cfg: TrainConfig, train: Iterable[Any], val: Iterable[Any] | None,
                 test: Iterable[Any] | None, checkpoint_path: str | None, extra: dict[str, Any] | None):
        self.index, self.net, self.cfg = index, net, cfg
        self.train, self.val, self.test = train, val, test
        self.checkpoint_path, self.extra = checkpoint_path, extra
        self.opt = _make_optimizer(net, cfg)
        self.sched = _make_scheduler(self.opt, cfg)
        self.loader_gen = _loader_generator(train)
        self.early = _EarlyStopping(cfg.patience, cfg.min_delta)
        self.start = 0
        self.done = False
        self.costs: dict[str, Any] | None = None

    def resume(self, ckpt: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
        """Restore from a checkpoint (as :func:`stllr_engine.train.fit`); its final metrics if it had ended."""
        self.net.load_state_dict(ckpt["model"])
        _load_dfa(self.net, ckpt)
        if ckpt["optimizer"] is not None:
            self.opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scheduler"] is not None:
            self.sched.load_state_dict(ckpt["scheduler"])
        self.start = ckpt["epoch"]
        if self.loader_gen is not None and ckpt.get("loader_rng_state") is not None:
            self.loader_gen.set_state(ckpt["loader_rng_state"])
        self.early.load(ckpt.get("early_stopping"), device)
        if self.start >= self.cfg.epochs or self.early.stopped or (ckpt.get("metrics") or {}).get("status") == "diverged":
            self.done = True
            final = dict(ckpt.get("metrics") or {})
            final["resumed_finished"] = True
            return final
        return None


def _cost_key(m: "_Member") -> str:
    """What a member's measured costs depend on: its network spec and training settings except
    the seed, learning rate, weight decay, epochs and stopping (they never change an operation
    of a step). Members with equal keys (e.g. the seeds of one configuration) measure the same
    bytes and MACs, so one instrumented step of one of them, alone, stands for all."""
    import json

    t = m.cfg.to_dict()
    for k in ("seed", "lr", "weight_decay", "epochs", "patience", "min_delta", "device", "measure_costs", "fused"):
        t.pop(k, None)
    spec = {k: v for k, v in m.net.spec.to_dict().items() if k != "seed"}
    return json.dumps([spec, t, str(m.net.readout.weight.dtype)], sort_keys=True, default=str)


def fit_pack(
    nets: Sequence[Network],
    cfgs: Sequence[TrainConfig],
    train_loaders: Sequence[Iterable[Any]],
    val_loaders: Sequence[Iterable[Any] | None] | None = None,
    test_loaders: Sequence[Iterable[Any] | None] | None = None,
    checkpoint_paths: Sequence[str | os.PathLike[str] | None] | None = None,
    resume: bool = False,
    extras: Sequence[dict[str, Any] | None] | None = None,
) -> Iterator[list[dict[str, Any] | None]]:
    """Train K members as one pack; yields, per epoch, one metrics dict per member (``None``
    once a member has ended). Each member's metrics and checkpoint are those
    :func:`stllr_engine.train.fit` gives for it alone (module docstring), up to float noise.

    Args:
        nets, cfgs, train_loaders: one per member (each member's own data order).
        val_loaders, test_loaders: one per member (or ``None``).
        checkpoint_paths: one checkpoint file per member, written after every epoch.
        resume: continue each member from its checkpoint (a member without one starts fresh).
        extras: plain data stored in each member's checkpoint.
    """
    K = len(nets)
    if not (len(cfgs) == len(train_loaders) == K):
        raise StllrError("fit_pack needs one config and one training loader per network")
    val_loaders = list(val_loaders) if val_loaders is not None else [None] * K
    test_loaders = list(test_loaders) if test_loaders is not None else [None] * K
    paths = [os.fspath(p) if p is not None else None for p in (checkpoint_paths or [None] * K)]
    extras = list(extras) if extras is not None else [None] * K
    device = resolve_device(cfgs[0].device)
    for net in nets:
        net.to(device)
    from stllr_engine.pack import check_packable

    check_packable(nets, cfgs)
    members = [_Member(k, nets[k], cfgs[k], train_loaders[k], val_loaders[k], test_loaders[k], paths[k], extras[k])
               for k in range(K)]
    for m in members:
        if m.cfg.patience is not None and m.val is None:
            raise StllrError(f"training: patience={m.cfg.patience} stops on validation, but there is no validation "
                             "split: set data.val_fraction > 0 (or leave patience unset to train every epoch)")
    return _fit_pack(members, device, resume)


def _fit_pack(members: list[_Member], device: torch.device, resume: bool) -> Iterator[list[dict[str, Any] | None]]:
    K = len(members)
    torch.manual_seed(members[0].cfg.seed)
    first: list[dict[str, Any] | None] = [None] * K
    any_finished = False
    for m in members:
        source = resume_source(m.checkpoint_path, None, resume and m.checkpoint_path is not None
                               and os.path.exists(m.checkpoint_path))
        if source is not None:
            ckpt = load_checkpoint(source, map_location=device)
            _check_resume(ckpt, m.net, m.cfg, source)
            first[m.index] = m.resume(ckpt, device)
            any_finished = any_finished or first[m.index] is not None
    if any_finished:
        yield first
    epochs = max(m.cfg.epochs for m in members)
    rule = members[0].cfg.rule
    loss_kind = members[0].cfg.loss_kind
    online = rule == "stllr" and members[0].cfg.stllr.online
    pack_bytes: dict[int, int] = {}  # the pack's measured step footprint, per pack size
    measured: dict[str, dict[str, Any]] = {}  # a member's measured costs, by what they depend on
    for epoch in range(min(m.start for m in members), epochs):
        running = [m for m in members if not m.done and m.start <= epoch]
        if not running:
            if all(m.done for m in members):
                return
            continue
        out: list[dict[str, Any] | None] = [None] * K
        pack = Pack.from_networks([m.net for m in running], [m.cfg for m in running])
        own_params = pack.member_parameters([m.net for m in running])
        opt = _pack_optimizer(pack, own_params, [m.opt for m in running])
        P = len(running)
        fused_mode = running[0].cfg.fused
        loss_sum = torch.zeros(P, dtype=torch.float64)
        objective_sum = torch.zeros(P, dtype=torch.float64)
        correct_sum = torch.zeros(P, dtype=torch.int64)
        n = 0
        steps = 0
        diverged: dict[int, str] = {}
        measure_time = 0.0
        t_start = time.perf_counter()
        with fused_steps.use(fused_mode):
            for batches in _zip_exact([m.train for m in running]):
                x, labels = _stack_batches(batches, [m.net for m in running], device)
                steps = x.shape[1]
                if any(m.costs is None for m in running):
                    t_m = time.perf_counter()
                    for j, m in enumerate(running):
                        if m.costs is None:
                            _check_shape(m.net, x[j])
                            key = _cost_key(m)
                            if key not in measured:  # one instrumented step of this member alone
                                measured[key] = _first_costs(m.net, rule_step(m.cfg), x[j], labels[j], m.cfg)
                            m.costs = dict(measured[key])
                    measure_time += time.perf_counter() - t_m
                opt.zero_grad()
                step = pack_stllr_step if rule == "stllr" else pack_bptt_step
                kw: dict[str, Any] = {"optimizer": opt} if online else {}  # online: it steps as it goes
                if P not in pack_bytes and running[0].cfg.measure_costs:
                    # the pack's own footprint, once per pack size: every allocation of its step
                    with AllocationTracker() as tracker:
                        stats = step(pack, x, labels, loss=loss_kind, **kw)
                    pack_bytes[P] = tracker.peak_bytes
                else:
                    stats = step(pack, x, labels, loss=loss_kind, **kw)
                if not online:
                    opt.step()
                loss_sum += stats.loss.detach().double().cpu() * stats.batch
                objective_sum += stats.objective.detach().double().cpu() * stats.batch
                correct_sum += stats.correct.cpu()
                n += stats.batch
                bad = ~torch.isfinite(stats.loss.detach().cpu()) & opt.active.cpu()
                for j in torch.nonzero(bad).flatten().tolist():
                    diverged[j] = (f"training diverged: the loss became {float(stats.loss[j])} in epoch {epoch + 1} "
                                   f"(batch {n // max(1, stats.batch)}): lower the learning rate")
                    opt.active[j] = False
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t_start - measure_time
        if n == 0:
            raise StllrError("the training loader yielded no samples: check the dataset split and batch size")
        pack.write_back([m.net for m in running])
        _store_optimizer(opt, own_params, [m.opt for m in running])
        with fused_steps.use(fused_mode):
            evals = {}
            for split in ("val", "test"):
                loaders = [getattr(m, split) for m in running]
                if all(ld is not None for ld in loaders):
                    evals[split] = _evaluate_pack(pack, [m.net for m in running], loaders, device)  # type: ignore[arg-type]
                elif any(ld is not None for ld in loaders):
                    evals[split] = [evaluate(m.net, ld, device) if ld is not None else None  # type: ignore[misc]
                                    for m, ld in zip(running, loaders)]
        for j, m in enumerate(running):
            metrics: dict[str, Any] = {
                "epoch": epoch + 1,
                "rule": m.cfg.rule,
                "mode": m.cfg.stllr.mode if m.cfg.rule == "stllr" else "fused_scan",
                "lr": m.opt.param_groups[0]["lr"],
                "train_loss": float(loss_sum[j]) / n,
                "loss_kind": m.cfg.loss_kind,
                "loss_steps": m.cfg.loss_steps if m.cfg.loss_steps is not None else steps,
                "train_objective": float(objective_sum[j]) / n,
                "train_accuracy": int(correct_sum[j]) / n,
                "wall_time_s": wall / P,
                "samples_per_s": n * P / wall if wall > 0 else float("nan"),
                "pack_size": P,
                "pack_member": m.index,
                "pack_wall_time_s": wall,
                "pack_peak_step_bytes_measured_per_batch": pack_bytes.get(P),
            }
            with warnings.catch_warnings():  # the member's own optimiser is stepped by the pack
                warnings.filterwarnings("ignore", message="Detected call of")
                m.sched.step()
            metrics.update(m.costs or {})
            metrics.update(fused_metrics(m.cfg, device))
            if j in diverged or not math.isfinite(metrics["train_loss"]):
                metrics.update(status="diverged", error=diverged.get(j) or (
                    f"training diverged: the loss became {metrics['train_loss']} in epoch {epoch + 1}: "
                    "lower the learning rate"), stopped_by=None, epochs_trained=epoch + 1,
                    best_epoch=m.early.best_epoch, finished=True)
                m.done = True
            else:
                for split, ev in evals.items():
                    if ev[j] is not None:
                        metrics[f"{split}_accuracy"], metrics[f"{split}_loss"] = ev[j]["accuracy"], ev[j]["loss"]
                stopped_by = m.early.update(m.net, metrics, epoch + 1, epoch + 1 == m.cfg.epochs)
                metrics.update(stopped_by=stopped_by, epochs_trained=epoch + 1, best_epoch=m.early.best_epoch)
                if stopped_by in ("patience", "max_epochs"):
                    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
                        if key in metrics:
                            metrics[f"epoch_{key}"] = metrics[key]
                    m.net.load_state_dict(m.early.best_state)
                    for split in ("val", "test"):
                        loader = getattr(m, split)
                        if loader is not None:
                            with fused_steps.use(fused_mode):
                                ev1 = evaluate(m.net, loader, device)
                            metrics[f"{split}_accuracy"], metrics[f"{split}_loss"] = ev1["accuracy"], ev1["loss"]
                metrics["finished"] = stopped_by is not None
                m.done = stopped_by is not None
            if m.checkpoint_path is not None:
                save_checkpoint(m.checkpoint_path, m.net, m.opt, m.sched, epoch + 1, m.cfg, metrics,
                                m.loader_gen.get_state() if m.loader_gen is not None else None, m.extra,
                                early_stopping=m.early.state())
            out[m.index] = metrics
        yield out
        if all(m.done for m in members):
            return


def run_pack(configs: Sequence[Any], checkpoint_dirs: Sequence[str | os.PathLike[str] | None] | None = None,
             resume: bool = False) -> Iterator[list[dict[str, Any] | None]]:
    """:func:`stllr_engine.experiment.run_experiment` for K experiments trained as one pack.

    The experiments must differ only in what a member may own (seed, learning rate, weight
    decay, S-TLLR factors and window): :func:`stllr_engine.pack.pack_key` of every
    config's network and training, and the data and runtime settings, must be equal.
    Each member's checkpoint ``checkpoint.pt`` in its own folder is an ordinary
    ``run_experiment`` checkpoint. Metrics add ``epochs`` and ``seed`` per member.
    """
    from stllr_engine.experiment import DTYPES, build_network, load_data

    configs = list(configs)
    if not configs:
        raise StllrError("run_pack needs at least one experiment")
    ref = configs[0]
    key = (pack_key(ref.network.to_dict(), ref.training), ref.data.to_dict(), ref.runtime.to_dict())
    for c in configs[1:]:
        if (pack_key(c.network.to_dict(), c.training), c.data.to_dict(), c.runtime.to_dict()) != key:
            raise StllrError("the experiments of a pack must share network (but its seed), data and runtime "
                             "settings, and every training setting that is not per member")
    device = resolve_device(ref.training.device)
    ref.runtime.apply(device)
    dirs = list(checkpoint_dirs) if checkpoint_dirs is not None else [None] * len(configs)
    paths = [os.path.join(os.fspath(d), "checkpoint.pt") if d is not None else None for d in dirs]
    loaders = [load_data(c) for c in configs]
    nets = [build_network(c.network).to(dtype=DTYPES[c.runtime.dtype]) for c in configs]
    it = fit_pack(nets, [c.training for c in configs], [ld[0] for ld in loaders], [ld[1] for ld in loaders],
                  [ld[2] for ld in loaders], paths, resume=resume, extras=[{"experiment": c.to_dict()} for c in configs])
    for metrics in it:
        for c, m in zip(configs, metrics):
            if m is not None:
                m["epochs"] = c.training.epochs
                m["seed"] = c.seed
        yield metrics
