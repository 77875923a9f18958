"""ExperimentConfig round trips; run_experiment: one seed, a held-out validation split,
checkpoints as a sweep uses them (resume_from, finished runs, exempt settings)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from stllr_engine import StllrError
from stllr_engine.experiment import DataConfig, ExperimentConfig, RuntimeConfig, load_data, run_experiment
from stllr_engine.train import load_checkpoint

NET = {"kind": "mlp", "width": 24, "gamma": 0.9, "theta": 0.5, "surrogate": "sigmoid", "gamma_o": 0.9}


def _cfg(seed: int = 0, rule: str = "stllr", epochs: int = 2, **training) -> ExperimentConfig:
    train = {"rule": rule, "epochs": epochs, "lr": 3e-3, "measure_costs": False,
             "stllr": {"learn_steps": 4, "lambda_pre": 1.0, "alpha_post": 1.0}, **training}
    return ExperimentConfig.for_dataset(
        "synthetic_temporal", {"T": 12, "channels": 8, "samples_per_class": 24},
        network=NET, training=train, data={"batch_size": 16, "val_fraction": 0.25},
        runtime={"threads": 1}, seed=seed)


def _state(metrics):
    return [(m["train_loss"], m["val_accuracy"], m["test_accuracy"]) for m in metrics]


def test_round_trips_through_dict_json_and_yaml():
    cfg = _cfg(seed=5)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_json(cfg.to_json()) == cfg
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.network.seed == cfg.training.seed == 5
    assert cfg.network.input_shape == (8,) and cfg.network.num_classes == 4


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["data"].update(dataset="mnist"), "dataset='mnist' is unknown"),
    (lambda d: d["data"].update(options={"TT": 3}), "has no option 'TT'"),
    (lambda d: d["training"]["stllr"].update(learn_steps=13), "learn_steps=13 exceeds the dataset's T=12"),
    (lambda d: (d["training"].update(rule="bptt", loss="per_step"), d["training"]["stllr"].update(learn_steps=13)),
     "loss='per_step' averages over training.stllr.learn_steps=13 steps, more than the dataset's T=12"),
    (lambda d: d["training"].update(loss="per_step_all"), "per_step_all is per_step with learn_steps = T"),
    (lambda d: d["training"].update(rule="bptt", loss="l2"), "loss='l2': use one of 'sum_output', 'per_step'"),
    (lambda d: d["runtime"].update(dtype="float16"), "dtype='float16'"),
    (lambda d: d.update(seed=-1), "seed=-1 must be an integer >= 0"),
    (lambda d: d.update(colour=1), "unknown keys ['colour']"),
    (lambda d: d["data"].update(val_fraction=0.95), "val_fraction=0.95 must lie in [0, 0.9]"),
])
def test_bad_configs_are_one_line_errors(mutate, message):
    d = _cfg().to_dict()
    mutate(d)
    with pytest.raises(StllrError) as err:
        ExperimentConfig.from_dict(d)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_loss_enters_the_result_keys_as_the_objective_that_runs():
    """An unset loss is the rule's own: resuming with it named is the same experiment."""
    unset = _cfg(rule="bptt")
    assert unset.result_keys()["training.loss"] == "sum_output"
    assert _cfg(rule="bptt", loss="sum_output").result_keys() == unset.result_keys()
    assert _cfg(rule="bptt", loss="per_step").result_keys()["training.loss"] == "per_step"
    assert _cfg().result_keys()["training.loss"] == "per_step"
    d = unset.to_dict()
    del d["training"]["loss"]  # a config stored before the key existed
    assert ExperimentConfig.from_dict(d).result_keys() == unset.result_keys()


