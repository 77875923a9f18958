"""A validated study: what the runner asks of a study file.

:class:`StudySpec` is built by :func:`spaces.load_study` (which validates everything); it
turns an Optuna trial into a configuration (:meth:`StudySpec.suggest`), a configuration
into an :class:`~stllr_engine.experiment.ExperimentConfig` (:meth:`StudySpec.experiment`),
prices it with the engine's formulas before training (:meth:`StudySpec.price`,
:meth:`StudySpec.violations`) and builds the seeded sampler (:meth:`StudySpec.make_sampler`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import optuna

from spaces._names import ARCH, ENGINE_NAMES, SECTIONS
from spaces._params import Param
from spaces._yaml import dump_yaml
from stllr_engine.errors import StllrError
from stllr_engine.network import Network, NetworkSpec, build_network
from stllr_engine.stllr import STLLRConfig

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

    def __post_init__(self) -> None:
        self._nets: OrderedDict[NetworkSpec, Network] = OrderedDict()

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
            "baseline": {"search": {k: p.to_dict() for k, p in self.baseline_search.items()},
                         "trials": self.baseline_trials},
            "objectives": [{"metric": o.metric, "direction": o.direction} for o in self.objectives],
            "constraints": [str(c) for c in self.constraints],
            "budget": {"trials": self.trials, "epochs": self.epochs, "seeds": list(self.seeds)},
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

    def suggest_baseline(self, trial: Any, arch: dict[str, Any]) -> dict[str, Any]:
        """BPTT's own small search for the architecture ``arch`` (may be empty)."""
        return {name: p.suggest(trial) for name, p in self.baseline_search.items()}

    def hidden_layers(self, params: dict[str, Any]) -> int:
        """Spiking layers of the network a configuration builds (vgg: two per block)."""
        depth = int(params.get("depth", self.model_fixed.get("depth", NetworkSpec.depth)))
        return 2 * depth if self.model_kind == "vgg" else depth

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
            if key.startswith("layer") and "." in key:
                index, _, factor = key[len("layer"):].partition(".")
                layers.setdefault(int(index), {})[factor] = value
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
        if self.resources.get("gpu", 0) > 0:
            tr.setdefault("device", "cuda")
        if rule == "stllr":
            if layers:
                s["stllr"]["layer_factors"] = layers
            tr["stllr"] = s["stllr"]
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
    def _network(self, spec: NetworkSpec) -> Network:
        net = self._nets.get(spec)
        if net is None:
            net = build_network(spec)
            self._nets[spec] = net
            if len(self._nets) > 32:
                self._nets.popitem(last=False)
        return net

    def price(self, params: dict[str, Any], rule: str) -> dict[str, float]:
        """Formula costs per sample (``*_formula_per_sample``) of a configuration, without training.

        Builds the network (cached by spec) and calls
        :func:`stllr_engine.costs.formula_costs`; no data is read.
        """
        from stllr_engine.costs import formula_costs

        s = self._sections(params, rule)
        input_shape, num_classes = input_info(self.dataset, s["dataset"], self.data_dir, self.cache_dir)
        net = self._network(NetworkSpec.from_dict({**s["network"], "input_shape": list(input_shape),
                                                   "num_classes": num_classes}))
        T = int(s["dataset"]["T"])
        stllr = STLLRConfig.from_dict(s["stllr"]) if rule == "stllr" else None
        bytes_per_value = 8 if s["runtime"].get("dtype") == "float64" else 4
        raw = formula_costs(net, rule, T, stllr, bytes_per_value)
        return {ENGINE_NAMES.get(k, k): float(v) for k, v in raw.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

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


# -- the dataset's shapes without reading it ------------------------------------------------

_INFO: dict[str, tuple[tuple[int, ...], int]] = {}


def input_info(dataset: str, options: dict[str, Any], data_dir: str | None,
               cache_dir: str | None) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a dataset with these options.

    Event datasets answer from their description (no files read); embedded ones are
    generated once per process.
    """
    import json

    key = json.dumps([dataset, options], sort_keys=True, default=str)
    if key in _INFO:
        return _INFO[key]
    source = event_source(dataset)
    if source is not None:
        from stllr_engine.datasets import DATASETS

        params = source.validate({**DATASETS[dataset].defaults, **options})
        info = (tuple(source.out_shape(params)), int(source.num_classes))
    else:
        from stllr_engine.experiment import DataConfig, dataset_info

        d = dataset_info(DataConfig(dataset=dataset, options=options, data_dir=data_dir, cache_dir=cache_dir))
        info = (tuple(d.input_shape), int(d.num_classes))
    _INFO[key] = info
    return info


def event_source(dataset: str) -> Any:
    """The event dataset's source description (layout check, shapes), or ``None``."""
    from stllr_engine.datasets._events import EventSource

    import stllr_engine.datasets  # noqa: F401  (registers the sources)

    for cls in EventSource.__subclasses__():
        if getattr(cls, "name", None) == dataset:
            return cls()
    return None
