"""One experiment = one config = one call: what a sweep trial runs.

An :class:`ExperimentConfig` holds everything a run depends on — the data (dataset, its
options, batch size, loader workers, validation fraction), the network
(:class:`~stllr_engine.network.NetworkSpec`), the training
(:class:`~stllr_engine.train.TrainConfig`), trial-level runtime controls
(:class:`RuntimeConfig`) and one ``seed`` — and round-trips through ``to_dict`` /
``from_dict``, JSON and YAML. :func:`run_experiment` loads the data, holds out a
validation split from the training set, builds the network and trains it, yielding one
metrics dict per epoch. Studies select on ``val_accuracy`` and report ``test_accuracy``.

The one seed derives everything random: the network's initialisation and DFA matrices
(``network.seed``), torch's RNG during training (``training.seed``), the shuffling
generator and the validation split. Seeds 1 and 2 give different runs; the same seed
gives bit-identical CPU runs.

>>> cfg = ExperimentConfig.for_dataset("digits", {"T": 8},
...         network={"kind": "mlp", "width": 32}, training={"epochs": 1}, seed=3)
>>> cfg.network.input_shape, cfg.network.num_classes, cfg.network.seed, cfg.training.seed
((64,), 10, 3, 3)
>>> ExperimentConfig.from_json(cfg.to_json()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Subset

from stllr_engine._checks import choice, integer, known_fields, real
from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec, build_network
from stllr_engine.train import TrainConfig, fit, resolve_device, resume_source

__all__ = ["DataConfig", "RuntimeConfig", "ExperimentConfig", "run_experiment", "load_data",
           "RESUME_EXEMPT"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Settings that do not change results: a run may resume with other values for these.
RESUME_EXEMPT = (
    "data.num_workers", "data.eval_batch_size", "data.data_dir", "data.cache_dir", "data.max_cache_bytes",
    "runtime.threads", "runtime.gpu_memory_fraction", "training.device", "training.measure_costs", "training.fused",
)


def _plain(value: Any) -> Any:
    """Mappings and sequences as plain dicts and lists (YAML/JSON-safe)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: How a validation split may be held out of the training split (:attr:`DataConfig.val_split`).