def test_validation_split_is_held_out_of_training_and_fixed_by_the_seed():
    def split(seed):
        train, val, test = load_data(_cfg(seed=seed))
        return sorted(train.dataset.indices), sorted(val.dataset.indices), len(test.dataset)

    tr1, va1, n_test = split(1)
    assert not set(tr1) & set(va1)
    assert len(va1) == round(0.25 * (len(tr1) + len(va1)))
    assert split(1)[:2] == (tr1, va1)
    assert split(2)[1] != va1
    assert n_test > 0


def test_one_seed_gives_identical_runs_and_two_seeds_differ():
    a = list(run_experiment(_cfg(seed=1)))
    b = list(run_experiment(_cfg(seed=1)))
    c = list(run_experiment(_cfg(seed=2)))
    assert _state(a) == _state(b)
    assert _state(a) != _state(c)
    assert a[-1]["finished"] and not a[0]["finished"]
    for key in ("val_accuracy", "val_loss", "test_accuracy", "test_loss", "T", "batch", "learn_steps",
                "learning_macs_formula_per_sample", "learning_memory_bytes_formula_per_sample"):
        assert key in a[-1], key
    assert a[-1]["T"] == 12 and a[-1]["batch"] == 16 and a[-1]["learn_steps"] == 4


def test_seed_reaches_the_initialisation():
    from stllr_engine.network import build_network

    w1 = build_network(_cfg(seed=1).network).layers[0].weight
    w2 = build_network(_cfg(seed=2).network).layers[0].weight
    assert not torch.equal(w1, w2)


def test_resume_from_another_folder_continues_bit_for_bit(tmp_path):
    full = list(run_experiment(_cfg(epochs=3), checkpoint_dir=tmp_path / "full"))
    first = run_experiment(_cfg(epochs=3), checkpoint_dir=tmp_path / "a")
    next(first)
    first.close()  # stopped after epoch 1
    # Ray restores a checkpoint into another folder: resume from there, write elsewhere
    os.makedirs(tmp_path / "restored")
    os.replace(tmp_path / "a" / "checkpoint.pt", tmp_path / "restored" / "checkpoint.pt")
    rest = list(run_experiment(_cfg(epochs=3), checkpoint_dir=tmp_path / "b", resume_from=tmp_path / "restored"))
    assert [m["epoch"] for m in rest] == [2, 3]
    assert _state(rest) == _state(full[1:])
    assert os.path.exists(tmp_path / "b" / "checkpoint.pt")


def test_finished_checkpoint_yields_its_final_metrics(tmp_path):
    done = list(run_experiment(_cfg(), checkpoint_dir=tmp_path))
    again = list(run_experiment(_cfg(), checkpoint_dir=tmp_path, resume=True))
    assert len(again) == 1 and again[0]["resumed_finished"]
    assert again[0]["test_accuracy"] == done[-1]["test_accuracy"] and again[0]["epoch"] == 2


