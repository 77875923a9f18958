"""Search spaces: study files (YAML) that say what a sweep compares, and their presets.

A study file names the study; the dataset and its options; the model family and its
fixed settings; the rules (S-TLLR searched, BPTT as the matched baseline, with an optional
small search of its own per architecture); the search parameters and their distributions
(per layer where the network has more than one hidden layer); the objectives; constraints
priced before training from the cost formulas; the budget; the sampler; an optional
scheduler; the resources per trial; and the storage. Every key, its type, default and
meaning: ``spaces/SCHEMA.md``.

>>> from spaces import load_study
>>> spec = load_study("quickstart")
>>> [(o.metric, o.direction) for o in spec.objectives][0]
('val_accuracy', 'maximize')
>>> import optuna
>>> study = optuna.create_study(directions=[o.direction for o in spec.objectives],
...                             sampler=spec.make_sampler())
>>> params = spec.suggest(study.ask())
>>> sorted(spec.arch(params))
['T', 'depth', 'model', 'width']

Mistakes raise :class:`stllr_engine.errors.StllrError` with one line naming the file, the
key and the fix, before anything starts.
"""

from __future__ import annotations

from spaces._load import PRESET_GROUPS, PRESET_NAMES, apply_overrides, load_study, preset_path
from spaces._names import ALIASES, FORMULA_METRICS, METRICS, SECTIONS, parse_quantity
from spaces._params import Param
from spaces._study import Constraint, Objective, SamplerSpec, StudySpec
from stllr_engine.errors import StllrError

__all__ = [
    "load_study", "StudySpec", "Param", "Objective", "Constraint", "SamplerSpec", "StllrError",
    "PRESET_NAMES", "PRESET_GROUPS", "preset_path", "apply_overrides", "parse_quantity",
    "METRICS", "FORMULA_METRICS", "ALIASES", "SECTIONS",
]
