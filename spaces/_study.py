"""A validated study: what the runner asks of a study file.

:class:`StudySpec` is built by :func:`spaces.load_study` (which validates everything); it
turns an Optuna trial into a configuration (:meth:`StudySpec.suggest`), a configuration
into an :class:`~stllr_engine.experiment.ExperimentConfig` (:meth:`StudySpec.experiment`),
prices it with the engine's formulas before training (:meth:`StudySpec.price`,
:meth:`StudySpec.violations`), checks that a run fits a node's memory
(:meth:`StudySpec.memory_need`, :meth:`StudySpec.check_fits`), completes the parameters of a
single run (:meth:`StudySpec.params_for_run`) and builds the seeded sampler
(:meth:`StudySpec.make_sampler`).

Pricing builds no network and reads no data: the figures come from the network's spec
(:mod:`stllr_engine.shapes`) and the dataset's shapes from its parameters
(:func:`input_info`), so a configuration of width ``2e9`` or depth ``1500`` costs
microseconds to price, however absurd it is to train.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import optuna

from spaces._names import ARCH, ENGINE_NAMES, SECTIONS, closest
from spaces._params import Param
from spaces._yaml import dump_yaml, parse_scalar
from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec
from stllr_engine.shapes import memory_need_bytes, spec_formula_costs
from stllr_engine.stllr import STLLR_LOSSES, STLLRConfig

__all__ = ["StudySpec", "Objective", "Constraint", "SamplerSpec", "AskTellGridSampler"]


class Objective(NamedTuple):
    """A metric (a results column) and ``"maximize"`` or ``"minimize"``."""

    metric: str
    direction: str


@dataclass(frozen=True)
class Constraint:
    """``metric op value`` on a formula cost, checked before a configuration trains.

    Attributes:
        metric: a ``*_formula_per_sample`` results column.
        op: ``"<="`` or ``">="``.
        value: the limit (bytes, MACs or values per sample).
        text: the limit as the study file wrote it (``"8 MiB"``), for messages.
    """

    metric: str
    op: str
    value: float
    text: str

    def violated_by(self, figure: float) -> bool:
        return figure > self.value if self.op == "<=" else figure < self.value

    def slack(self, figure: float) -> float:
        """Optuna's convention: ``<= 0`` when satisfied."""
        return figure - self.value if self.op == "<=" else self.value - figure

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.text}"


class SamplerSpec(NamedTuple):
    """The sampler's name and its options (``seed`` always among them)."""

    name: str
    options: dict[str, Any]


