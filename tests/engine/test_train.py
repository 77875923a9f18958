"""Training API: learning happens, seeds repeat bit-for-bit, checkpoints round-trip and resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stllr_engine import NetworkSpec, STLLRConfig, StllrError, TrainConfig, build_network, evaluate, fit
from stllr_engine.train import load_checkpoint, restore, save_checkpoint


def _task(n: int = 192, T: int = 10, channels: int = 20, seed: int = 0):
    """Two classes: channels 0-9 fire early, or channels 10-19 fire early (then noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = (torch.rand(n, T, channels, generator=g) < 0.05).float()
    for i, lab in enumerate(labels.tolist()):
        x[i, : T // 2, lab * 10 : lab * 10 + 10] = (torch.rand(T // 2, 10, generator=g) < 0.6).float()
    return TensorDataset(x, labels)


SPEC = NetworkSpec(kind="rsnn", input_shape=(20,), num_classes=2, width=32, depth=1, gamma=0.8, theta=0.5,
                   surrogate="sigmoid", gamma_o=0.8, seed=3)


def _loader(ds, seed=0):
    return DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_both_rules_learn_a_small_task(rule):
    train, test = _task(seed=0), _task(n=96, seed=1)
    net = build_network(SPEC)
    before = evaluate(net, DataLoader(test, batch_size=48))
    cfg = TrainConfig(rule=rule, stllr=STLLRConfig(learn_steps=6, alpha_post=1.0), lr=5e-3, epochs=3)
    metrics = list(fit(net, _loader(train), cfg, test_loader=DataLoader(test, batch_size=48)))
    print(rule, before["accuracy"], [round(m["test_accuracy"], 3) for m in metrics])
    assert metrics[-1]["test_accuracy"] >= 0.85
    assert metrics[-1]["test_accuracy"] >= before["accuracy"] + 0.2
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    m = metrics[-1]
    for key in ("train_accuracy", "test_loss", "learning_macs_formula_per_sample", "forward_macs_formula_per_sample",
                "learning_memory_bytes_measured_per_batch", "learning_macs_measured_per_sample",
                "peak_step_bytes_measured_per_batch", "wall_time_s", "samples_per_s", "lr", "T", "batch",
                "learn_steps", "bytes_per_value", "counting"):
        assert key in m
    assert m["forward_macs_formula_per_sample"] == 10 * (20 * 32 + 32 * 32 + 32 * 2)
    assert (m["T"], m["batch"], m["bytes_per_value"]) == (10, 32, 4)
    assert m["learn_steps"] == (6 if rule == "stllr" else 10)
    assert metrics[0]["lr"] == pytest.approx(5e-3) and m["lr"] < 5e-3  # cosine schedule


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_fit_uses_its_seed(rule):
    """Two seeds shuffle differently (global-RNG loader): the trained weights differ."""
    ds = _task()
    states = []
    for seed in (1, 2):
        net = build_network(SPEC)
        cfg = TrainConfig(rule=rule, lr=1e-2, epochs=1, seed=seed, measure_costs=False)
        list(fit(net, DataLoader(ds, batch_size=32, shuffle=True), cfg))
        states.append(net.layers[0].weight.detach().clone())
    assert not torch.equal(states[0], states[1])


@pytest.mark.parametrize("rule, optimizer", [("stllr", "adam"), ("bptt", "sgd")])
def test_seed_makes_runs_bit_for_bit_repeatable(rule, optimizer):
    ds = _task()
    states = []
    for _ in range(2):
        net = build_network(SPEC)
        cfg = TrainConfig(rule=rule, optimizer=optimizer, lr=1e-2, epochs=2, seed=7, measure_costs=False)
        list(fit(net, DataLoader(ds, batch_size=32, shuffle=True), cfg))
        states.append(net.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@pytest.mark.parametrize("seeded_loader", [False, True])
def test_checkpoint_round_trip_and_resume(tmp_path, seeded_loader):
    ds = _task()

    def loader():
        g = torch.Generator().manual_seed(5) if seeded_loader else None
        return DataLoader(ds, batch_size=32, shuffle=True, generator=g)

    cfg = TrainConfig(rule="stllr", stllr=STLLRConfig(learn_steps=4, layer_factors={0: {"alpha_post": 1.0}}),
                      epochs=3, seed=1, measure_costs=False)
    full = build_network(SPEC)
    list(fit(full, loader(), cfg))

    path = tmp_path / "ckpt.pt"
    first = build_network(SPEC)
    it = fit(first, loader(), cfg, checkpoint_path=path)
    next(it)  # one epoch, then "crash"
    del it
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 1 and raw["config"]["network"]["width"] == 32
    assert raw["config"]["train"]["stllr"]["layer_factors"] == {"0": {"alpha_post": 1.0}}

    resumed, cfg2, _ = restore(path)
    assert cfg2 == cfg
    list(fit(resumed, loader(), cfg2, checkpoint_path=path, resume=True))
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert load_checkpoint(path)["epoch"] == 3


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    net = build_network(SPEC)
    path = tmp_path / "c.pt"
    save_checkpoint(path, net, None, None, 1, TrainConfig())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StllrError, match="cannot be read.*corrupt"):
        load_checkpoint(path)
    with pytest.raises(StllrError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_input_shape_is_a_clear_error():
    net = build_network(SPEC.replace(input_shape=(21,)))
    with pytest.raises(StllrError, match=r"per-step shape \(20,\) but the network expects \(21,\)"):
        list(fit(net, DataLoader(_task(), batch_size=32), TrainConfig(epochs=1)))


def test_bad_config_values_are_clear_errors():
    cases = [
        (lambda: TrainConfig(rule="rtrl"), "training: rule='rtrl': use one of 'stllr', 'bptt'"),
        (lambda: STLLRConfig(learn_steps=0), "S-TLLR: learn_steps=0 must be an integer >= 1"),
        (lambda: STLLRConfig(learn_steps=2.5), "S-TLLR: learn_steps=2.5 must be an integer >= 1"),
        (lambda: STLLRConfig(lambda_pre=1.5), "S-TLLR: lambda_pre=1.5 must lie in [0, 1]"),
        (lambda: STLLRConfig(alpha_post=float("nan")), "S-TLLR: alpha_post=nan must be a finite number"),
        (lambda: STLLRConfig(alpha_post="1"), "S-TLLR: alpha_post='1' must be a finite number"),
        (lambda: STLLRConfig(layer_factors={0: {"gamma": 1.0}}), "layer_factors[0] has unknown keys ['gamma']"),
        (lambda: STLLRConfig(layer_factors={"a": {"alpha_post": 1.0}}), "layer_factors key 'a' is not a layer index"),
        (lambda: STLLRConfig(layer_factors={3: {"alpha_post": 1.0}}).factors(1),
         "names layer 3, but the network has 1 hidden layers"),
        (lambda: TrainConfig(epochs=2.5), "training: epochs=2.5 must be an integer >= 1"),
        (lambda: TrainConfig(lr=float("inf")), "training: lr=inf must lie in (0, inf)"),
        (lambda: TrainConfig(weight_decay=-1), "training: weight_decay=-1 must lie in [0, inf)"),
        (lambda: TrainConfig(rule="bptt", loss="mse"),
         "training: loss='mse': use one of 'sum_output', 'per_step', 'per_step_all'"),
        (lambda: TrainConfig(rule="stllr", loss="per_step_all"), "per_step_all is per_step with learn_steps = T) or 'sum_output'"),
        (lambda: TrainConfig.from_dict({"rule": "bptt", "loss": "per_step"}),
         "loss='per_step' with rule 'bptt' averages over the last learn_steps steps: set training.stllr.learn_steps"),
        (lambda: TrainConfig.from_dict({"rule": "bptt", "loss": "per_step", "stllr": {"alpha_post": 1.0}}),
         "set training.stllr.learn_steps"),
    ]
    for make, message in cases:
        with pytest.raises(StllrError) as info:
            make()
        assert str(info.value).count("\n") == 0
        assert message in str(info.value), (message, str(info.value))


def test_layer_factor_keys_from_json_are_honoured():
    from_json = STLLRConfig(layer_factors={"0": {"alpha_post": 1.0, "lambda_pre": 0.9}})
    assert from_json.factors(1)[0].alpha_post == 1.0 and from_json.factors(1)[0].lambda_pre == 0.9
    assert STLLRConfig.from_dict(from_json.to_dict()) == from_json


def test_data_mistakes_are_clear_errors(tmp_path):
    x = (torch.rand(8, 5, 20) < 0.3).float()
    net = build_network(SPEC)
    cfg = TrainConfig(epochs=1, measure_costs=False)
    bad = [
        (TensorDataset(x, torch.full((8,), 2)), "labels must lie in [0, 1] for a 2-class network, got 2..2"),
        (TensorDataset(x, torch.zeros(8, 3, dtype=torch.long)), "per-step labels must be [B, T] = (8, 5), got (8, 3)"),
        (TensorDataset(x[:, :0], torch.zeros(8, dtype=torch.long)), "data frames must be [B, T, ...] with T >= 1"),
        (TensorDataset(x, torch.zeros(8)), "labels must be integer class indices"),
    ]
    for ds, message in bad:
        with pytest.raises(StllrError, match=None) as info:
            list(fit(net, DataLoader(ds, batch_size=8), cfg))
        assert message in str(info.value), (message, str(info.value))
    with pytest.raises(StllrError, match="device='mps' is not supported"):
        fit(net, DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long))), TrainConfig(device="mps"))
    with pytest.raises(StllrError, match="is a folder"):
        fit(net, [], cfg, checkpoint_path=tmp_path)


