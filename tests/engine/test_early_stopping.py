"""Early stopping on validation (DESIGN §8, "trained to convergence"): the run stops after
``patience`` epochs without a better validation result, the best-validation weights come
back and are the ones evaluated; the state survives a kill and resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stllr_engine import NetworkSpec, STLLRConfig, TrainConfig, build_network, fit
from stllr_engine.errors import StllrError
from stllr_engine.train import evaluate


def _loaders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, 3, generator=g)

    def make(n: int):
        x = (torch.rand(n, 8, 10, generator=g) < 0.3).float()
        y = (x.sum(1) @ w).argmax(-1)
        return TensorDataset(x, y)

    train = DataLoader(make(96), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return train, DataLoader(make(48), batch_size=48), DataLoader(make(48), batch_size=48)


def _net():
    return build_network(NetworkSpec(kind="mlp", input_shape=(10,), num_classes=3, width=16, seed=0))


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_patience_stops_and_the_best_validation_weights_are_evaluated(rule):
    train, val, test = _loaders()
    cfg = TrainConfig(rule=rule, stllr=STLLRConfig(learn_steps=4), lr=0.05, epochs=40, patience=2,
                      schedule="constant")
    net = _net()
    ms = list(fit(net, train, cfg, val_loader=val, test_loader=test))
    last = ms[-1]
    assert last["stopped_by"] == "patience" and last["finished"]
    assert len(ms) == last["epochs_trained"] < 40
    # val accuracy per epoch: the epoch's own weights (the last epoch keeps them under epoch_*)
    per_epoch = [m["val_accuracy"] for m in ms[:-1]] + [last["epoch_val_accuracy"]]
    best = last["best_epoch"]
    assert per_epoch[best - 1] == max(per_epoch)
    assert last["epochs_trained"] - best == 2  # two epochs without improvement
    # the reported figures are the best epoch's, and the network holds its weights
    assert last["val_accuracy"] == per_epoch[best - 1]
    best_test = ms[best - 1]["test_accuracy"] if best < len(ms) else last["epoch_test_accuracy"]
    assert last["test_accuracy"] == best_test
    assert evaluate(net, test)["accuracy"] == last["test_accuracy"]
    assert all(m["stopped_by"] is None for m in ms[:-1])


def test_max_epochs_restores_the_best_too():
    train, val, test = _loaders(1)
    cfg = TrainConfig(rule="bptt", lr=0.05, epochs=4, patience=100)
    ms = list(fit(_net(), train, cfg, val_loader=val, test_loader=test))
    assert [m["stopped_by"] for m in ms] == [None, None, None, "max_epochs"]
    per_epoch = [m["val_accuracy"] for m in ms[:-1]] + [ms[-1]["epoch_val_accuracy"]]
    assert ms[-1]["val_accuracy"] == max(per_epoch) and ms[-1]["best_epoch"] == per_epoch.index(max(per_epoch)) + 1


def test_without_patience_every_epoch_trains_and_nothing_is_restored():
    train, val, test = _loaders()
    ms = list(fit(_net(), train, TrainConfig(rule="bptt", lr=0.05, epochs=3), val_loader=val, test_loader=test))
    assert [m["stopped_by"] for m in ms] == [None, None, "fixed"]
    assert "epoch_val_accuracy" not in ms[-1] and ms[-1]["best_epoch"] is None and ms[-1]["epochs_trained"] == 3


def test_patience_needs_a_validation_split():
    train, _, test = _loaders()
    with pytest.raises(StllrError, match="no validation split"):
        fit(_net(), train, TrainConfig(rule="bptt", patience=2), test_loader=test)
    with pytest.raises(StllrError, match="patience=0"):
        TrainConfig(patience=0)


def test_a_killed_run_resumes_its_early_stopping_state_exactly(tmp_path):
    cfg = TrainConfig(rule="stllr", stllr=STLLRConfig(learn_steps=4), lr=0.05, epochs=40, patience=3,
                      schedule="constant")
    train, val, test = _loaders()
    whole = list(fit(_net(), train, cfg, val_loader=val, test_loader=test))
    assert whole[-1]["stopped_by"] == "patience"
    ckpt = tmp_path / "c.pt"
    train, val, test = _loaders()
    first = []
    for m in fit(_net(), train, cfg, val_loader=val, test_loader=test, checkpoint_path=ckpt):
        first.append(m)
        if len(first) == len(whole) - 2:
            break  # killed two epochs before it stops
    train2, val2, test2 = _loaders()
    rest = list(fit(_net(), train2, cfg, val_loader=val2, test_loader=test2, checkpoint_path=ckpt, resume=True))
    keys = ("val_accuracy", "test_accuracy", "train_loss", "stopped_by", "best_epoch", "epochs_trained")
    assert [[m[k] for k in keys] for m in first + rest] == [[m[k] for k in keys] for m in whole]
    again = list(fit(_net(), train2, cfg, val_loader=val2, test_loader=test2, checkpoint_path=ckpt, resume=True))
    assert len(again) == 1 and again[0]["resumed_finished"] and again[0]["test_accuracy"] == whole[-1]["test_accuracy"]
