"""Floors per task: what a report compares both learning rules against.

Two floors, measured on exactly the split the runs use (:func:`~stllr_engine.experiment.load_data`
of the same config and seed):

* **chance** — always predicting the most frequent training class, scored on test
  (``uniform_chance`` = 1/num_classes is reported too);
* **linear read-out** — multinomial logistic regression on the input frames of a sample,
  flattened (``T x input features``), standardised with the training split's mean and
  standard deviation. The L2 penalty is chosen from :data:`L2_GRID` by validation
  accuracy (train on train, pick on val, report the picked model's test accuracy; ties
  go to the lower validation loss; with ``val_fraction = 0`` it is picked on train, and
  the result says so).

A rule whose test accuracy is not above the linear read-out does no better than a
logistic regression on the raw frames; one near chance has failed outright.

A second, cheaper read-out on spike *counts* (each input feature summed over time) is
reported beside it: on a timing task it should sit at chance while the frames read-out
does not, which shows the task needs time.

Training is full-batch L-BFGS (float32, one thread) when the frames of all three splits
fit in :data:`FULL_BATCH_BYTES`; otherwise every L2 value is trained at once by minibatch Adam
streaming through the loaders for a fixed number of epochs (on ``runtime.threads``
threads). Both are deterministic given the seed (zero initialisation; the training
loader's shuffle is seeded).

>>> from stllr_engine.experiment import ExperimentConfig
>>> cfg = ExperimentConfig.for_dataset("synthetic_temporal", {"T": 12, "channels": 8,
...     "samples_per_class": 24}, network={"kind": "mlp", "width": 8}, seed=1)
>>> f = measure_floors(cfg)
>>> f["uniform_chance"], f["features"]
(0.25, 'input frames flattened (T x C = 12 x 8 = 96)')
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

__all__ = ["measure_floors", "fit_linear_readout", "fit_linear_readout_streaming",
           "write_floors", "read_floors", "L2_GRID", "FULL_BATCH_BYTES", "FLOORS_FILE"]

FLOORS_FILE = "floors.json"
L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FULL_BATCH_BYTES = 200 * 2**20  # float32 frames of train + val + test (peak memory about 4x)
LBFGS_MAX_ITER = 200
STREAM_EPOCHS = 10
STREAM_LR = 1e-3

Pair = tuple[torch.Tensor, torch.Tensor]


# -- features ------------------------------------------------------------------------------


def frames_features(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, ...]`` frames -> ``[B, T * prod(...)]`` (time-major, as the runs see them)."""
    return x.reshape(len(x), -1)


def count_features(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, ...]`` frames -> per-input spike counts ``[B, prod(...)]`` (time summed out)."""
    return x.sum(1).reshape(len(x), -1)


# -- the fit -------------------------------------------------------------------------------


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch on ``count`` threads (``None``: as it is) inside the block, restored afterwards."""
    before = torch.get_num_threads()
    change = count is not None and count != before
    if change:
        torch.set_num_threads(count)  # type: ignore[arg-type]
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def _one_thread() -> contextlib.AbstractContextManager[None]:
    """One thread for the small full-batch fits: faster than several where cores are shared
    (OpenMP waits), and float sums that do not depend on the machine's thread count."""
    return _threads(1)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean()) if len(y) else float("nan")


def _pick(grid: Sequence[float], scores: list[tuple[float, float]]) -> int:
    """Index of the best (accuracy, -loss); ties go to the larger penalty (the simpler model)."""
    best = 0
    for i in range(1, len(grid)):
        a, la = scores[i]
        b, lb = scores[best]
        if a > b or (a == b and (la < lb or (la == lb and grid[i] > grid[best]))):
            best = i
    return best