VAL_SPLITS = ("random", "speaker", "block")


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is batched.

    Attributes:
        dataset: a name of :data:`stllr_engine.datasets.DATASETS`.
        data_dir, cache_dir: folders for the event datasets (see ``load_dataset``).
        options: dataset parameters (``T``, ``bin_ms``, ...), see ``DATASETS[name].defaults``.
        batch_size: training batch size.
        eval_batch_size: batch size for validation and test (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        val_fraction: share of the training set held out for validation (fixed by the
            seed); 0 disables validation.
        val_split: how validation is held out: ``"random"`` samples, or ``"speaker"``: whole
            speakers (datasets that record them: ``shd``, ``spoken_digits``), so that, like the
            test split, validation hears no voice that training does; about ``val_fraction``
            of the samples; or ``"block"``: whole stretches of a recording (``mvsec``: blocks of
            100 consecutive frame pairs, whose neighbours are near-duplicates), so that
            validation never sees a pair next to one training saw (but at a block's edges).
        max_cache_bytes: limit on a new frame-cache entry (``load_dataset``'s; ``None``:
            ``STLLR_MAX_CACHE_BYTES`` or 8 GiB). Does not change results.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    cache_dir: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    val_fraction: float = 0.1
    val_split: str = "random"
    max_cache_bytes: int | str | None = None

    def __post_init__(self) -> None:
        w = "data"
        from stllr_engine.datasets import DATASETS

        if self.dataset not in DATASETS:
            raise StllrError(f"{w}: dataset={self.dataset!r} is unknown: use one of {', '.join(DATASETS)}")
        for key in ("data_dir", "cache_dir"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise StllrError(f"{w}: {key}={value!r} must be a folder path")
            if value is not None:
                object.__setattr__(self, key, os.fspath(value))
        if not isinstance(self.options, Mapping):
            raise StllrError(f"{w}: options must map dataset parameters to values, e.g. {{T: 16}}")
        unknown = sorted(set(self.options) - set(DATASETS[self.dataset].defaults))
        if unknown:
            raise StllrError(f"{w}: dataset {self.dataset!r} has no option {unknown[0]!r}: valid options are "
                             f"{', '.join(DATASETS[self.dataset].defaults)}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        integer(w, "batch_size", self.batch_size, 1)
        if self.eval_batch_size is not None:
            integer(w, "eval_batch_size", self.eval_batch_size, 1)
        integer(w, "num_workers", self.num_workers, 0)
        real(w, "val_fraction", self.val_fraction, 0.0, 0.9)
        if self.val_split not in VAL_SPLITS:
            raise StllrError(f"{w}: val_split={self.val_split!r} is not a way to hold out validation: "
                             f"use one of {', '.join(VAL_SPLITS)}")

    @property
    def T(self) -> int | None:
        """Time steps of a sample, from the options or the dataset's default."""
        from stllr_engine.datasets import DATASETS

        value = self.options.get("T", DATASETS[self.dataset].defaults.get("T"))
        return int(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["options"] = _plain(self.options)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        return cls(**known_fields("data", cls, dict(d)))


@dataclass(frozen=True)
class RuntimeConfig:
    """Trial-level controls.

    Attributes:
        threads: torch CPU threads (``torch.set_num_threads``); ``None`` leaves torch's default.
            A sweep sets it to the trial's CPUs (two OpenMP runtimes in one process —
            torch's and scikit-learn's — slow each other badly when oversubscribed).
        deterministic: ``torch.use_deterministic_algorithms(True)`` (GPU: bit-repeatable runs).
        dtype: ``"float32"`` or ``"float64"`` for parameters and frames.
        gpu_memory_fraction: cap on the CUDA memory this process may use (0, 1].

    ``threads`` and ``gpu_memory_fraction`` do not change results (a run may resume with
    other values); ``deterministic`` and ``dtype`` do.
    """

    threads: int | None = None
    deterministic: bool = False
    dtype: str = "float32"
    gpu_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        w = "runtime"
        if self.threads is not None:
            integer(w, "threads", self.threads, 1)
        if not isinstance(self.deterministic, bool):
            raise StllrError(f"{w}: deterministic={self.deterministic!r} must be true or false")
        choice(w, "dtype", self.dtype, tuple(DTYPES))
        if self.gpu_memory_fraction is not None:
            real(w, "gpu_memory_fraction", self.gpu_memory_fraction, 0.0, 1.0, low_open=True)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RuntimeConfig":
        return cls(**known_fields("runtime", cls, dict(d)))

    def apply(self, device: torch.device) -> None:
        """Set the process-wide controls (threads, determinism, GPU memory cap) and keep freed
        CPU memory for reuse (:func:`stllr_engine.allocator.keep_freed_memory`)."""
        from stllr_engine.allocator import keep_freed_memory

        keep_freed_memory()
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        # only on a change: the call imports torch's compiler stack (~2 s in a fresh process)
        if (torch.are_deterministic_algorithms_enabled() != self.deterministic
                or torch.is_deterministic_algorithms_warn_only_enabled()):
            torch.use_deterministic_algorithms(self.deterministic, warn_only=False)
        if self.gpu_memory_fraction is not None and device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(self.gpu_memory_fraction, device)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run depends on; see the module docstring.

    ``network.seed`` and ``training.seed`` are set from ``seed`` (one seed derives
    everything random); the network's ``input_shape`` and ``num_classes`` must be the
    dataset's (:meth:`for_dataset` fills them in).
    """

    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    training: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        for key, cls in (("data", DataConfig), ("network", NetworkSpec), ("training", TrainConfig),
                         ("runtime", RuntimeConfig)):
            if not isinstance(getattr(self, key), cls):
                raise StllrError(f"experiment: {key} must be a {cls.__name__} (or a mapping of its fields in from_dict)")
        integer("experiment", "seed", self.seed, 0)
        if self.seed >= 2**31:
            raise StllrError(f"experiment: seed={self.seed} must be below 2**31")
        if self.network.seed != self.seed:
            object.__setattr__(self, "network", self.network.replace(seed=self.seed))
        if self.training.seed != self.seed:
            object.__setattr__(self, "training", dataclasses.replace(self.training, seed=self.seed))
        T = self.data.T
        if self.training.rule == "stllr" and T is not None and self.training.stllr.learn_steps > T:
            raise StllrError(f"experiment: training.stllr.learn_steps={self.training.stllr.learn_steps} exceeds the "
                             f"dataset's T={T}: use learn_steps <= T (learn_steps = T learns at every step)")
        window = self.training.loss_steps
        if self.training.rule == "bptt" and T is not None and window is not None and window > T:
            raise StllrError(f"experiment: training.loss='per_step' averages over training.stllr.learn_steps={window} "
                             f"steps, more than the dataset's T={T}: use learn_steps <= T")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def for_dataset(cls, dataset: str, options: Mapping[str, Any] | None = None, *,
                    network: NetworkSpec | Mapping[str, Any] | None = None,
                    training: TrainConfig | Mapping[str, Any] | None = None,
                    data: Mapping[str, Any] | None = None,
                    runtime: RuntimeConfig | Mapping[str, Any] | None = None,
                    seed: int = 0) -> "ExperimentConfig":
        """A config whose network takes ``input_shape`` and ``num_classes`` from the dataset.

        Reads the dataset's description (embedded datasets are generated; event datasets
        read their frame cache), so a study file needs no hand-written shapes.
        """
        data_cfg = DataConfig.from_dict({**(data or {}), "dataset": dataset, "options": dict(options or {})})
        info = dataset_info(data_cfg)
        net_d = network.to_dict() if isinstance(network, NetworkSpec) else dict(network or {})
        net_d.update(input_shape=list(info.input_shape), num_classes=info.num_classes)
        train = training if isinstance(training, TrainConfig) else TrainConfig.from_dict(dict(training or {}))
        rt = runtime if isinstance(runtime, RuntimeConfig) else RuntimeConfig.from_dict(dict(runtime or {}))
        return cls(data_cfg, NetworkSpec.from_dict(net_d), train, rt, seed)

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data.to_dict(), "network": self.network.to_dict(),
                "training": self.training.to_dict(), "runtime": self.runtime.to_dict(), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        d = known_fields("experiment", cls, dict(d) if isinstance(d, Mapping) else d)
        return cls(
            data=DataConfig.from_dict(d.get("data", {})),
            network=NetworkSpec.from_dict(dict(d.get("network", {}))),
            training=TrainConfig.from_dict(dict(d.get("training", {}))),
            runtime=RuntimeConfig.from_dict(d.get("runtime", {})),
            seed=d.get("seed", 0),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExperimentConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StllrError(f"experiment config is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(d)

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, text: str) -> "ExperimentConfig":
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise StllrError(f"experiment config is not valid YAML: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(d if d is not None else {})

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def result_keys(self) -> dict[str, Any]:
        """The flattened settings that change results (the resume check compares these)."""
        flat = _flatten(self.to_dict())
        flat["training.loss"] = self.training.loss_kind  # unset means the rule's own objective
        return {k: v for k, v in flat.items() if k not in RESUME_EXEMPT}

    def derived_seed(self, purpose: str) -> int:
        """A seed for one purpose (``"split"``, ``"shuffle"``), derived from ``seed``."""
        return (self.seed * 1_000_003 + zlib.crc32(purpose.encode())) % (2**63)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k not in ("options", "layer_factors"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# -- data --------------------------------------------------------------------------------


def _load(data: DataConfig) -> tuple[Any, Any]:
    from stllr_engine.datasets import load_dataset

    return load_dataset(data.dataset, data_dir=data.data_dir, cache_dir=data.cache_dir,
                        max_cache_bytes=data.max_cache_bytes, **dict(data.options))


_INFO_CACHE: dict[str, Any] = {}


def dataset_info(data: DataConfig) -> Any:
    """The training split's :class:`~stllr_engine.datasets.DatasetInfo` (cached per process:
    a sweep's driver builds many configs of one dataset)."""
    key = json.dumps([data.dataset, data.data_dir, data.cache_dir, _plain(data.options)], sort_keys=True, default=str)
    if key not in _INFO_CACHE:
        _INFO_CACHE[key] = _load(data)[0].info
    return _INFO_CACHE[key]


def load_data(config: ExperimentConfig) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """``(train, val, test)`` loaders; val is held out of the training split (seeded).

    Loaders batch with :meth:`FrameDataset.collate` (zero-copy blocks); the training
    loader shuffles with its own generator seeded from the experiment seed.
    """
    from stllr_engine.datasets import FrameDataset

    d = config.data
    train, test = _load(d)
    info = train.info
    net = config.network
    if tuple(info.input_shape) != tuple(net.input_shape) or info.num_classes != net.num_classes:
        raise StllrError(
            f"the network expects input_shape={list(net.input_shape)} and num_classes={net.num_classes} but "
            f"dataset {d.dataset!r} gives {list(info.input_shape)} and {info.num_classes}: build the config with "
            "ExperimentConfig.for_dataset (or set network.input_shape/num_classes to the dataset's)"
        )
    flow_data = getattr(info, "task", "classification") == "flow"
    if flow_data != (net.kind == "flownet"):
        raise StllrError(f"network kind {net.kind!r} on dataset {d.dataset!r}: " + (
            "an optical-flow dataset needs network kind 'flownet'" if flow_data else
            "a flownet predicts optical flow and needs a flow dataset (flow_synthetic, mvsec)"))
    val_idx, train_idx = split_indices(config, train)
    n_val = len(val_idx)
    eval_bs = d.eval_batch_size or d.batch_size
    common: dict[str, Any] = {"collate_fn": getattr(type(train), "collate", FrameDataset.collate),
                              "num_workers": d.num_workers,
                              "persistent_workers": False}
    shuffle_gen = torch.Generator().manual_seed(config.derived_seed("shuffle"))
    train_loader = DataLoader(Subset(train, train_idx) if n_val else train, batch_size=d.batch_size,
                              shuffle=True, generator=shuffle_gen, **common)
    val_loader = DataLoader(Subset(train, val_idx), batch_size=eval_bs, **common) if n_val else None
    test_loader = DataLoader(test, batch_size=eval_bs, **common)
    return train_loader, val_loader, test_loader


def split_indices(config: ExperimentConfig, train: Any) -> tuple[list[int], list[int]]:
    """``(val_idx, train_idx)`` into the training split ``train``: the validation samples the
    seed holds out (``data.val_fraction``, ``data.val_split``), in order."""
    d = config.data
    n = len(train)
    n_val = int(round(d.val_fraction * n))
    if d.val_fraction > 0 and not 1 <= n_val < n:
        raise StllrError(f"data: val_fraction={d.val_fraction} of {n} training samples leaves an empty split: "
                         "use a fraction that keeps at least one sample on each side")
    g = torch.Generator().manual_seed(config.derived_seed("split"))
    if d.val_split in ("speaker", "block") and n_val:
        return _speaker_split(train, d, n_val, g)
    order = torch.randperm(n, generator=g).tolist()
    return sorted(order[:n_val]), sorted(order[n_val:])


def split_sizes(config: ExperimentConfig) -> tuple[int, int]:
    """``(train, validation)`` sample counts of this config's split (what a pack's members must share)."""
    val_idx, train_idx = split_indices(config, _load(config.data)[0])
    return len(train_idx), len(val_idx)


def _speaker_split(train: Any, d: DataConfig, n_val: int, g: torch.Generator) -> tuple[list[int], list[int]]:
    """Whole speakers, drawn in a seeded order until they hold at least ``n_val`` samples
    (and at least one speaker stays in training): ``(val_idx, train_idx)``. Speakers with
    unequal sample counts give seeds splits of unequal sizes (a pack groups runs by them)."""
    import numpy as np

    flow = getattr(train.info, "task", "classification") == "flow"
    groups = getattr(train, "groups", None) if flow == (d.val_split == "block") else None
    if groups is None:
        raise StllrError(f"data: val_split={d.val_split!r} needs a dataset that records "
                         + ("its speakers (shd, spoken_digits)" if d.val_split == "speaker" else
                            "stretches of its recordings (mvsec)")
                         + f"; {d.dataset!r} does not: use val_split: random")
    speakers = sorted(set(groups.tolist()), key=str)
    if len(speakers) < 2:
        raise StllrError(f"data: val_split={d.val_split!r} needs at least 2 "
                         f"{'speakers' if d.val_split == 'speaker' else 'blocks'} in the training split, "
                         f"{d.dataset!r} has {len(speakers)}: use val_split: random")
    order = [speakers[i] for i in torch.randperm(len(speakers), generator=g).tolist()]
    held: set[Any] = set()
    count = 0
    for spk in order[:-1]:  # the last one always trains
        if count >= n_val:
            break
        held.add(spk)
        count += int(np.count_nonzero(groups == spk))
    is_val = np.isin(groups, list(held))
    return np.flatnonzero(is_val).tolist(), np.flatnonzero(~is_val).tolist()


# -- the run -----------------------------------------------------------------------------


def run_experiment(config: ExperimentConfig, checkpoint_dir: str | os.PathLike[str] | None = None,
                   resume_from: str | os.PathLike[str] | None = None,
                   resume: bool = False) -> Iterator[dict[str, Any]]:
    """Run one experiment; yields the metrics of every epoch (see ``stllr_engine.train.fit``).

    Args:
        config: the experiment.
        checkpoint_dir: a checkpoint ``checkpoint.pt`` is written there (atomically) after
            every epoch, holding the full experiment config.
        resume_from: a checkpoint file or folder to continue from (e.g. one Ray restored
            to another place); the experiment must be the stored one, except for settings
            that do not change results (:data:`RESUME_EXEMPT`).
        resume: continue from ``checkpoint_dir``'s checkpoint (which must exist).

    Metrics add to ``fit``'s: ``val_accuracy``/``val_loss`` (when ``val_fraction`` > 0),
    ``epochs`` and ``seed``. A finished checkpoint yields its final metrics again.
    """
    checkpoint_path = os.path.join(os.fspath(checkpoint_dir), "checkpoint.pt") if checkpoint_dir is not None else None
    source = resume_source(checkpoint_path, resume_from, resume, what="checkpoint_dir")
    if source is not None:
        _check_experiment(source, config)

    device = resolve_device(config.training.device)
    config.runtime.apply(device)
    train_loader, val_loader, test_loader = load_data(config)
    net = build_network(config.network).to(dtype=DTYPES[config.runtime.dtype])
    metrics_iter = fit(net, train_loader, config.training, test_loader=test_loader, val_loader=val_loader,
                       checkpoint_path=checkpoint_path, resume_from=source,
                       extra={"experiment": config.to_dict()})
    for m in metrics_iter:
        m["epochs"] = config.training.epochs
        m["seed"] = config.seed
        yield m


def _check_experiment(path: str, config: ExperimentConfig) -> None:
    from stllr_engine.train import load_checkpoint

    ckpt = load_checkpoint(path)
    stored = ckpt.get("extra", {}).get("experiment")
    if stored is None:
        raise StllrError(f"checkpoint {path} holds no experiment config: it was not written by run_experiment")
    then = ExperimentConfig.from_dict(stored).result_keys()
    now = config.result_keys()
    changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    if changed:
        raise StllrError(f"checkpoint {path} belongs to another experiment ({', '.join(changed[:5])} differ): "
                         "resume with the stored config or start a new run")