class _UserAttrConstraints:
    """``constraints_func`` for Optuna samplers: the runner stores the values in the trial's
    user attributes (``"constraints"``, ``<= 0`` is feasible). A class, so it pickles."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, trial: Any) -> list[float]:
        return list(trial.user_attrs.get("constraints", [0.0] * self.k))


class AskTellGridSampler(optuna.samplers.GridSampler):
    """A ``GridSampler`` for ask-and-tell use (Ray's OptunaSearch, the study runner).

    Optuna's ``GridSampler.after_trial`` calls ``study.stop()`` once the grid is used up,
    which raises ``RuntimeError`` outside ``study.optimize`` -- i.e. on the ``tell`` of the
    last grid point. Here the study's budget (``budget.trials`` = the grid size) ends the
    search instead.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


_SAMPLERS = {
    "tpe": "TPESampler", "nsga2": "NSGAIISampler", "nsga3": "NSGAIIISampler", "gp": "GPSampler",
    "random": "RandomSampler", "grid": "GridSampler",
}
_CONSTRAINED = ("tpe", "nsga2", "nsga3", "gp")
_LAYER_KEY = re.compile(r"^layer(\d+)\.(\w+)$")
# The formula costs grow with these (never fall): the cheapest configuration takes their least value.
MONOTONE = ("width", "depth", "T", "learn_steps")
# Most combinations of the other categorical parameters tried when pricing a space's extremes.
MAX_COMBINATIONS = 64


class Reach(NamedTuple):
    """The least or greatest figure a space's configurations reach on one formula metric."""

    figure: float
    params: dict[str, Any]


@dataclass(eq=False)
class StudySpec:
    """A study file, validated. Build it with :func:`spaces.load_study`.

    Attributes mirror the file (see ``spaces/SCHEMA.md``); ``source`` is the file read.
    """

    name: str
    source: str
    description: str
    dataset: str
    dataset_options: dict[str, Any]
    data_dir: str | None
    cache_dir: str | None
    model_kind: str
    model_fixed: dict[str, Any]
    rules: list[str]
    search: dict[str, Param]
    per_layer: list[str]
    fixed: dict[str, dict[str, Any]]
    baseline_search: dict[str, Param]
    baseline_trials: int
    objectives: list[Objective]
    constraints: list[Constraint]
    trials: int
    epochs: int
    seeds: list[int]
    sampler: SamplerSpec
    scheduler: dict[str, Any] | None
    resources: dict[str, float]
    concurrency: int | None
    storage: str
    default_T: int | None = None
    baseline_losses: list[str] = dataclasses.field(default_factory=lambda: ["per_step"])
    stllr_losses: list[str] = dataclasses.field(default_factory=lambda: ["per_step"])
    patience: int | None = None

    def __post_init__(self) -> None:
        # the last few prices: the runner asks violations, constraint values and figures of one proposal
        self._prices: OrderedDict[tuple[Any, ...], dict[str, float]] = OrderedDict()

    # -- the file ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The study as a plain dict in the file's schema, every default written out."""
        return {
            "name": self.name,
            "description": self.description,
            "dataset": {"name": self.dataset, "options": dict(self.dataset_options),
                        "data_dir": self.data_dir, "cache_dir": self.cache_dir},
            "model": {"kind": self.model_kind, "fixed": dict(self.model_fixed)},
            "rules": list(self.rules),
            "search": {k: p.to_dict() for k, p in self.search.items()},
            "per_layer": list(self.per_layer),
            "fixed": {k: dict(v) for k, v in self.fixed.items()},
            # no bptt, no baseline: the validator refuses a baseline section then (the frozen file must load)
            "baseline": ({"search": {k: p.to_dict() for k, p in self.baseline_search.items()},
                          "trials": self.baseline_trials, "loss": list(self.baseline_losses),
                          "stllr_loss": list(self.stllr_losses)}
                         if "bptt" in self.rules else None),
            "objectives": [{"metric": o.metric, "direction": o.direction} for o in self.objectives],
            "constraints": [str(c) for c in self.constraints],
            "budget": {"trials": self.trials, "epochs": self.epochs, "seeds": list(self.seeds),
                       "patience": self.patience},
            "sampler": {"name": self.sampler.name, **self.sampler.options},
            "scheduler": None if self.scheduler is None else dict(self.scheduler),
            "resources": {**self.resources, "concurrency": self.concurrency},
            "storage": self.storage,
        }

    def to_yaml(self) -> str:
        """The frozen study file (``load_study`` reads it back to an equal spec)."""
        return (f"# study {self.name!r}, frozen from {self.source} with every default written out\n"
                + dump_yaml(self.to_dict()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StudySpec) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StudySpec({self.name!r}, source={self.source!r})"

    # -- configurations ----------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one S-TLLR configuration from an Optuna trial (define-by-run).

        The architecture comes first; per-layer factors (``layer{i}.<factor>``, ``i >= 1``;
        layer 0 takes the network-wide value) only when the network has more than one
        hidden layer. Fixed settings are not suggested: they come from the file.
        """
        params: dict[str, Any] = {}
        for name in sorted(self.search, key=lambda n: (n not in ARCH, ARCH.index(n) if n in ARCH else 0)):
            params[name] = self.search[name].suggest(trial)
        for i in range(1, self.hidden_layers(params)):
            for factor in self.per_layer:
                params[f"layer{i}.{factor}"] = self.search[factor].suggest(trial, f"layer{i}.{factor}")
        return params

    def suggest_baseline(self, trial: Any, arch: dict[str, Any] | None = None) -> dict[str, Any]:
        """One setting of the hyper-parameters both rules are tuned over (``baseline.search``)."""
        return {name: p.suggest(trial) for name, p in self.baseline_search.items()}

    def tuning_settings(self, arch_id: str) -> list[dict[str, Any]]:
        """The settings of ``baseline.search`` both rules get for one architecture (equal tuning).

        ``baseline.trials`` distinct settings drawn by a random sampler seeded from the
        study's sampler seed and the architecture: the same list for S-TLLR (at its chosen
        factors) and for BPTT (each objective), and again on a resume. Empty search: ``[{}]``.
        """
        if not self.baseline_search:
            return [{}]
        import zlib

        seed = (int(self.sampler.options.get("seed") or 0) * 1_000_003 + zlib.crc32(arch_id.encode())) % 2**31
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
            out: list[dict[str, Any]] = []
            for _ in range(50 * self.baseline_trials):
                values = self.suggest_baseline(study.ask())
                if values not in out:
                    out.append(values)
                if len(out) == self.baseline_trials:
                    break
        finally:
            optuna.logging.set_verbosity(verbosity)
        return out

    @property
    def measure(self) -> str:
        """What runs are ranked by (:data:`study.schema.MEASURES`): ``"accuracy"`` or, for flow
        networks, ``"aee"`` (lower is better)."""
        from study.schema import measure_of

        return measure_of(self.model_kind)

    @property
    def measure_columns(self) -> tuple[str, str, str]:
        """``(validation column, test column, direction)`` of :attr:`measure`."""
        from study.schema import MEASURES

        return MEASURES[self.measure]

    def hidden_layers(self, params: dict[str, Any]) -> int:
        """Spiking layers of the network a configuration builds (vgg: two per block)."""
        depth = int(params.get("depth", self.model_fixed.get("depth", NetworkSpec.depth)))
        return 2 * depth if self.model_kind in ("vgg", "flownet") else depth

    def arch(self, params: dict[str, Any]) -> dict[str, Any]:
        """The architecture key of a configuration: ``model``, ``width``, ``depth``, ``T``."""
        return {"model": self.model_kind,
                "width": int(params.get("width", self.model_fixed.get("width", NetworkSpec.width))),
                "depth": int(params.get("depth", self.model_fixed.get("depth", NetworkSpec.depth))),
                "T": int(params.get("T", self.default_T or 0))}

    def _sections(self, params: dict[str, Any], rule: str) -> dict[str, dict[str, Any]]:
        if rule not in ("stllr", "bptt"):
            raise StllrError(f"rule {rule!r}: use 'stllr' or 'bptt'")
        s: dict[str, dict[str, Any]] = {
            "network": {"kind": self.model_kind, **self.model_fixed},
            "stllr": dict(self.fixed.get("stllr", {})),
            "training": dict(self.fixed.get("training", {})),
            "data": dict(self.fixed.get("data", {})),
            "runtime": dict(self.fixed.get("runtime", {})),
            "dataset": dict(self.dataset_options),
        }
        layers: dict[int, dict[str, Any]] = {}
        for key, value in params.items():
            if key == "loss":  # the objective of an equal-tuning run (baseline.loss, baseline.stllr_loss)
                if rule == "stllr" and value not in STLLR_LOSSES:
                    raise StllrError(f"{self.source}: loss={value!r} is not an objective S-TLLR learns: use one of "
                                     f"{', '.join(STLLR_LOSSES)}")
                s["training"]["loss"] = value
                continue
            layer = _LAYER_KEY.match(key)
            if layer is not None:
                layers.setdefault(int(layer.group(1)), {})[layer.group(2)] = value
            elif key in SECTIONS:
                s[SECTIONS[key]][key] = value
            elif key == "model" and value == self.model_kind:
                continue  # an arch() dict passed back whole
            else:
                raise StllrError(f"{self.source}: parameter {key!r} is not a search parameter of this study "
                                 f"(they are: {', '.join(self.search) or 'none'})")
        if self.default_T is not None:
            s["dataset"].setdefault("T", self.default_T)
        tr = s["training"]
        tr.update(rule=rule, epochs=self.epochs)
        if self.patience is not None:
            tr["patience"] = self.patience
        if self.resources.get("gpu", 0) > 0:
            tr.setdefault("device", "cuda")
        if rule == "stllr":
            if layers:
                s["stllr"]["layer_factors"] = layers
            tr["stllr"] = s["stllr"]
        elif tr.get("loss") == "per_step":
            # S-TLLR's objective: the mean per-step CE over S-TLLR's window (its learn_steps)
            tr["stllr"] = {"learn_steps": s["stllr"].get("learn_steps", STLLRConfig.learn_steps)}
        return s

    def experiment(self, params: dict[str, Any], rule: str, seed: int) -> Any:
        """The full :class:`~stllr_engine.experiment.ExperimentConfig` of one run.

        ``rule="bptt"`` ignores S-TLLR's own settings; the network's input shape and class
        count come from the dataset.
        """
        from stllr_engine.experiment import ExperimentConfig

        s = self._sections(params, rule)
        data = {**s["data"], "data_dir": self.data_dir, "cache_dir": self.cache_dir}
        return ExperimentConfig.for_dataset(self.dataset, s["dataset"], network=s["network"],
                                            training=s["training"], data=data, runtime=s["runtime"], seed=seed)

    # -- costs before training ---------------------------------------------------------
    def _priced(self, params: dict[str, Any], rule: str) -> tuple[dict[str, dict[str, Any]], NetworkSpec, int,
                                                                   STLLRConfig | None, int]:
        """The sections, network spec, T, S-TLLR settings and bytes per value of a configuration."""
        s = self._sections(params, rule)
        input_shape, num_classes = input_info(self.dataset, s["dataset"], self.data_dir, self.cache_dir)
        net = NetworkSpec.from_dict({**s["network"], "input_shape": list(input_shape), "num_classes": num_classes})
        T = int(s["dataset"]["T"])
        stllr = STLLRConfig.from_dict(s["stllr"]) if rule == "stllr" else None
        bytes_per_value = 8 if s["runtime"].get("dtype") == "float64" else 4
        return s, net, T, stllr, bytes_per_value

    @staticmethod
    def _stllr_loss(sections: dict[str, dict[str, Any]], rule: str) -> str:
        """The objective S-TLLR's formulas price (it changes the memory it holds); BPTT's: per_step."""
        return str(sections["training"].get("loss") or "per_step") if rule == "stllr" else "per_step"

    def price(self, params: dict[str, Any], rule: str) -> dict[str, float]:
        """Formula costs per sample (``*_formula_per_sample``) of a configuration, without training.

        :func:`stllr_engine.shapes.spec_formula_costs` on the configuration's network spec:
        exactly :func:`stllr_engine.costs.formula_costs`'s figures, but no network is built
        and no data is read (microseconds, whatever the width or depth).
        """
        key = (rule, *sorted((k, type(v).__name__, repr(v)) for k, v in params.items()))
        cached = self._prices.get(key)
        if cached is None:
            s_, net, T, stllr, bytes_per_value = self._priced(params, rule)
            raw = spec_formula_costs(net, rule, T, stllr, bytes_per_value, loss=self._stllr_loss(s_, rule))
            cached = {ENGINE_NAMES.get(k, k): float(v) for k, v in raw.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self._prices[key] = cached
            if len(self._prices) > 16:
                self._prices.popitem(last=False)
        return dict(cached)

    def memory_need(self, params: dict[str, Any], rule: str) -> int:
        """Bytes one run of this configuration needs at least (:func:`stllr_engine.shapes.memory_need_bytes`).

        Parameters with their gradients and optimiser state, the rule's learning memory
        over a training batch (BPTT ``T·N`` values a sample, S-TLLR ``2·N``) and the input
        batch; no network is built.
        """
        return int(self._memory(params, rule)[0])

    def _memory(self, params: dict[str, Any], rule: str) -> tuple[int, dict[str, int], int]:
        from stllr_engine.experiment import DataConfig
        from stllr_engine.train import TrainConfig

        s, net, T, stllr, bytes_per_value = self._priced(params, rule)
        batch = s["data"].get("batch_size", DataConfig.batch_size)
        tr = s["training"]
        need, parts = memory_need_bytes(net, rule, T, stllr, batch_size=batch, bytes_per_value=bytes_per_value,
                                        optimizer=tr.get("optimizer", TrainConfig.optimizer),
                                        momentum=tr.get("momentum", TrainConfig.momentum), breakdown=True,
                                        loss=self._stllr_loss(s, rule))
        return need, parts, batch

    def check_fits(self, params: dict[str, Any], rule: str, node_bytes: int) -> int:
        """Refuse a run that cannot fit in ``node_bytes`` of memory (the runner calls it before training).

        Returns:
            the bytes the run needs at least (:meth:`memory_need`).

        Raises:
            StllrError: one line with the figures, e.g. ``needs 7.28 TiB at least (...), the
                node has 24 GiB``, and what to change.
        """
        if isinstance(node_bytes, bool) or not isinstance(node_bytes, int) or node_bytes < 1:
            raise StllrError(f"check_fits: node_bytes={node_bytes!r} must be a whole number of bytes >= 1")
        need, parts, batch = self._memory(params, rule)
        if need > node_bytes:
            arch = self.arch(params)
            raise StllrError(
                f"{self.source}: the {rule} run of {arch['model']} width {arch['width']}, depth {arch['depth']}, "
                f"T {arch['T']}, batch {batch} needs {format_bytes(need)} at least "
                f"({format_bytes(parts['parameters'])} parameters with gradients and optimiser state, "
                f"{format_bytes(parts['learning'])} learning memory, {format_bytes(parts['inputs'])} input batch), "
                f"the node has {format_bytes(node_bytes)}; use a smaller width, depth, T or batch_size "
                "(or a constraint on learning_memory), or a node with more memory")
        return need

    def violations(self, params: dict[str, Any], rule: str) -> list[str]:
        """The constraints a configuration breaks, one readable line each (empty: feasible)."""
        if not self.constraints:
            return []
        priced = self.price(params, rule)
        out = []
        for c in self.constraints:
            figure = priced[c.metric]
            if c.violated_by(figure):
                sign = ">" if c.op == "<=" else "<"
                out.append(f"{c.metric}={figure:.4g} {sign} {c.value:.4g} ({c.text})")
        return out

    def constraint_values(self, params: dict[str, Any], rule: str) -> list[float]:
        """Optuna's constraint values (``<= 0`` feasible), one per constraint."""
        if not self.constraints:
            return []
        priced = self.price(params, rule)
        return [c.slack(priced[c.metric]) for c in self.constraints]

    # -- the space's extremes ----------------------------------------------------------
    def reach(self, rule: str = "stllr") -> tuple[dict[str, Reach], dict[str, Reach]]:
        """The least and the greatest figure of every formula metric over the whole space.

        The formula costs never fall as ``width``, ``depth``, ``T`` or ``learn_steps`` grow,
        and S-TLLR's learning MACs are lowest with ``α_post = 0`` (2 instead of 3 per layer,
        :func:`stllr_engine.costs.formula_costs`); no other parameter changes them. So the
        cheapest configuration takes the least value of each of the four (for a
        categorical, its least choice), ``α_post = 0`` where the range holds 0 (per layer
        too), and the dearest the greatest values and ``α_post ≠ 0`` where it can. The other
        parameters take their low bound, and each combination of the other categoricals
        is tried (at most :data:`MAX_COMBINATIONS`; some may not build, e.g. a pooling
        choice at a vgg depth). Exact, and a few prices in all.

        Returns:
            ``(least, greatest)``: metric → :class:`Reach` (the figure and a configuration
            that reaches it).

        Raises:
            StllrError: no configuration of a corner can be priced (the first error).
        """
        out: list[dict[str, Reach]] = []
        for lowest in (True, False):
            best: dict[str, Reach] = {}
            error: StllrError | None = None
            for params in self._corner(lowest):
                try:
                    priced = self.price(params, rule)
                except StllrError as exc:
                    error = error or exc
                    continue
                for metric, figure in priced.items():
                    if metric.endswith("_formula_per_sample"):
                        old = best.get(metric)
                        if old is None or (figure < old.figure if lowest else figure > old.figure):
                            best[metric] = Reach(figure, params)
            if not best:
                assert error is not None
                raise error
            out.append(best)
        return out[0], out[1]

    def _corner(self, lowest: bool) -> list[dict[str, Any]]:
        """The configurations that reach the least (``lowest``) or greatest formula costs."""
        base: dict[str, Any] = {}
        free: dict[str, list[Any]] = {}
        for name, p in self.search.items():
            if name in MONOTONE:
                base[name] = _least(p) if lowest else _greatest(p)
            elif name == "alpha_post":
                base[name] = _alpha(p, zero=lowest)
            elif p.type == "categorical":
                free[name] = list(p.choices)
            else:
                base[name] = p.low
        combos = list(itertools.islice(itertools.product(*free.values()), MAX_COMBINATIONS))
        out = []
        for combo in combos:
            params = {**base, **dict(zip(free, combo))}
            for i in range(1, self.hidden_layers(params)):
                for factor in self.per_layer:
                    params[f"layer{i}.{factor}"] = params[factor]
            out.append(params)
        return out

    # -- one run -----------------------------------------------------------------------
    def params_for_run(self, given: dict[str, Any], seed: int = 0) -> tuple[dict[str, Any], list[str]]:
        """A full configuration for one run (``stllr train``): the given parameters, the others sampled.

        Each given name must be a search parameter (or ``layer{i}.<factor>`` for a
        ``per_layer`` factor, ``1 <= i <`` the network's hidden layers) and its value must
        lie in the space (type, range, grid step or choices; text such as ``"1e-3"`` is read
        as the study file would read it). The others are sampled by
        :meth:`suggest` on an in-memory Optuna study with ``RandomSampler(seed)``, the given
        values enqueued.

        Returns:
            ``(params, sampled)``: the configuration and the names that were sampled.

        Raises:
            StllrError: one line: an unknown name (with the study's parameters), a value
                of the wrong type or outside the space (with the range), a layer the
                network does not have.
        """
        most_layers = self.hidden_layers({"depth": self.search["depth"].largest()} if "depth" in self.search else {})
        checked: dict[str, Any] = {}
        for name, value in given.items():
            p, _ = self._param_of(str(name), most_layers)
            if isinstance(value, str) and not (p.type == "categorical" and value in p.choices):
                value = parse_scalar(value, f"{self.source}: {name}")
            try:
                checked[name] = p.normalise(value)
            except ValueError as exc:
                raise StllrError(f"{self.source}: {name}={value!r}: {exc}; this study searches {p.name} in "
                                 f"{p.describe()}: give a value there or leave {name} out to sample it") from None
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            directions: list[Any] = [o.direction for o in self.objectives]
            study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=seed))
            if checked:
                study.enqueue_trial(checked, skip_if_exists=False)
            params = self.suggest(study.ask())
        finally:
            optuna.logging.set_verbosity(verbosity)
        layers = self.hidden_layers(params)
        for name in checked:
            if name not in params:
                depth = params.get("depth", self.arch(params)["depth"])
                raise StllrError(f"{self.source}: {name}: the network has {layers} hidden layer(s) at depth {depth} "
                                 f"(per-layer factors for layers 1..{layers - 1}); give depth as well, large "
                                 "enough for that layer, or leave it out")
            if params[name] != checked[name]:  # never: the values were checked as Optuna checks them
                raise StllrError(f"{self.source}: {name}={checked[name]!r} was not taken by the sampler; "
                                 f"give a value in {self._param_of(name, most_layers)[0].describe()}")
        return params, [k for k in params if k not in checked]

    def _param_of(self, name: str, most_layers: int) -> tuple[Param, int | None]:
        """The distribution a given parameter name is drawn from, and its layer (per-layer names)."""
        if name in self.search:
            return self.search[name], None
        layer = _LAYER_KEY.match(name)
        if layer is not None and layer.group(2) in self.per_layer:
            index = int(layer.group(1))
            if 1 <= index < most_layers:
                return self.search[layer.group(2)], index
            raise StllrError(f"{self.source}: {name}: per-layer factors go to layers 1..{most_layers - 1} "
                             f"(layer 0 takes {layer.group(2)} itself, the network has at most {most_layers} "
                             f"hidden layers); use layer1..layer{most_layers - 1} or {layer.group(2)}")
        per_layer = [f"layer<i>.{f}" for f in self.per_layer]
        names = ", ".join([*self.search, *per_layer]) or "none"
        raise StllrError(f"{self.source}: {name!r} is not a search parameter of this study"
                         f"{closest(name, [*self.search, *per_layer])}; they are: {names}; study-file keys "
                         "start with a section, e.g. dataset.data_dir")

    # -- the sampler -------------------------------------------------------------------
    def grid(self) -> dict[str, list[Any]] | None:
        """The search space as a grid (``optuna.samplers.GridSampler``), or ``None`` when a
        parameter is continuous or the space has per-layer (depth-conditional) parameters."""
        if self.per_layer:
            return None
        out = {}
        for name, p in self.search.items():
            values = p.values()
            if values is None:
                return None
            out[name] = values
        return out

    def make_sampler(self) -> Any:
        """The seeded Optuna sampler the file names, with its options.

        Constraints reach the sampler from the trial: Optuna >= 5 reads the values the runner
        records with ``trial.set_constraint`` (``<= 0`` feasible); with older Optuna the
        constrained samplers get ``constraints_func`` reading the trial's ``"constraints"``
        user attribute instead.
        """
        name, options = self.sampler
        kwargs = dict(options)
        if name == "grid":
            return AskTellGridSampler(self.grid() or {}, seed=kwargs.get("seed"))
        # Optuna >= 5 reads constraints that the runner records with Trial.set_constraint
        # (and deprecates constraints_func; passing both would count each constraint twice).
        old_api = not hasattr(optuna.trial.Trial, "set_constraint")
        if name in _CONSTRAINED and self.constraints and old_api:
            kwargs["constraints_func"] = _UserAttrConstraints(len(self.constraints))
        cls = getattr(optuna.samplers, _SAMPLERS[name])
        return cls(**kwargs) if name != "random" else cls(seed=kwargs.get("seed"))

    def replace(self, **changes: Any) -> "StudySpec":
        return dataclasses.replace(self, **changes)