def test_per_step_labels_through_fit():
    x = (torch.rand(16, 6, 20) < 0.3).float()
    labels = torch.randint(0, 2, (16, 6))
    net = build_network(SPEC)
    m = list(fit(net, DataLoader(TensorDataset(x, labels), batch_size=8), TrainConfig(epochs=1)))
    assert 0.0 <= m[0]["train_accuracy"] <= 1.0 and m[0]["train_objective"] > 0


def test_resume_refuses_other_settings(tmp_path):
    ds = _task()
    path = tmp_path / "r.pt"
    cfg = TrainConfig(rule="stllr", epochs=2, measure_costs=False)
    list(fit(build_network(SPEC), DataLoader(ds, batch_size=32), cfg, checkpoint_path=path))
    for other, changed in [(TrainConfig(rule="bptt", epochs=2), "rule"), (TrainConfig(rule="stllr", epochs=4), "epochs"),
                           (TrainConfig(rule="stllr", epochs=2, optimizer="sgd"), "optimizer")]:
        with pytest.raises(StllrError, match=f"other settings \\({changed} differ"):
            fit(build_network(SPEC), DataLoader(ds, batch_size=32), other, checkpoint_path=path, resume=True)
    with pytest.raises(StllrError, match="another network spec"):
        fit(build_network(SPEC.replace(width=16)), DataLoader(ds, batch_size=32), cfg, checkpoint_path=path, resume=True)
    # where to resume from: each missing piece is one line; a folder means its checkpoint.pt
    loader = DataLoader(ds, batch_size=32)
    with pytest.raises(StllrError, match="resume=True needs a checkpoint_path"):
        fit(build_network(SPEC), loader, cfg, resume=True)
    with pytest.raises(StllrError, match="does not exist: start without resume"):
        fit(build_network(SPEC), loader, cfg, checkpoint_path=tmp_path / "none.pt", resume=True)
    with pytest.raises(StllrError, match=r"no checkpoint there \(expected .*checkpoint.pt\)"):
        fit(build_network(SPEC), loader, cfg, resume_from=tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(path.read_bytes())
    done = list(fit(build_network(SPEC), loader, cfg, resume_from=tmp_path / "run"))
    assert [m["epoch"] for m in done] == [2] and done[0].get("resumed_finished")


def test_dfa_training_checkpoint_restores_the_same_feedback(tmp_path):
    ds = _task()
    cfg = TrainConfig(rule="stllr", stllr=STLLRConfig(learn_steps=4, learning_signal="dfa"), epochs=1,
                      measure_costs=False)
    net = build_network(SPEC)
    list(fit(net, DataLoader(ds, batch_size=32), cfg, checkpoint_path=tmp_path / "d.pt"))
    again, _, _ = restore(tmp_path / "d.pt")
    assert torch.equal(again.feedback_matrix(0), net.feedback_matrix(0))
    assert evaluate(again, DataLoader(ds, batch_size=64)) == evaluate(net, DataLoader(ds, batch_size=64))


def test_unknown_keys_in_stored_configs_are_clear_errors():
    with pytest.raises(StllrError, match=r"network: unknown keys \['hidden'\]: valid keys are"):
        NetworkSpec.from_dict({"kind": "mlp", "hidden": 3})
    with pytest.raises(StllrError, match=r"S-TLLR: unknown keys \['delay_ls'\]"):
        STLLRConfig.from_dict({"delay_ls": 5})
    with pytest.raises(StllrError, match=r"training: unknown keys \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_online_stllr_steps_the_optimiser_inside_the_step_and_measures_without_moving():
    """fit with online S-TLLR equals stllr_step(..., optimizer=) called by hand on the same batches,
    and measuring its costs on the first batch changes no weight."""
    from stllr_engine.stllr import stllr_step

    ds = _task(n=64)
    rule = STLLRConfig(learn_steps=4, alpha_post=1.0, online=True)
    cfg = TrainConfig(rule="stllr", stllr=rule, optimizer="sgd", lr=0.05, momentum=0.0, epochs=1,
                      schedule="constant", measure_costs=True)
    net = build_network(SPEC)
    m = list(fit(net, DataLoader(ds, batch_size=32), cfg))[-1]
    assert m["mode"] == "chunked+online" and m["learning_memory_bytes_measured_per_batch"] > 0
    by_hand = build_network(SPEC)
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.05, momentum=0.0)
    for x, y in DataLoader(ds, batch_size=32):
        opt.zero_grad(set_to_none=True)
        stllr_step(by_hand, x.transpose(0, 1).contiguous(), y, rule, optimizer=opt)
    for k, v in net.state_dict().items():
        assert torch.allclose(v, by_hand.state_dict()[k], rtol=0, atol=1e-6), k
    assert not torch.equal(net.layers[0].weight, build_network(SPEC).layers[0].weight)


@pytest.mark.parametrize("rule, loss", [("bptt", None), ("bptt", "sum_output"), ("bptt", "per_step"),
                                        ("bptt", "per_step_all"), ("stllr", None), ("stllr", "per_step")])
def test_the_chosen_loss_is_trained_and_reported(rule, loss):
    """``train_objective`` is the value of the chosen loss (one full batch, measured before
    the update), ``loss_kind`` names it; ``train_loss`` stays CE(Σ_t o[t]) for every loss."""
    from stllr_engine.reference import reference_bptt_loss

    ds = _task(n=32, T=10)
    cfg = TrainConfig(rule=rule, loss=loss, stllr=STLLRConfig(learn_steps=4), epochs=1, lr=1e-2, measure_costs=False)
    kind = cfg.loss_kind
    assert kind == (loss or ("per_step" if rule == "stllr" else "sum_output"))
    net = build_network(SPEC)
    x, y = ds.tensors
    with torch.no_grad():
        want = reference_bptt_loss(net, x.transpose(0, 1), y, kind, 4 if kind == "per_step" else None)
        plain = reference_bptt_loss(net, x.transpose(0, 1), y)
    m = list(fit(net, DataLoader(ds, batch_size=32), cfg))[-1]
    assert m["loss_kind"] == kind
    assert m["loss_steps"] == (4 if kind == "per_step" else 10)
    assert m["train_objective"] == pytest.approx(float(want), rel=1e-5)
    assert m["train_loss"] == pytest.approx(float(plain), rel=1e-5)


def test_bptt_per_step_with_measured_costs_and_per_step_labels():
    x = (torch.rand(16, 6, 20) < 0.3).float()
    labels = torch.randint(0, 2, (16, 6))
    cfg = TrainConfig(rule="bptt", loss="per_step", stllr=STLLRConfig(learn_steps=3), epochs=1)
    m = list(fit(build_network(SPEC), DataLoader(TensorDataset(x, labels), batch_size=8), cfg))[-1]
    assert m["loss_kind"] == "per_step" and m["loss_steps"] == 3 and m["train_objective"] > 0
    assert m["learning_macs_measured_per_sample"] > 0 and m["learn_steps"] == 6  # BPTT's costs: all T steps
    with pytest.raises(StllrError, match="learn_steps=7 exceeds the T=6 steps"):
        cfg7 = TrainConfig(rule="bptt", loss="per_step", stllr=STLLRConfig(learn_steps=7), epochs=1)
        list(fit(build_network(SPEC), DataLoader(TensorDataset(x, labels), batch_size=8), cfg7))


def test_resume_refuses_another_loss(tmp_path):
    ds = _task(n=64)
    path = tmp_path / "b.pt"
    cfg = TrainConfig(rule="bptt", epochs=2, measure_costs=False)  # loss unset: BPTT's own, sum_output
    list(fit(build_network(SPEC), DataLoader(ds, batch_size=32), cfg, checkpoint_path=path))
    for loss in ("per_step", "per_step_all"):
        other = TrainConfig(rule="bptt", loss=loss, epochs=2, measure_costs=False)
        with pytest.raises(StllrError, match=r"other settings \(loss differ"):
            fit(build_network(SPEC), DataLoader(ds, batch_size=32), other, checkpoint_path=path, resume=True)
    # the same objective named explicitly is the same setting
    same = TrainConfig(rule="bptt", loss="sum_output", epochs=2, measure_costs=False)
    done = list(fit(build_network(SPEC), DataLoader(ds, batch_size=32), same, checkpoint_path=path, resume=True))
    assert done[0].get("resumed_finished") and done[0]["loss_kind"] == "sum_output"
    # a per_step checkpoint: another window is another objective
    path2 = tmp_path / "p.pt"
    cfg2 = TrainConfig(rule="bptt", loss="per_step", stllr=STLLRConfig(learn_steps=4), epochs=1, measure_costs=False)
    list(fit(build_network(SPEC), DataLoader(ds, batch_size=32), cfg2, checkpoint_path=path2))
    assert load_checkpoint(path2)["config"]["train"]["loss"] == "per_step"
    other2 = TrainConfig(rule="bptt", loss="per_step", stllr=STLLRConfig(learn_steps=5), epochs=1, measure_costs=False)
    with pytest.raises(StllrError, match=r"other settings \(stllr differ"):
        fit(build_network(SPEC), DataLoader(ds, batch_size=32), other2, checkpoint_path=path2, resume=True)
    restored = restore(path2)[1]
    assert restored == cfg2 and restored.loss_kind == "per_step"