def test_resume_errors(tmp_path):
    with pytest.raises(StllrError, match="does not exist: start without resume"):
        list(run_experiment(_cfg(), checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(StllrError, match="no checkpoint there"):
        list(run_experiment(_cfg(), resume_from=tmp_path / "nowhere"))
    list(run_experiment(_cfg(epochs=1), checkpoint_dir=tmp_path))
    # threads do not change results: exempt from the check
    other_threads = _cfg(epochs=1).replace(runtime=RuntimeConfig(threads=2))
    list(run_experiment(other_threads, checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(StllrError, match=r"another experiment \(training.lr differ\)"):
        list(run_experiment(_cfg(epochs=1, lr=1e-2), checkpoint_dir=tmp_path, resume=True))
    with pytest.raises(StllrError, match="data.val_fraction"):
        bad = _cfg(epochs=1)
        bad = bad.replace(data=DataConfig.from_dict({**bad.data.to_dict(), "val_fraction": 0.5}))
        list(run_experiment(bad, checkpoint_dir=tmp_path, resume=True))


def test_checkpoint_is_durable_plain_and_complete(tmp_path):
    old = os.umask(0o022)
    try:
        list(run_experiment(_cfg(epochs=1), checkpoint_dir=tmp_path))
    finally:
        os.umask(old)
    path = tmp_path / "checkpoint.pt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p for p in os.listdir(tmp_path) if p != "checkpoint.pt"] == []  # no temp files left
    raw = torch.load(path, weights_only=True)
    assert raw["versions"]["torch"] == torch.__version__
    assert ExperimentConfig.from_dict(raw["extra"]["experiment"]) == _cfg(epochs=1)
    assert load_checkpoint(path)["rng_state"].device.type == "cpu"


def test_dfa_matrices_are_stored_and_restored(tmp_path):
    from stllr_engine.train import restore

    cfg = _cfg(epochs=1, stllr={"learn_steps": 4, "learning_signal": "dfa"})
    list(run_experiment(cfg, checkpoint_dir=tmp_path))
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert list(raw["dfa_feedback"]) == ["dfa_feedback_0"]
    net, _, _ = restore(tmp_path / "checkpoint.pt")
    assert torch.equal(net.feedback_matrix(0), raw["dfa_feedback"]["dfa_feedback_0"])


def test_threads_and_dtype_are_applied():
    cfg = _cfg(epochs=1).replace(runtime=RuntimeConfig(threads=1, dtype="float64"))
    before = torch.get_num_threads()
    try:
        m = list(run_experiment(cfg))[-1]
        assert torch.get_num_threads() == 1
        assert m["bytes_per_value"] == 8
    finally:
        torch.set_num_threads(before)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda(tmp_path):
    cfg = _cfg(epochs=2, device="cuda")
    gen = run_experiment(cfg, checkpoint_dir=tmp_path)
    next(gen)
    gen.close()
    rest = list(run_experiment(cfg, checkpoint_dir=tmp_path, resume=True))
    assert [m["epoch"] for m in rest] == [2]


def test_the_runtime_switches_deterministic_algorithms_on_and_off():
    """``runtime.deterministic`` reaches torch both ways (the call is skipped only when nothing changes)."""
    import torch

    from stllr_engine.experiment import RuntimeConfig

    before = torch.are_deterministic_algorithms_enabled()
    try:
        RuntimeConfig(deterministic=True).apply(torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        RuntimeConfig(deterministic=True).apply(torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled()
        RuntimeConfig(deterministic=False).apply(torch.device("cpu"))
        assert not torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        RuntimeConfig(deterministic=True).apply(torch.device("cpu"))  # warn-only is not the setting: made strict
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


_ALLOC_PROBE = """
import ctypes, json, torch
from stllr_engine.allocator import keep_freed_memory
class MI2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MI2
kept = keep_freed_memory()
before = libc.mallinfo2()
x = torch.ones(2 << 20)  # 8 MiB: above glibc's default mmap threshold, below the one set
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(json.dumps({"set": kept, "mmapped": during.hblkhd - before.hblkhd, "kept": after.fordblks - before.fordblks}))
"""


@pytest.mark.parametrize("switch", ["1", "0"])
def test_freed_memory_is_kept_for_the_next_step_unless_switched_off(switch):
    """``stllr_engine.allocator``: with it, an 8 MiB tensor comes from the heap and its memory stays
    there once freed (the next step reuses it without page faults); ``STLLR_KEEP_FREED_MEMORY=0``
    leaves glibc's defaults (the tensor is mmapped and given back)."""
    import ctypes
    import json
    import os
    import subprocess
    import sys

    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    out = subprocess.run([sys.executable, "-c", _ALLOC_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "STLLR_KEEP_FREED_MEMORY": switch}).stdout
    got = json.loads(out.strip().splitlines()[-1])
    if switch == "1":
        assert got["set"] is True and got["mmapped"] == 0 and got["kept"] >= 7 << 20
    else:
        assert got["set"] is False and got["mmapped"] >= 8 << 20 and got["kept"] < 1 << 20