# -- the space's extremes ----------------------------------------------------------------

def _least(p: Param) -> Any:
    """The least value a parameter takes (int with a step: ``low`` is on the grid)."""
    return p.smallest()


def _greatest(p: Param) -> Any:
    """The greatest value a parameter takes (int with a step: the last grid point)."""
    if p.type == "int" and p.step is not None:
        low, step = int(p.low or 0), int(p.step)
        return low + (int(p.high or 0) - low) // step * step
    return p.largest()


def _alpha(p: Param, zero: bool) -> Any:
    """An α_post the space holds: 0 if ``zero`` and it can, else a non-zero one if it can."""
    values: list[Any]
    if p.type == "categorical":
        values = list(p.choices)
    else:
        lo, hi = float(p.low or 0.0), float(p.high or 0.0)
        on_grid = p.step is None or abs(-lo / float(p.step) - round(-lo / float(p.step))) < 1e-8
        values = [0.0] if (lo <= 0.0 <= hi and on_grid) else []
        values += [hi if hi != 0.0 else lo]
    wanted = [v for v in values if (v == 0) == zero]
    return (wanted or values)[0]


# -- the dataset's shapes without reading it ------------------------------------------------

def _embedded_shapes() -> dict[str, Callable[[dict[str, Any]], tuple[tuple[int, ...], int]]]:
    """Input shape and classes of each embedded dataset from its (validated) parameters."""
    return {
        # scikit-learn's 8x8 digits: 64 pixels, 10 classes, whatever T or split
        "digits": lambda p: ((1, 8, 8) if p.get("image") else (64,), 10),  # image: one channel of 8 x 8
        "synthetic_temporal": lambda p: ((int(p["channels"]),), int(p["num_classes"])),
        # 4 event channels (former/latter half x ON/OFF) of size x size; 2 outputs (u, v)
        "flow_synthetic": lambda p: ((4, int(p["size"]), int(p["size"])), 2),
        # not embedded, but its shape follows from its parameters: the crop, 2 outputs (u, v)
        "mvsec": lambda p: ((4, int(p["crop"]), int(p["crop"])), 2),
    }