def fit_linear_readout(train_xy: Pair, val_xy: Pair | None, test_xy: Pair | None, *,
                       num_classes: int | None = None, l2_grid: Sequence[float] = L2_GRID,
                       max_iter: int = LBFGS_MAX_ITER, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Multinomial logistic regression on feature tensors, full-batch L-BFGS.

    Args:
        train_xy, val_xy, test_xy: ``(features [N, F], labels [N])``; ``val_xy`` may be
            ``None`` (the penalty is then picked on train), ``test_xy`` too.
        num_classes: outputs of the read-out (default: largest label + 1 over the splits).
        l2_grid: penalties tried; the objective is mean cross-entropy
            ``+ l2 / 2 * ||W||^2`` (the bias is not penalised) on standardised features.
        max_iter: L-BFGS iterations per penalty.

    Returns:
        ``{"train_accuracy", "val_accuracy", "test_accuracy", "l2", "selected_on",
        "grid": [{"l2", "train_accuracy", "val_accuracy"}...]}``; accuracies of an absent
        split are ``None``.
    """
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    splits = {"train": train_xy, "val": val_xy, "test": test_xy}
    xs = {k: v[0].reshape(len(v[0]), -1).to(dtype) for k, v in splits.items() if v is not None}
    ys = {k: v[1].to(torch.int64) for k, v in splits.items() if v is not None}
    if num_classes is None:
        num_classes = int(max(int(y.max()) for y in ys.values() if len(y))) + 1
    mean, std = _standardiser(xs["train"])
    # A feature constant on train stays at weight 0 (zero start, zero gradient): drop it.
    keep = (xs["train"] != xs["train"][:1]).any(0) if len(xs["train"]) else torch.zeros(0, dtype=torch.bool)
    xs = {k: (x[:, keep] - mean[keep]) / std[keep] for k, x in xs.items()}
    x_tr, y_tr = xs["train"], ys["train"]
    x_tr_t = x_tr.T.contiguous()  # the gradient's product, without a strided transpose
    n = len(y_tr)
    rows = torch.arange(n)
    W = torch.zeros(x_tr.shape[1], num_classes, dtype=dtype)
    b = torch.zeros(num_classes, dtype=dtype)
    select = "val" if "val" in xs and len(ys["val"]) else "train"
    fits = []
    with torch.no_grad(), _one_thread():
        # Largest penalty first: each fit starts from the previous (smoother) solution.
        for l2 in sorted(l2_grid, reverse=True):
            opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                                    tolerance_change=1e-12, line_search_fn="strong_wolfe")

            def closure(l2: float = float(l2)) -> torch.Tensor:
                # mean cross-entropy + l2/2 ||W||^2 and its exact gradient, by hand (no autograd)
                z = x_tr @ W + b
                lse = torch.logsumexp(z, 1)
                loss = (lse - z[rows, y_tr]).mean() + 0.5 * l2 * (W * W).sum()
                g = torch.exp(z - lse[:, None])
                g[rows, y_tr] -= 1.0
                g /= n
                W.grad = torch.addmm(W, x_tr_t, g, beta=l2)
                b.grad = g.sum(0)
                return loss

            opt.step(closure)
            logits = {k: x @ W + b for k, x in xs.items()}
            out = {f"{k}_accuracy": _accuracy(logits[k], ys[k]) for k in logits}
            sel_loss = float(torch.nn.functional.cross_entropy(logits[select], ys[select]))
            fits.append((float(l2), out, sel_loss))
    grid = [f[0] for f in fits]
    best = _pick(grid, [(f[1][f"{select}_accuracy"], f[2]) for f in fits])
    chosen = fits[best][1]
    return {
        "train_accuracy": chosen["train_accuracy"],
        "val_accuracy": chosen.get("val_accuracy"),
        "test_accuracy": chosen.get("test_accuracy"),
        "l2": grid[best],
        "selected_on": select,
        "grid": [{"l2": l2, "train_accuracy": o["train_accuracy"], "val_accuracy": o.get("val_accuracy")}
                 for l2, o, _ in sorted(fits, key=lambda f: f[0])],
    }


def fit_linear_readout_streaming(train: DataLoader, val: DataLoader | None, test: DataLoader | None, *,
                                 num_classes: int,
                                 features: Callable[[torch.Tensor], torch.Tensor] = frames_features,
                                 l2_grid: Sequence[float] = L2_GRID, epochs: int = STREAM_EPOCHS,
                                 lr: float = STREAM_LR) -> dict[str, Any]:
    """Like :func:`fit_linear_readout`, streaming batches ``(frames, labels)`` from loaders.

    One pass over ``train`` gives the standardisation; then every penalty of ``l2_grid``
    is trained at once (independent weights, one matrix product per batch) by Adam for
    ``epochs`` epochs in the loader's order, from zero; float32. Memory: one batch plus
    ``features x classes x len(l2_grid)`` weights.
    """
    return _fit_streaming(train, val, test, num_classes=num_classes, features=[features], l2_grid=l2_grid,
                          epochs=epochs, lr=lr)[0]


class _StreamModel:
    """The read-outs of every penalty on one feature map, trained together."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor, std: torch.Tensor,
                 l2_grid: Sequence[float], num_classes: int, lr: float) -> None:
        dtype = torch.float32
        self.fn, self.G, self.K = fn, len(l2_grid), num_classes
        self.mean, self.std = mean.to(dtype), std.to(dtype)
        self.W = torch.zeros(len(mean), self.G * self.K, dtype=dtype, requires_grad=True)
        self.b = torch.zeros(self.G * self.K, dtype=dtype, requires_grad=True)
        self.l2 = torch.tensor([float(v) for v in l2_grid], dtype=dtype).repeat_interleave(self.K)
        self.opt = torch.optim.Adam([self.W, self.b], lr=lr)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # [B, G, K]
        z = ((self.fn(x).to(self.W.dtype) - self.mean) / self.std) @ self.W + self.b
        return z.reshape(len(x), self.G, self.K)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(self.logits(x).reshape(-1, self.K), y.repeat_interleave(self.G),
                                               reduction="sum")
        # Each model's loss is its mean cross-entropy + l2/2 ||W||^2; the sum over models
        # decouples and Adam is per parameter, so each trains as if alone.
        loss = ce / len(y) + 0.5 * (self.l2 * (self.W * self.W).sum(0)).sum()
        loss.backward()
        self.opt.step()


