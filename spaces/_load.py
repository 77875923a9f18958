"""Read a study file, apply ``--set`` overrides and validate every key before anything starts.

Every mistake is one :class:`~stllr_engine.errors.StllrError` line:
``<file>: <key>: <what is wrong>; <how to fix it>``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from spaces._names import (
    ALIASES, ARCH, FORMULA_METRICS, KINDS, METRICS, SECTIONS, STLLR_FACTORS, closest, metric_name, parse_quantity,
)
from spaces._params import Param
from spaces._study import _SAMPLERS, MONOTONE, Constraint, Objective, SamplerSpec, StudySpec, event_source
from spaces._yaml import MAX_FILE_BYTES, parse_scalar, read_yaml
from stllr_engine._checks import is_int, is_real
from stllr_engine.bptt import LOSSES as BPTT_LOSSES
from stllr_engine.stllr import STLLR_LOSSES
from stllr_engine.errors import StllrError
from stllr_engine.network import KINDS as MODEL_KINDS
from stllr_engine.network import NetworkSpec
from stllr_engine.stllr import STLLRConfig
from stllr_engine.train import TrainConfig

__all__ = ["load_study", "PRESET_NAMES", "PRESET_GROUPS", "preset_path", "LIMITS"]

PRESET_DIR = Path(__file__).resolve().parent
#: the datasets whose samples are optical flow (targets: images and flows; kind flownet only)
FLOW_DATASETS = ("flow_synthetic", "mvsec")
PRESET_NAMES = (
    "quickstart", "shd_rsnn", "dvs_gesture_vgg9", "cifar10dvs_vgg9", "nmnist",
    "balance_digits", "balance_synthetic", "scaling_digits", "scaling_synthetic",
    "balance_digits_factorial", "balance_synthetic_factorial", "balance_spoken", "scaling_spoken",
    "family_timing", "family_scaling_timing", "flow_synthetic", "mvsec_flow",
)
# The open questions' studies, one per task (one study = one dataset = one folder).
PRESET_GROUPS = {"balance": ("balance_digits", "balance_synthetic", "balance_spoken"),
                 "balance_factorial": ("balance_digits_factorial", "balance_synthetic_factorial"),
                 "scaling": ("scaling_digits", "scaling_synthetic", "scaling_spoken")}

from study.schema import DEFAULT_OBJECTIVES  # noqa: E402  (one definition: accuracy, learning MACs, measured memory)
_SAMPLER_OPTIONS: dict[str, dict[str, str]] = {  # option -> kind
    "tpe": {"n_startup_trials": "int", "n_ei_candidates": "int", "multivariate": "bool", "group": "bool",
            "constant_liar": "bool", "consider_endpoints": "bool"},
    "nsga2": {"population_size": "int", "mutation_prob": "prob", "crossover_prob": "prob", "swapping_prob": "prob"},
    "nsga3": {"population_size": "int", "mutation_prob": "prob", "crossover_prob": "prob", "swapping_prob": "prob",
              "dividing_parameter": "int"},
    "gp": {"n_startup_trials": "int", "deterministic_objective": "bool"},
    "random": {}, "grid": {},
}
# Keys of `fixed` sections that the study file sets elsewhere, and where.
_ELSEWHERE = {
    ("training", "rule"): "rules", ("training", "stllr"): "fixed.stllr", ("training", "epochs"): "budget.epochs",
    ("training", "seed"): "budget.seeds", ("data", "dataset"): "dataset.name", ("data", "options"): "dataset.options",
    ("data", "data_dir"): "dataset.data_dir", ("data", "cache_dir"): "dataset.cache_dir",
    ("training", "loss"): "baseline.loss (BPTT's objectives) and baseline.stllr_loss (S-TLLR's in its equal tuning)",
    ("training", "patience"): "budget.patience",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Upper limits on sizes that make no sense beyond them (each refusal is one line naming it):
#: key -> (limit, what it counts). Costs and memory are priced before training, so the
#: limits only keep absurd values (a typo'd exponent, a bad --set) from reaching the sampler.
LIMITS: dict[str, tuple[int, str]] = {
    "width": (10**10, "neurons (vgg: channels) per layer"),
    "depth": (10_000, "hidden layers (vgg: blocks)"),
    "T": (100_000, "time steps"),
    "trials": (100_000, "configurations"),
    "epochs": (10_000, "epochs"),
    "seeds": (1_000, "seeds"),
}
MAX_SAMPLER_SEED = 2**32 - 1  # numpy's RandomState, under every Optuna sampler
MAX_GRID = 1_000_000  # grid points (sampler grid, baseline grids)


def preset_path(name: str) -> str:
    """The file of preset ``name`` (``spaces/<name>.yaml``)."""
    if name not in PRESET_NAMES:
        raise StllrError(f"unknown preset {name!r}{closest(name, PRESET_NAMES)}: presets are "
                         f"{', '.join(PRESET_NAMES)}")
    return str(PRESET_DIR / f"{name}.yaml")


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def load_study(source: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None, *,
               check_data: bool = True) -> StudySpec:
    """Read and validate a study file (or preset), with dotted-key overrides.

    Args:
        source: a preset name (``"quickstart"``) or the path of a study file.
        overrides: ``{"dataset.data_dir": "/data", "budget.trials": 8}`` (``stllr sweep
            --set``); text values are read as YAML scalars (``"1e-3"`` is a float).
        check_data: check that an event dataset's data folder exists and holds its files
            (off only to inspect a study without its data).

    Returns:
        the validated :class:`StudySpec`.

    Raises:
        StllrError: one line, ``<file>: <key>: <problem>; <fix>``.

    >>> spec = load_study("quickstart")
    >>> spec.name, [o.metric for o in spec.objectives][:2]
    ('quickstart', ['val_accuracy', 'learning_macs_formula_per_sample'])
    """
    text_source = os.fspath(source)
    if text_source in PRESET_NAMES:
        path = preset_path(text_source)
    elif os.path.isfile(text_source):
        path = text_source
    elif os.sep not in text_source and not text_source.endswith((".yaml", ".yml")):
        raise StllrError(f"{text_source!r} is neither a study file nor a preset{closest(text_source, PRESET_NAMES)}: "
                         f"presets are {', '.join(PRESET_NAMES)}")
    else:
        raise StllrError(f"{text_source}: no such study file; give a path to a .yaml study file or a preset name "
                         f"({', '.join(PRESET_NAMES)})")
    shown = _shown(path)
    text = _read_text(path, shown)
    raw = read_yaml(text, shown)
    if not isinstance(raw, dict):
        raise StllrError(f"{shown}: the file must be a mapping of study keys (name, dataset, model, search, ...); "
                         "see spaces/SCHEMA.md")
    raw = apply_overrides(raw, overrides, shown)
    return _Validator(shown).study(raw, check_data)


def _read_text(path: str, shown: str) -> str:
    """The file's UTF-8 text (a BOM dropped), at most :data:`~spaces._yaml.MAX_FILE_BYTES`, or one line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise StllrError(f"{shown}: cannot read it ({exc.strerror}); check the path and its permissions") from None
    if len(data) > MAX_FILE_BYTES:
        raise StllrError(f"{shown}: larger than a study file may be ({MAX_FILE_BYTES} bytes = "
                         f"{MAX_FILE_BYTES >> 20} MiB); a study file is a few dozen lines: check the file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise StllrError(f"{shown}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text ({exc.reason}); "
                         "save the file as UTF-8") from None


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any] | None, shown: str) -> dict[str, Any]:
    """``raw`` with each dotted key set (intermediate mappings created as needed).

    Each value is read as the file would read it (:func:`~spaces._yaml.parse_scalar`: text
    with the study loader, nested lists and mappings with their number-like strings as
    floats, the same input limits), so an override is validated exactly like the file.
    """
    out = _copy(raw)
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str) and part in ("dataset", "sampler") and i == 0:
                child = {"name": child}  # the shorthand `dataset: digits`
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise StllrError(f"{shown}: --set {key}: {'.'.join(parts[:i + 1])} is not a mapping in this file; "
                                 "set that key itself, e.g. --set " + ".".join(parts[:i + 1]) + "=...")
            node[part] = child
            node = child
        node[parts[-1]] = parse_scalar(value, f"{shown}: --set {key}")
    return out