def input_info(dataset: str, options: dict[str, Any], data_dir: str | None,
               cache_dir: str | None) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a dataset with these options, without reading or generating it.

    Event datasets answer from their description, the embedded ones (``digits``,
    ``synthetic_temporal``) from their parameters; both check the options with the
    dataset's own validation. A future embedded dataset without an entry here is
    generated once to learn them.
    """
    from stllr_engine.datasets import DATASETS

    source = event_source(dataset)
    if source is not None:
        params = source.validate({**DATASETS[dataset].defaults, **options})
        return tuple(source.out_shape(params)), int(source.num_classes)
    shapes = _embedded_shapes().get(dataset)
    if shapes is not None:
        spec = DATASETS[dataset]
        unknown = sorted(set(options) - set(spec.defaults))
        if unknown:
            raise StllrError(f"dataset {dataset!r} has no parameter {unknown[0]!r}; valid: {', '.join(spec.defaults)}")
        return shapes(spec._validate({**spec.defaults, **options}))
    from stllr_engine.experiment import DataConfig, dataset_info

    d = dataset_info(DataConfig(dataset=dataset, options=options, data_dir=data_dir, cache_dir=cache_dir))
    return tuple(d.input_shape), int(d.num_classes)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, three significant digits.

    >>> format_bytes(24 * 2**30), format_bytes(8_000_000_000_000), format_bytes(512)
    ('24 GiB', '7.28 TiB', '512 B')
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def event_source(dataset: str) -> Any:
    """The event dataset's source description (layout check, shapes), or ``None``."""
    from stllr_engine.datasets._events import EventSource

    import stllr_engine.datasets  # noqa: F401  (registers the sources)

    for cls in EventSource.__subclasses__():
        if getattr(cls, "name", None) == dataset:
            return cls()
    return None
