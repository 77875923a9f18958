"""S-TLLR / BPTT learning engine for spiking neural networks.

The public surface; everything else is an implementation detail::

    from stllr_engine import NetworkSpec, build_network, STLLRConfig, TrainConfig, fit, evaluate

* neurons and surrogates: :mod:`stllr_engine.neurons`
* networks (``rsnn``, ``mlp``, ``vgg``; presets ``shd_rsnn``, ``vgg9``): :mod:`stllr_engine.network`
* S-TLLR (DESIGN §3): :mod:`stllr_engine.stllr`; BPTT: :mod:`stllr_engine.bptt`; what a
  step of either takes and gives (``Probe``, ``StepStats``): :mod:`stllr_engine.step_types`
* naive references for tests: :mod:`stllr_engine.reference`
* costs (formulas and measurements, DESIGN §4): :mod:`stllr_engine.costs`
* training loop and checkpoints: :mod:`stllr_engine.train`
* one experiment (data, validation split, network, training, one seed): :mod:`stllr_engine.experiment`
"""

from stllr_engine.bptt import bptt_step
from stllr_engine.costs import CostProbe, formula_costs, measure_costs
from stllr_engine.errors import StllrError
from stllr_engine.experiment import DataConfig, ExperimentConfig, RuntimeConfig, run_experiment
from stllr_engine.network import PRESETS, Network, NetworkSpec, build_network, preset
from stllr_engine.neurons import SURROGATES, LIFParameters, LIFState, lif_step, readout_step
from stllr_engine.step_types import Probe, StepStats
from stllr_engine.stllr import STLLR_PRESETS, STLLRConfig, stllr_step
from stllr_engine.train import TrainConfig, evaluate, fit, load_checkpoint, restore, save_checkpoint

__all__ = [
    "CostProbe",
    "DataConfig",
    "ExperimentConfig",
    "LIFParameters",
    "LIFState",
    "Network",
    "NetworkSpec",
    "PRESETS",
    "Probe",
    "RuntimeConfig",
    "STLLRConfig",
    "STLLR_PRESETS",
    "SURROGATES",
    "StepStats",
    "StllrError",
    "TrainConfig",
    "bptt_step",
    "build_network",
    "evaluate",
    "fit",
    "formula_costs",
    "lif_step",
    "load_checkpoint",
    "measure_costs",
    "preset",
    "readout_step",
    "restore",
    "run_experiment",
    "save_checkpoint",
    "stllr_step",
]