def _fit_streaming(train: DataLoader, val: DataLoader | None, test: DataLoader | None, *, num_classes: int,
                   features: Sequence[Callable[[torch.Tensor], torch.Tensor]], l2_grid: Sequence[float],
                   epochs: int, lr: float) -> list[dict[str, Any]]:
    """:func:`fit_linear_readout_streaming` for several feature maps, sharing every pass."""
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    sums: list[list[torch.Tensor]] = []
    n = 0
    for x, _ in train:
        for i, fn in enumerate(features):
            f = fn(x).to(torch.float64)
            if len(sums) <= i:
                sums.append([torch.zeros(f.shape[1], dtype=torch.float64)] * 2)
            sums[i] = [sums[i][0] + f.sum(0), sums[i][1] + (f * f).sum(0)]
        n += len(x)
    if not n:
        raise ValueError("the training loader is empty")
    models = []
    for (total, total_sq), fn in zip(sums, features):
        mean = total / n
        std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
        models.append(_StreamModel(fn, mean, torch.where(std > 1e-8, std, torch.ones_like(std)), l2_grid,
                                   num_classes, lr))
    for _ in range(epochs):
        for x, y in train:
            for model in models:
                model.step(x, y)

    G = len(l2_grid)

    def evaluate(loader: DataLoader | None) -> list[tuple[list[float], list[float]]] | None:
        if loader is None:
            return None
        correct = [torch.zeros(G, dtype=torch.float64) for _ in models]
        loss = [torch.zeros(G, dtype=torch.float64) for _ in models]
        count = 0
        with torch.no_grad():
            for x, y in loader:
                for m, model in enumerate(models):
                    z = model.logits(x)
                    correct[m] += (z.argmax(2) == y[:, None]).sum(0).double()
                    loss[m] += torch.nn.functional.cross_entropy(
                        z.permute(0, 2, 1), y[:, None].expand(-1, G), reduction="none").sum(0).double()
                count += len(y)
        if not count:
            return None
        return [((c / count).tolist(), (v / count).tolist()) for c, v in zip(correct, loss)]

    scores = {"train": evaluate(train), "val": evaluate(val), "test": evaluate(test)}
    select = "val" if scores["val"] is not None else "train"
    grid = [float(v) for v in l2_grid]
    results = []
    for m in range(len(models)):
        sel = scores[select]
        assert sel is not None
        best = _pick(grid, list(zip(sel[m][0], sel[m][1])))

        def acc(split: str, i: int) -> float | None:
            s = scores[split]
            return None if s is None else float(s[m][0][i])

        results.append({
            "train_accuracy": acc("train", best),
            "val_accuracy": acc("val", best),
            "test_accuracy": acc("test", best),
            "l2": grid[best],
            "selected_on": select,
            "grid": [{"l2": grid[i], "train_accuracy": acc("train", i), "val_accuracy": acc("val", i)}
                     for i in sorted(range(G), key=grid.__getitem__)],
        })
    return results


# -- per task ------------------------------------------------------------------------------


def _labels(loader: DataLoader) -> np.ndarray:
    """A loader's labels without reading its frames (falls back to iterating it)."""
    ds = loader.dataset
    if isinstance(ds, Subset) and hasattr(ds.dataset, "labels"):
        return np.asarray(ds.dataset.labels)[np.asarray(ds.indices, dtype=np.int64)]
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels)
    return torch.cat([y for _, y in loader]).numpy()