def _copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_copy(v) for v in d]
    return d


#: The top-level keys of a study file.
TOP_KEYS = ("name", "description", "dataset", "model", "rules", "search", "per_layer", "fixed", "baseline",
            "objectives", "constraints", "budget", "sampler", "scheduler", "resources", "storage")


class _Validator:
    """Validates one study file; ``fail`` builds the one-line error."""

    def __init__(self, shown: str):
        self.file = shown

    def fail(self, key: str, problem: str, fix: str) -> StllrError:
        return StllrError(f"{self.file}: {key}: {problem}; {fix}")

    def limit(self, key: str, name: str, value: Any) -> None:
        """Refuse a value above its :data:`LIMITS` entry."""
        most, what = LIMITS[name]
        if is_real(value) and value > most:
            raise self.fail(key, f"{name}={value} is more than the limit of {most} {what}",
                            f"use at most {most}")

    def wrap(self, key: str, exc: StllrError, fix: str = "") -> StllrError:
        msg = str(exc)
        return StllrError(f"{self.file}: {key}: {msg}" + (f"; {fix}" if fix else ""))

    def mapping(self, key: str, value: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__} {value!r}",
                            f"write it as keys: {', '.join(allowed)}")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(where, f"unknown key{closest(str(k), allowed)}",
                                f"valid keys are {', '.join(allowed)}")
        for k in required:
            if k not in value:
                raise self.fail(f"{key}.{k}" if key else k, "missing", "this key is required (see spaces/SCHEMA.md)")
        return value

    # -- the whole file ----------------------------------------------------------------
    def study(self, raw: dict[str, Any], check_data: bool) -> StudySpec:
        self.mapping("", raw, TOP_KEYS, ("name", "dataset", "model", "search", "budget"))
        name = raw["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail("name", f"{name!r} is not a usable study name",
                            "use letters, digits, '_', '-' or '.', e.g. name: shd_balance")
        description = raw.get("description") or ""
        if not isinstance(description, str):
            raise self.fail("description", "must be text", "write one line of text or remove it")
        dataset, options, data_dir, cache_dir, T = self.dataset(raw["dataset"], check_data)
        kind, model_fixed = self.model(raw["model"])
        flow_data = dataset in FLOW_DATASETS
        if flow_data != (kind == "flownet"):
            raise self.fail("model.kind", f"{kind!r} on dataset {dataset!r}: " + (
                "an optical-flow dataset needs a flow network" if flow_data else
                "a flow network needs an optical-flow dataset"),
                "use kind: flownet" if flow_data else f"use a classifier (rsnn, mlp, vgg) or a flow dataset "
                f"({', '.join(FLOW_DATASETS)})")
        fixed = self.fixed(raw.get("fixed"), dataset, options)
        rules = self.rules(raw.get("rules", ["stllr", "bptt"]))
        taken = {**{k: "model.fixed" for k in model_fixed},
                 **{k: f"fixed.{s}" for s, sec in fixed.items() for k in sec if k in SECTIONS}}
        if "T" in options:
            taken["T"] = "dataset.options"
        search = self.search("search", raw["search"], taken, kind, model_fixed, fixed, dataset, options)
        per_layer = self.per_layer(raw.get("per_layer"), search, kind, model_fixed)
        self.learn_steps(search, fixed, T)
        baseline_search, baseline_trials, baseline_losses, stllr_losses = self.baseline(
            raw.get("baseline"), rules, taken, kind, model_fixed, fixed, dataset, options)
        objectives = self.objectives(raw.get("objectives"), fixed, kind)
        constraints = self.constraints(raw.get("constraints"))
        trials, epochs, seeds, patience = self.budget(raw["budget"])
        sampler = self.sampler(raw.get("sampler"))
        scheduler = self.scheduler(raw.get("scheduler"), objectives)
        resources, concurrency = self.resources(raw.get("resources"))
        storage = raw.get("storage", "journal")
        if storage != "journal":
            raise self.fail("storage", f"{storage!r} is not supported",
                            "use journal (the study folder's optuna.journal, readable by optuna-dashboard)")
        spec = StudySpec(
            name=name, source=self.file, description=description, dataset=dataset, dataset_options=options,
            data_dir=data_dir, cache_dir=cache_dir, model_kind=kind, model_fixed=model_fixed, rules=rules,
            search=search, per_layer=per_layer, fixed=fixed, baseline_search=baseline_search,
            baseline_trials=baseline_trials, baseline_losses=baseline_losses, stllr_losses=stllr_losses, patience=patience, objectives=objectives, constraints=constraints, trials=trials,
            epochs=epochs, seeds=seeds, sampler=sampler, scheduler=scheduler, resources=resources,
            concurrency=concurrency, storage=storage, default_T=T,
        )
        self.whole(spec)
        return spec

    def whole(self, spec: StudySpec) -> None:
        """Checks across keys."""
        if not spec.search and spec.trials > 1:
            raise self.fail("search", "nothing is searched, so every configuration would be the same",
                            "add search parameters, or set budget.trials: 1 (seeds are the repeats)")
        if spec.sampler.name == "grid":
            if spec.per_layer:
                raise self.fail("sampler.name", "grid needs a fixed set of parameters but per_layer adds "
                                "parameters that depend on depth", "use tpe, nsga2 or random, or remove per_layer")
            for name, p in spec.search.items():
                if p.count() is None:
                    raise self.fail(f"search.{name}", "a continuous float cannot be a grid axis",
                                    "give it a step, make it categorical, or use another sampler")
            size = math.prod(p.count() or 0 for p in spec.search.values())
            if size > MAX_GRID:
                raise self.fail("sampler.name", f"the grid has {size} points, more than the limit of {MAX_GRID}",
                                "use coarser steps or fewer values, or another sampler (tpe, nsga2, random)")
            if spec.trials > size:
                raise self.fail("budget.trials", f"{spec.trials} exceeds the grid's {size} points",
                                f"use trials: {size} (seeds are the repeats)")
        try:  # price both extremes of the space now: a mistake (a vgg too deep) shows now, not in a trial
            least, greatest = spec.reach("stllr")
        except StllrError as exc:
            raise self.wrap("search", exc, "every configuration of the space must build: check model.fixed and the "
                            "search ranges") from None
        for i, c in enumerate(spec.constraints):
            # the runner prices S-TLLR proposals; a constraint no configuration meets leaves nothing to train
            cheapest = least[c.metric] if c.op == "<=" else greatest[c.metric]
            if c.violated_by(cheapest.figure):
                word = "cheapest" if c.op == "<=" else "dearest"
                lower = [f"search.{n}.{'low' if c.op == '<=' else 'high'}" for n in (*MONOTONE, "alpha_post")
                         if n in spec.search]
                raise self.fail(f"constraints[{i}]", f"no configuration of the space meets {c}: the {word}, "
                                f"{_describe(spec, cheapest.params)}, costs {c.metric}={cheapest.figure:.4g}",
                                f"{'raise' if c.op == '<=' else 'lower'} the limit"
                                + (f" or change {', '.join(lower)}" if lower else " or change the model"))

    # -- sections ----------------------------------------------------------------------
    def dataset(self, value: Any, check_data: bool) -> tuple[str, dict[str, Any], str | None, str | None, int | None]:
        from stllr_engine.datasets import DATASETS

        if isinstance(value, str):
            value = {"name": value}
        d = self.mapping("dataset", value, ("name", "options", "data_dir", "cache_dir"), ("name",))
        name = d["name"]
        if name not in DATASETS:
            raise self.fail("dataset.name", f"unknown dataset {name!r}{closest(str(name), DATASETS)}",
                            f"use one of {', '.join(DATASETS)}")
        spec = DATASETS[name]
        options = self.mapping("dataset.options", d.get("options"), tuple(spec.defaults))
        validate = getattr(spec, "_validate", None)
        if validate is not None:
            try:
                validate({**spec.defaults, **options})
            except StllrError as exc:
                raise self.wrap("dataset.options", exc) from None
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        T = options.get("T", spec.defaults.get("T"))
        self.limit("dataset.options.T", "T", T)
        folders: list[str | None] = []
        for key in ("data_dir", "cache_dir"):
            folder = d.get(key)
            if folder is not None and not isinstance(folder, str):
                raise self.fail(f"dataset.{key}", f"{folder!r} is not a folder path", "give a path such as /data")
            folders.append(os.path.expanduser(folder) if folder else None)
        data_dir, cache_dir = folders
        if spec.needs_files and check_data:
            source = event_source(name)
            layout = f"{source.folder}/" if source is not None else "its files"
            if data_dir is None:
                raise self.fail("dataset.data_dir", f"{name} reads its files from a data folder but none is given",
                                f"set it to the folder holding {layout} (stllr sweep ... --set dataset.data_dir=/data)")
            if not os.path.isdir(data_dir):
                raise self.fail("dataset.data_dir", f"folder {data_dir} does not exist",
                                f"give the folder holding {layout} (--set dataset.data_dir=/path)")
            if source is not None:
                try:
                    source.check(Path(data_dir))
                except StllrError as exc:
                    raise self.wrap("dataset.data_dir", exc) from None
        return name, options, data_dir, cache_dir, int(T) if T is not None else None

    def model(self, value: Any) -> tuple[str, dict[str, Any]]:
        d = self.mapping("model", value, ("kind", "fixed"), ("kind",))
        kind = d["kind"]
        if kind not in MODEL_KINDS:
            raise self.fail("model.kind", f"unknown model {kind!r}{closest(str(kind), MODEL_KINDS)}",
                            f"use one of {', '.join(MODEL_KINDS)}")
        allowed = tuple(k for k, s in SECTIONS.items() if s == "network")
        fixed = self.mapping("model.fixed", d.get("fixed"), allowed)
        for name in ("width", "depth"):
            self.limit(f"model.fixed.{name}", name, fixed.get(name))
        try:
            _probe_network(kind, fixed)
        except StllrError as exc:
            raise self.wrap("model.fixed", exc) from None
        return kind, dict(fixed)

    def fixed(self, value: Any, dataset: str, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        from stllr_engine.experiment import DataConfig, RuntimeConfig

        classes: dict[str, Any] = {"training": TrainConfig, "stllr": STLLRConfig, "data": DataConfig,
                                   "runtime": RuntimeConfig}
        d = self.mapping("fixed", value, tuple(classes))
        out: dict[str, dict[str, Any]] = {}
        for section, cls in classes.items():
            names = tuple(f.name for f in dataclasses.fields(cls))
            sec = self.mapping(f"fixed.{section}", d.get(section), names)
            for k in sec:
                if (section, k) in _ELSEWHERE:
                    raise self.fail(f"fixed.{section}.{k}", "is set elsewhere in a study file",
                                    f"set {_ELSEWHERE[(section, k)]} instead")
            try:
                if section == "data":
                    cls.from_dict({**sec, "dataset": dataset, "options": options})
                else:
                    cls.from_dict(sec)
            except StllrError as exc:
                raise self.wrap(f"fixed.{section}", exc) from None
            out[section] = dict(sec)
        return {k: v for k, v in out.items() if v}

    def rules(self, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or any(r not in ("stllr", "bptt") for r in value) \
                or len(set(value)) != len(value):
            raise self.fail("rules", f"{value!r} is not a list of distinct rules",
                            "use [stllr, bptt] (S-TLLR searched, BPTT as the matched baseline) or [stllr]")
        if "stllr" not in value:
            raise self.fail("rules", "the search is over S-TLLR configurations, so stllr must be among the rules",
                            "use [stllr, bptt]; BPTT's own search goes in baseline.search")
        return ["stllr"] + [r for r in value if r != "stllr"]

    def param(self, key: str, name: str, value: Any) -> Param:
        if isinstance(value, list):
            value = {"type": "categorical", "choices": value}
        if not isinstance(value, dict):
            raise self.fail(key, f"{value!r} is a single value, not a distribution",
                            f"move it to fixed (or model.fixed), or write {{type: float, low: ..., high: ...}}")
        d = self.mapping(key, value, ("type", "low", "high", "step", "log", "choices"))
        kind = d.get("type", "categorical" if "choices" in d else None)
        if kind == "log":  # shorthand for a log-uniform float
            kind, d = "float", {**d, "log": True}
        if kind not in ("float", "int", "categorical"):
            raise self.fail(f"{key}.type", f"{kind!r} is not a distribution type{closest(str(kind), ('float', 'int', 'categorical', 'log'))}",
                            "use float, int, log (a log-uniform float) or categorical")
        field_kind = KINDS.get(name, "float")
        if kind == "categorical":
            for extra in ("low", "high", "step", "log"):
                if extra in d:
                    raise self.fail(f"{key}.{extra}", "a categorical has no bounds", "give only choices: [...]")
            choices = d.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{key}.choices", f"{choices!r} is not a non-empty list", "write choices: [a, b, ...]")
            if any(isinstance(c, (dict, list)) for c in choices) or len({repr(c) for c in choices}) != len(choices):
                raise self.fail(f"{key}.choices", "choices must be distinct plain values", "remove the repeats")
            return Param(name, "categorical", choices=tuple(choices))
        if field_kind in ("str", "bool"):
            raise self.fail(f"{key}.type", f"{name} takes {field_kind} values, which have no range",
                            "make it categorical: choices: [...]")
        if field_kind == "int" and kind == "float":
            raise self.fail(f"{key}.type", f"{name} is an integer", "use type: int (or categorical)")
        for bound in ("low", "high"):
            if bound not in d:
                raise self.fail(f"{key}.{bound}", "missing", f"a {kind} needs low and high")
            v = d[bound]
            if not (is_int(v) if kind == "int" else is_real(v)):
                raise self.fail(f"{key}.{bound}", f"{v!r} is not {'an integer' if kind == 'int' else 'a number'}",
                                f"give a {'whole number' if kind == 'int' else 'finite number'}")
        low, high = d["low"], d["high"]
        if low > high:
            raise self.fail(key, f"low {low} > high {high}", f"swap them (low: {high}, high: {low})")
        if low == high:
            raise self.fail(key, f"low == high == {low}, a fixed value", "move it to fixed (or widen the range)")
        log = d.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{key}.log", f"{log!r} is not true or false", "write log: true or remove it")
        if log and low <= 0:
            raise self.fail(f"{key}.low", f"a log scale needs low > 0, got {low}", "raise low above 0 or drop log")
        step = d.get("step")
        if step is not None:
            if not (is_int(step) if kind == "int" else is_real(step)) or step <= 0:
                raise self.fail(f"{key}.step", f"{step!r} is not a positive {'integer' if kind == 'int' else 'number'}",
                                "give a positive step or remove it")
            if log:
                raise self.fail(f"{key}.step", "a log scale cannot have a step", "remove step or log")
        if kind == "float":
            return Param(name, "float", low=float(low), high=float(high), log=log,
                         step=None if step is None else float(step))
        return Param(name, "int", low=int(low), high=int(high), log=log, step=None if step is None else int(step))

    def search(self, where: str, value: Any, taken: dict[str, str], kind: str, model_fixed: dict[str, Any],
               fixed: dict[str, dict[str, Any]], dataset: str, options: dict[str, Any],
               allowed: tuple[str, ...] | None = None) -> dict[str, Param]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(where, "expected a mapping of parameter: distribution", "see spaces/SCHEMA.md")
        names = allowed if allowed is not None else tuple(SECTIONS)
        out: dict[str, Param] = {}
        for name, dist in value.items():
            key = f"{where}.{name}"
            if name not in names:
                if allowed is not None and name in SECTIONS:
                    raise self.fail(key, "the baseline copies the architecture of each S-TLLR configuration and "
                                    "S-TLLR's factors do not apply to BPTT", f"search only {', '.join(allowed)} here")
                raise self.fail(key, f"unknown search parameter{closest(str(name), names)}",
                                f"searchable: {', '.join(names)}")
            if name in taken:
                raise self.fail(key, f"{name} is also set in {taken[name]}", "keep it in one place")
            p = self.param(key, name, dist)
            if name in LIMITS:
                for sub, v in p.extremes():
                    self.limit(f"{key}.{sub}", name, v)
            for sub, v in p.extremes():
                self.engine_accepts(f"{key}.{sub}", name, v, kind, model_fixed, fixed, dataset, options)
            out[name] = p
        return out

    def engine_accepts(self, key: str, name: str, value: Any, kind: str, model_fixed: dict[str, Any],
                       fixed: dict[str, dict[str, Any]], dataset: str, options: dict[str, Any]) -> None:
        """The engine's own check of one value (so bounds fail now, not in a trial)."""
        if name.startswith("lambda") and is_real(value) and not 0.0 <= value <= 1.0:
            raise self.fail(key, f"{name}={value} is outside [0, 1] (a trace decay)", "use a value in [0, 1]")
        section = SECTIONS[name]
        try:
            if section == "network":
                _probe_network(kind, {**model_fixed, name: value})
            elif section == "stllr":
                STLLRConfig.from_dict({**fixed.get("stllr", {}), name: value})
            elif section == "training":
                TrainConfig.from_dict({**fixed.get("training", {}), name: value})
            elif section == "data":
                from stllr_engine.experiment import DataConfig

                DataConfig.from_dict({**fixed.get("data", {}), "dataset": dataset, "options": options, name: value})
            else:
                from stllr_engine.datasets import DATASETS

                spec = DATASETS[dataset]
                if name not in spec.defaults:
                    raise StllrError(f"dataset {dataset!r} has no option {name!r}")
                validate = getattr(spec, "_validate", None)
                if validate is not None:
                    validate({**spec.defaults, **options, name: value})
        except StllrError as exc:
            raise self.wrap(key, exc) from None

    def per_layer(self, value: Any, search: dict[str, Param], kind: str, model_fixed: dict[str, Any]) -> list[str]:
        if value is None or value == []:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail("per_layer", f"{value!r} is not a list", f"write e.g. per_layer: [alpha_post]")
        for f in value:
            if f not in STLLR_FACTORS:
                raise self.fail("per_layer", f"{f!r} is not a per-layer factor{closest(str(f), STLLR_FACTORS)}",
                                f"use some of {', '.join(STLLR_FACTORS)}")
            if f not in search:
                raise self.fail("per_layer", f"{f} is not searched, so it has no distribution to repeat per layer",
                                f"add search.{f} or remove {f} from per_layer")
        if len(set(value)) != len(value):
            raise self.fail("per_layer", "a factor is listed twice", "list each factor once")
        depth = search.get("depth")
        most = int(depth.largest()) if depth is not None else int(model_fixed.get("depth", NetworkSpec.depth))
        if (2 * most if kind == "vgg" else most) < 2:
            raise self.fail("per_layer", "the network never has more than one hidden layer (depth 1)",
                            "search depth (e.g. {type: int, low: 1, high: 3}) or remove per_layer")
        return list(value)

    def learn_steps(self, search: dict[str, Param], fixed: dict[str, dict[str, Any]], T: int | None) -> None:
        T_low = search["T"].smallest() if "T" in search else T
        if T_low is None:
            return
        if "learn_steps" in search:
            key, most = "search.learn_steps.high", search["learn_steps"].largest()
        elif "learn_steps" in fixed.get("stllr", {}):
            key, most = "fixed.stllr.learn_steps", fixed["stllr"]["learn_steps"]
        else:
            key, most = "fixed.stllr.learn_steps", STLLRConfig.learn_steps
            if most > T_low:
                raise self.fail(key, f"the default learn_steps={most} exceeds T={T_low}",
                                f"set fixed.stllr.learn_steps <= {T_low} or search it")
        if most is not None and most > T_low:
            raise self.fail(key, f"learn_steps={most} exceeds T={T_low} (the dataset's time steps)",
                            f"use learn_steps <= {T_low} (learn_steps = T learns at every step)")

    def baseline(self, value: Any, rules: list[str], taken: dict[str, str], kind: str, model_fixed: dict[str, Any],
                 fixed: dict[str, dict[str, Any]], dataset: str,
                 options: dict[str, Any]) -> tuple[dict[str, Param], int, list[str], list[str]]:
        d = self.mapping("baseline", value, ("search", "trials", "loss", "stllr_loss"))
        if d and "bptt" not in rules:
            raise self.fail("baseline", "rules has no bptt, so there is no baseline to search",
                            "add bptt to rules or remove baseline")
        allowed = tuple(k for k, s in SECTIONS.items() if s in ("training", "data", "network") and k not in ARCH)
        # BPTT's own search overrides the fixed values for BPTT only (e.g. S-TLLR at a fixed lr)
        search = self.search("baseline.search", d.get("search"), {}, kind, model_fixed, fixed, dataset, options,
                             allowed)
        trials = d.get("trials", 3 if search else 1)
        if not is_int(trials) or trials < 1:
            raise self.fail("baseline.trials", f"{trials!r} is not an integer >= 1", "give how many BPTT "
                            "configurations to train per architecture, e.g. 2")
        self.limit("baseline.trials", "trials", trials)
        if not search and trials > 1:
            raise self.fail("baseline.trials", f"{trials} without baseline.search would train one BPTT "
                            "configuration several times", "add baseline.search (e.g. lr) or use trials: 1 "
                            "(budget.seeds are the repeats)")
        counts = [p.count() for p in search.values()]
        if search and all(n is not None for n in counts):
            size = math.prod(n for n in counts if n is not None)
            if trials > size:
                raise self.fail("baseline.trials", f"{trials} exceeds the {size} distinct baseline configurations",
                                f"use trials <= {size} or make a parameter continuous")
        losses = self.losses("baseline.loss", d.get("loss", ["per_step"]), BPTT_LOSSES, "BPTT",
                             "per_step is S-TLLR's own objective (the default), sum_output the paper's")
        stllr_losses = self.losses("baseline.stllr_loss", d.get("stllr_loss", ["per_step"]), STLLR_LOSSES, "S-TLLR",
                                   "per_step is its own (the default); with sum_output too, S-TLLR at its chosen "
                                   "factors also trains on CE(sum_t o[t]): with baseline.loss [per_step, "
                                   "sum_output] the 2x2 of rule x objective")
        if "sum_output" in stllr_losses and fixed.get("stllr", {}).get("online"):
            raise self.fail("baseline.stllr_loss", "sum_output with fixed.stllr.online: true: online S-TLLR updates "
                            "at every window step, but CE(sum_t o[t]) knows its output error only at the "
                            "sequence's end", "drop sum_output from baseline.stllr_loss or set online: false")
        return search, int(trials), losses, stllr_losses

    def losses(self, key: str, value: Any, allowed: tuple[str, ...], rule: str, hint: str) -> list[str]:
        """A non-empty list of distinct objectives out of ``allowed`` (a single name is a list of one)."""
        losses = [value] if isinstance(value, str) else value
        if (not isinstance(losses, list) or not losses or len(set(map(str, losses))) != len(losses)
                or any(x not in allowed for x in losses)):
            raise self.fail(key, f"{value!r} is not a list of distinct {rule} objectives",
                            f"use some of {', '.join(allowed)}: {hint}")
        return [str(x) for x in losses]

    def objectives(self, value: Any, fixed: dict[str, dict[str, Any]], kind: str = "mlp") -> list[Objective]:
        from study.schema import MEASURES, measure_of

        measure = measure_of(kind)
        own, other = (MEASURES[m][0] for m in (measure, "aee" if measure == "accuracy" else "accuracy"))
        if value is None:
            value = [{"metric": m, "direction": d} for m, d in DEFAULT_OBJECTIVES]
            if measure == "aee":  # a flow network: its AEE in place of an accuracy
                value[0] = {"metric": "val_aee", "direction": "minimize"}
        if not isinstance(value, list) or not value:
            raise self.fail("objectives", f"{value!r} is not a non-empty list",
                            "write e.g. [{metric: val_accuracy, direction: maximize}, learning_macs]")
        out: list[Objective] = []
        known = (*METRICS, *ALIASES)
        for i, item in enumerate(value):
            key = f"objectives[{i}]"
            if isinstance(item, str):
                item = {"metric": item}
            d = self.mapping(key, item, ("metric", "direction"), ("metric",))
            raw = d["metric"]
            metric = metric_name(str(raw))
            if metric is None:
                if str(raw).startswith("test_"):
                    raise self.fail(f"{key}.metric", f"{raw} is the held-out score the report shows; selecting on "
                                    "it would leak the test set", "use val_accuracy")
                raise self.fail(f"{key}.metric", f"unknown metric {raw!r}{closest(str(raw), known)}",
                                f"use a results column ({', '.join(METRICS)}) or an alias ({', '.join(ALIASES)})")
            sense = METRICS[metric]
            direction = {"max": "maximize", "min": "minimize"}.get(d.get("direction", sense), d.get("direction", sense))
            if direction not in ("maximize", "minimize"):
                raise self.fail(f"{key}.direction", f"{d.get('direction')!r} is not a direction",
                                "use maximize or minimize")
            if direction != sense:
                raise self.fail(f"{key}.direction", f"{metric} is better when it is "
                                f"{'higher' if sense == 'maximize' else 'lower'}", f"use direction: {sense}")
            if any(o.metric == metric for o in out):
                raise self.fail(key, f"{metric} is already an objective", "list each metric once")
            if metric in (other, "train_accuracy" if measure == "aee" else None):
                what = "a flow network (model.kind flownet) is scored by its AEE" if measure == "aee" else \
                    f"a {kind} network is a classifier, scored by its accuracy"
                raise self.fail(f"{key}.metric", f"{metric}: {what}", f"use {own}")
            out.append(Objective(metric, direction))
        if any(o.metric.startswith("val_") for o in out):
            vf = fixed.get("data", {}).get("val_fraction", 0.1)
            if vf == 0:
                raise self.fail("fixed.data.val_fraction", "is 0, so there is no validation score to select on",
                                "use a fraction such as 0.2")
        return out

    def constraints(self, value: Any) -> list[Constraint]:
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        out = []
        for i, item in enumerate(value):
            key = f"constraints[{i}]"
            if isinstance(item, str):
                m = re.match(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|<|>|=)\s*(.+?)\s*$", item)
                if m is None:
                    raise self.fail(key, f"{item!r} is not 'metric <= value'", "write e.g. 'learning_memory <= 8 MiB'")
                item = {"metric": m.group(1), "op": m.group(2), "value": m.group(3)}
            d = self.mapping(key, item, ("metric", "op", "value"), ("metric", "op", "value"))
            raw = str(d["metric"])
            # constraints are priced before training: a cost alias means its formula there
            metric = ALIASES.get(f"{raw}_formula") if f"{raw}_formula" in ALIASES else metric_name(raw)
            if metric not in FORMULA_METRICS:
                raise self.fail(key, f"{raw} cannot be priced before training" if metric else
                                f"unknown metric {raw!r}{closest(raw, (*FORMULA_METRICS, *ALIASES))}",
                                f"constrain a formula cost: {', '.join(FORMULA_METRICS)} (or learning_macs, "
                                "learning_memory, forward_macs)")
            op = d["op"]
            if op not in ("<=", ">="):
                raise self.fail(key, f"operator {op!r} is not supported", "use <= or >=")
            q = parse_quantity(d["value"])
            if q is None or not math.isfinite(q[0]):
                raise self.fail(key, f"{d['value']!r} is not a number with an optional unit",
                                "write e.g. 8 MiB, 1.5 GB, 2e9 or 500 M")
            number, is_bytes = q
            if is_bytes and "_bytes_" not in metric:
                raise self.fail(key, f"{metric} is not counted in bytes", "drop the byte unit (e.g. 2e9 or 2 G)")
            if op == "<=" and number <= 0:
                raise self.fail(key, f"nothing costs <= {number:g}", "give a positive limit")
            text = d["value"] if isinstance(d["value"], str) else f"{number:g}"
            out.append(Constraint(metric, op, float(number), text.strip()))
        return out

    def budget(self, value: Any) -> tuple[int, int, list[int], int | None]:
        d = self.mapping("budget", value, ("trials", "epochs", "seeds", "patience"), ("trials", "epochs"))
        patience = d.get("patience")
        if patience is not None:
            if not is_int(patience) or patience < 1:
                raise self.fail("budget.patience", f"{patience!r} is not an integer >= 1",
                                "give the epochs without a better validation result before a run stops, e.g. 3 "
                                "(or null to train every run for budget.epochs)")
            # (a study always has a validation split: fixed.data.val_fraction 0 is refused)
        for k in ("trials", "epochs"):
            if not is_int(d[k]) or d[k] < 1:
                raise self.fail(f"budget.{k}", f"{d[k]!r} is not an integer >= 1", "give a whole number, e.g. 8")
            self.limit(f"budget.{k}", k, d[k])
        seeds = d.get("seeds", [0])
        if is_int(seeds) and seeds >= 1:
            self.limit("budget.seeds", "seeds", seeds)  # a count: never build a list of 10**9 seeds
            seeds = list(range(int(seeds)))
        if isinstance(seeds, list):
            self.limit("budget.seeds", "seeds", len(seeds))
        if (not isinstance(seeds, list) or not seeds or any(not is_int(s) or not 0 <= s < 2**31 for s in seeds)
                or len(set(seeds)) != len(seeds)):
            raise self.fail("budget.seeds", f"{seeds!r} is not a list of distinct seeds in [0, 2**31)",
                            "write e.g. seeds: [0, 1, 2] (or a count: seeds: 3)")
        return int(d["trials"]), int(d["epochs"]), [int(s) for s in seeds], None if patience is None else int(patience)

    def sampler(self, value: Any) -> SamplerSpec:
        if value is None:
            value = {"name": "tpe"}
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or "name" not in value:
            raise self.fail("sampler", f"{value!r} names no sampler", f"write e.g. sampler: {{name: nsga2, seed: 0}}")
        name = value["name"]
        if name not in _SAMPLERS:
            raise self.fail("sampler.name", f"unknown sampler {name!r}{closest(str(name), _SAMPLERS)}",
                            f"use one of {', '.join(_SAMPLERS)}")
        kinds = {"seed": "int", **_SAMPLER_OPTIONS[name]}
        d = self.mapping("sampler", value, ("name", *kinds))
        options: dict[str, Any] = {"seed": 0}
        for k, v in d.items():
            if k == "name":
                continue
            ok = {"int": is_int(v) and v >= (2 if k == "population_size" else 0)
                   and (k != "seed" or v <= MAX_SAMPLER_SEED),
                  "bool": isinstance(v, bool),
                  "prob": v is None or (is_real(v) and 0.0 <= v <= 1.0)}[kinds[k]]
            if not ok:
                want = {"int": "an integer >= 0", "bool": "true or false", "prob": "a probability in [0, 1]"}[kinds[k]]
                fix = f"give {want}"
                if k == "seed":
                    want, fix = f"an integer in [0, {MAX_SAMPLER_SEED}]", "use a seed below 2**32 (numpy's range)"
                elif k == "population_size":
                    want = "an integer >= 2"
                    fix = f"give {want}"
                raise self.fail(f"sampler.{k}", f"{v!r} is not {want}", fix)
            options[k] = v
        return SamplerSpec(name, options)

    def scheduler(self, value: Any, objectives: list[Objective]) -> dict[str, Any] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"name": value}
        d = self.mapping("scheduler", value, ("name", "grace_period", "reduction_factor"), ("name",))
        if d["name"] != "asha":
            raise self.fail("scheduler.name", f"unknown scheduler {d['name']!r}{closest(str(d['name']), ('asha',))}",
                            "use asha or remove scheduler")
        if len(objectives) > 1:
            raise self.fail("scheduler", f"asha stops trials early by one metric, but the study has "
                            f"{len(objectives)} objectives", "remove scheduler (or keep a single objective)")
        if not is_int(d.get("grace_period", 1)) or d.get("grace_period", 1) < 1:
            raise self.fail("scheduler.grace_period", f"{d['grace_period']!r} is not an integer >= 1",
                            "give the epochs every trial runs before it may be stopped")
        rf = d.get("reduction_factor", 2)
        if not is_real(rf) or rf <= 1:
            raise self.fail("scheduler.reduction_factor", f"{rf!r} is not a number > 1", "use e.g. 2 or 3")
        return {"name": "asha", "grace_period": int(d.get("grace_period", 1)), "reduction_factor": rf}

    def resources(self, value: Any) -> tuple[dict[str, float], int | None]:
        d = self.mapping("resources", value, ("cpu", "gpu", "concurrency", "pack"))
        cpu, gpu = d.get("cpu", 1), d.get("gpu", 0)
        if not is_real(cpu) or cpu <= 0:
            raise self.fail("resources.cpu", f"{cpu!r} is not a number > 0", "give the CPUs one trial uses, e.g. 1")
        if not is_real(gpu) or gpu < 0 or (gpu > 1 and gpu != int(gpu)):
            raise self.fail("resources.gpu", f"{gpu!r} is not a GPU share", "use 0, a fraction such as 0.5, "
                            "or a whole number of GPUs")
        conc = d.get("concurrency")
        if conc is not None and (not is_int(conc) or conc < 1):
            raise self.fail("resources.concurrency", f"{conc!r} is not an integer >= 1",
                            "give the most trials to run at once, or null (as many as the resources fit)")
        pack = d.get("pack", "auto")
        if pack != "auto" and (not is_real(pack) or isinstance(pack, bool) or pack != int(pack) or pack < 0):
            raise self.fail("resources.pack", f"{pack!r} is not 'auto' (or 0) or an integer >= 1",
                            "use auto (the seeds of a configuration train as one batched model where the network "
                            "allows), 1 (never) or the most members of a pack, e.g. 8")
        out = {"cpu": float(cpu), "gpu": float(gpu), "pack": 0.0 if pack == "auto" else float(pack)}  # 0: auto
        return out, None if conc is None else int(conc)


def _describe(spec: StudySpec, params: dict[str, Any]) -> str:
    """The cost-relevant settings of a configuration, e.g. ``width=64, depth=1, T=16, learn_steps=1``."""
    arch = spec.arch(params)
    parts = [f"{k}={arch[k]}" for k in ("width", "depth", "T")]
    stllr = spec.fixed.get("stllr", {})
    for k in ("learn_steps", "alpha_post"):
        value = params.get(k, stllr.get(k, getattr(STLLRConfig, k)))
        parts.append(f"{k}={value:g}" if is_real(value) else f"{k}={value}")
    return ", ".join(parts)


def _probe_network(kind: str, fields: dict[str, Any]) -> NetworkSpec:
    """A NetworkSpec with these fields and a stand-in input (the dataset supplies the real one)."""
    # a flownet halves its input depth times: a stand-in every depth up to 12 can halve
    shape = [2, 32, 32] if kind == "vgg" else [2, 4096, 4096] if kind == "flownet" else [8]
    return NetworkSpec.from_dict({**fields, "kind": kind, "input_shape": shape, "num_classes": 2})