def _gather(loader: DataLoader | None) -> Pair | None:
    if loader is None:
        return None
    xs, ys = [], []
    for x, y in loader:
        xs.append(x.clone())
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def measure_floors(config: Any, *, seed: int | None = None, max_bytes: int = FULL_BATCH_BYTES,
                   l2_grid: Sequence[float] = L2_GRID, counts: bool = True) -> dict[str, Any]:
    """Chance and the linear read-out of ``config``'s task, on the split its runs use.

    Args:
        config: an :class:`~stllr_engine.experiment.ExperimentConfig`; its data settings
            and seed fix the split (the network and training settings are not used).
        seed: use this seed instead of ``config.seed`` (the split of that seed's runs).
        max_bytes: full-batch L-BFGS when the float32 frames of all splits fit in this
            (the fit's peak memory is about four times it), else streaming minibatch Adam.
        l2_grid: penalties tried for the read-outs.
        counts: also fit the read-out on per-input spike counts (``count_readout``).

    Returns:
        a JSON-able dict: ``dataset``, ``options`` (every dataset parameter), ``seed``,
        ``val_fraction``, ``n_train``/``n_val``/``n_test``, ``num_classes``, ``chance``
        (majority training class, test accuracy), ``majority_class``, ``uniform_chance``,
        ``linear_readout`` (``train_accuracy``, ``val_accuracy``, ``test_accuracy``,
        ``l2``, ``selected_on``, ``grid``), ``count_readout`` (same keys, when
        ``counts``), ``features``, ``method``, ``note`` (or ``None``) and ``time_s``.
    """
    from stllr_engine.experiment import load_data

    start = time.perf_counter()
    if seed is not None and seed != config.seed:
        config = config.replace(seed=seed)
    train, val, test = load_data(config)
    base: Any = train.dataset.dataset if isinstance(train.dataset, Subset) else train.dataset
    info = base.info
    num_classes = int(info.num_classes)
    y_train, y_test = _labels(train), _labels(test)
    n_val = 0 if val is None else len(_labels(val))
    n_train, n_test = len(y_train), len(y_test)

    counts_per_class = np.bincount(y_train, minlength=num_classes)
    majority = int(np.argmax(counts_per_class))  # ties: the smallest label
    chance = float(np.mean(y_test == majority)) if n_test else float("nan")

    shape = tuple(int(s) for s in info.input_shape)
    per_step = int(math.prod(shape))
    n_features = int(info.T) * per_step
    full_batch = (n_train + n_val + n_test) * n_features * 4 <= max_bytes
    fns = {"linear_readout": frames_features, **({"count_readout": count_features} if counts else {})}
    selected = "validation" if n_val else "training"
    if full_batch:
        data = {"train": _gather(train), "val": _gather(val), "test": _gather(test)}
        readouts = {}
        for key, fn in fns.items():
            xy = {k: None if v is None else (fn(v[0]), v[1]) for k, v in data.items()}
            assert xy["train"] is not None
            readouts[key] = fit_linear_readout(xy["train"], xy["val"], xy["test"], num_classes=num_classes,
                                               l2_grid=l2_grid)
        method = (f"multinomial logistic regression on standardised features, full-batch L-BFGS (float32, one "
                  f"thread, <= {LBFGS_MAX_ITER} iterations), L2 penalty from {list(l2_grid)} by {selected} accuracy")
    else:
        with _threads(config.runtime.threads):
            fitted = _fit_streaming(train, val, test, num_classes=num_classes, features=list(fns.values()),
                                    l2_grid=l2_grid, epochs=STREAM_EPOCHS, lr=STREAM_LR)
        readouts = dict(zip(fns, fitted))
        method = (f"multinomial logistic regression on standardised features, minibatch Adam (lr {STREAM_LR}, "
                  f"{STREAM_EPOCHS} epochs, batch {config.data.batch_size}, float32), L2 penalty from "
                  f"{list(l2_grid)} by {selected} accuracy")
    dims = " x ".join(str(s) for s in shape)
    step = f"C = {info.T} x {dims}" if len(shape) == 1 else f"({dims}) = {info.T} x {per_step}"
    out = {
        "dataset": config.data.dataset,
        "options": dict(info.params) if info.params else dict(config.data.options),
        "seed": int(config.seed),
        "val_fraction": float(config.data.val_fraction),
        "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "num_classes": num_classes,
        "chance": chance,
        "majority_class": majority,
        "uniform_chance": 1.0 / num_classes,
        **readouts,
        "features": f"input frames flattened (T x {step} = {n_features})",
        "method": method,
        "note": None if n_val else "val_fraction is 0: the L2 penalty was picked on training accuracy",
        "time_s": time.perf_counter() - start,
    }
    if counts:
        out["count_features"] = f"spike counts per input (time summed out, {per_step})"
    return _json_safe(out)


# -- the file ------------------------------------------------------------------------------


def write_floors(folder: str | os.PathLike[str], floors: dict[str, Any]) -> str:
    """Write ``floors`` to ``<folder>/floors.json`` atomically; returns the path."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FLOORS_FILE)
    text = json.dumps(floors, indent=1, sort_keys=True, allow_nan=True)
    fd, tmp = tempfile.mkstemp(prefix=".floors.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # readable like the results table (mkstemp makes it owner-only)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_floors(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``<folder>/floors.json`` as written by :func:`write_floors`; ``None`` when absent or damaged."""
    try:
        with open(os.path.join(os.fspath(folder), FLOORS_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "chance" not in data or "linear_readout" not in data:
        return None
    return data
