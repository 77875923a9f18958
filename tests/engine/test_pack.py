"""Vectorised trials (issue #16 items 1-3): a member of a pack equals its separate run.

Gradients of one step against :func:`stllr_step` / :func:`bptt_step` for every member
(float64, relative 1e-10), the per-member optimisers against ``torch.optim`` per member,
whole runs (data order, early stopping, schedules, checkpoints) against
:func:`run_experiment`, members that diverge or stop early leaving the others untouched,
and a killed pack resumed exactly.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from stllr_engine import NetworkSpec, STLLRConfig, TrainConfig, bptt_step, build_network, stllr_step
from stllr_engine.errors import StllrError
from stllr_engine.experiment import ExperimentConfig, run_experiment
from stllr_engine.pack import Pack, PackAdam, PackSGD, check_packable, pack_bptt_step, pack_inference, pack_stllr_step
from stllr_engine.pack_fit import run_pack

TOL = 1e-10


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (b.abs().max() + 1e-30))


def _members(spec: NetworkSpec, cfgs: list[TrainConfig], K: int, T: int, B: int, seed: int):
    nets = [build_network(spec.replace(seed=s)).double() for s in range(K)]
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(K, T, B, *spec.input_shape, generator=g) < 0.4).double()
    y = torch.randint(0, spec.num_classes, (K, B), generator=g)
    return nets, x, y


def _worst(pack: Pack, nets, k: int) -> float:
    return max(_rel(stacked.grad[k], own[k].grad) for stacked, own in zip(pack.parameters(), pack.member_parameters(nets)))


# members with their own factors, windows (1 .. T), readout λ and per-layer overrides
_FACTORS = [
    dict(learn_steps=4, lambda_pre=0.5, lambda_post=0.2, alpha_pre=1.0, alpha_post=-1.0),
    dict(learn_steps=12, lambda_pre=0.9, lambda_post=0.7, alpha_pre=0.5, alpha_post=1.0, readout_lambda=0.3,
         layer_factors={0: {"alpha_post": 0.25, "lambda_pre": 1.0}}),
    dict(learn_steps=1, lambda_pre=0.0, lambda_post=1.0, alpha_pre=1.0, alpha_post=0.0, readout_lambda=1.0),
]


@pytest.mark.parametrize("kind,depth,signal,loss,readout_bias", [
    *itertools.product(["mlp", "rsnn"], [1, 2], ["bp", "dfa"], ["per_step", "sum_output"], ["trace"]),
    ("mlp", 2, "bp", "per_step", "error"), ("rsnn", 1, "dfa", "sum_output", "error"),
])
def test_stllr_pack_gradients_equal_each_members_own_step(kind, depth, signal, loss, readout_bias):
    K, T, B = 3, 12, 5
    spec = NetworkSpec(kind=kind, input_shape=(7,), num_classes=4, width=9, depth=depth, gamma=0.7, theta=0.3,
                       gamma_o=0.5, reset="hard" if signal == "dfa" else "soft",
                       surrogate="sigmoid" if depth == 2 else "triangle")
    cfgs = [TrainConfig(rule="stllr", loss=loss, lr=1e-3,
                        stllr=STLLRConfig(learning_signal=signal, readout_bias=readout_bias, **f)) for f in _FACTORS]
    nets, x, y = _members(spec, cfgs, K, T, B, seed=1)
    pack = Pack.from_networks(nets, cfgs)
    stats = pack_stllr_step(pack, x, y, loss=loss)
    for k in range(K):
        nets[k].zero_grad()
        own, _ = stllr_step(nets[k], x[k], y[k], cfgs[k].stllr, loss=loss)
        assert _worst(pack, nets, k) <= TOL
        assert float(stats.objective[k]) == pytest.approx(float(own.objective), rel=TOL)
        assert float(stats.loss[k]) == pytest.approx(float(own.loss), rel=TOL)
        assert int(stats.correct[k]) == int(own.correct)


@pytest.mark.parametrize("kind,depth,loss", list(itertools.product(["mlp", "rsnn"], [1, 2],
                                                                   ["sum_output", "per_step", "per_step_all"])))
def test_bptt_pack_gradients_equal_each_members_own_step(kind, depth, loss):
    K, T, B = 3, 12, 5
    spec = NetworkSpec(kind=kind, input_shape=(7,), num_classes=4, width=9, depth=depth, gamma=0.7, theta=0.3,
                       gamma_o=0.5, reset="hard" if depth == 2 else "soft")
    cfgs = [TrainConfig(rule="bptt", loss=loss, stllr=STLLRConfig(learn_steps=n)) for n in (3, 12, 6)]
    nets, x, y = _members(spec, cfgs, K, T, B, seed=2)
    pack = Pack.from_networks(nets, cfgs)
    stats = pack_bptt_step(pack, x, y, loss=loss)
    for k in range(K):
        nets[k].zero_grad()
        own = bptt_step(nets[k], x[k].contiguous(), y[k], loss=loss, learn_steps=cfgs[k].loss_steps)
        assert _worst(pack, nets, k) <= TOL
        assert float(stats.objective[k]) == pytest.approx(float(own.objective), rel=TOL)
        assert float(stats.loss[k]) == pytest.approx(float(own.loss), rel=TOL)


# convolutional and weight-standardised members (issue #16 item 1: every family)
_CONV = dict(kind="vgg", input_shape=(2, 8, 8), num_classes=4, width=2, gamma=0.7, theta=0.3, gamma_o=0.5)
_FAMILIES = {
    "vgg1-avg": dict(_CONV, depth=1),
    "vgg2-max-ws": dict(_CONV, depth=2, pool="max", weight_standardization=True, surrogate="sigmoid"),
    "vgg2-avg-ws-gain-unbiased-nolastpool": dict(_CONV, depth=2, weight_standardization=True, ws_gain=True,
                                                 ws_variance="unbiased", pool_last_block=False, reset="hard"),
    "mlp2-ws-gain": dict(kind="mlp", input_shape=(7,), num_classes=4, width=9, depth=2, gamma=0.7, theta=0.3,
                         gamma_o=0.5, weight_standardization=True, ws_gain=True),
    "rsnn1-ws-rec-gain": dict(kind="rsnn", input_shape=(7,), num_classes=4, width=9, depth=1, gamma=0.7, theta=0.3,
                              gamma_o=0.5, weight_standardization=True, recurrent_standardization=True, ws_gain=True),
}


@pytest.fixture(params=["auto", "off"])
def fused_mode(request):
    """The fused time step where it builds, and the eager step: both must be exact."""
    from stllr_engine import fused

    with fused.use(request.param):
        yield request.param


@pytest.mark.parametrize("family,signal,loss", [
    *itertools.product(_FAMILIES, ["bp"], ["per_step", "sum_output"]),
    *itertools.product(["vgg2-max-ws", "rsnn1-ws-rec-gain"], ["dfa"], ["per_step"]),
])
def test_conv_and_standardised_packs_equal_each_members_own_stllr_step(family, signal, loss, fused_mode):
    K, T, B = 3, 8, 3
    spec = NetworkSpec(**_FAMILIES[family])
    factors = [dict(f, learn_steps=min(f["learn_steps"], T)) for f in _FACTORS]
    cfgs = [TrainConfig(rule="stllr", loss=loss, stllr=STLLRConfig(learning_signal=signal, **f)) for f in factors]
    nets, x, y = _members(spec, cfgs, K, T, B, seed=5)
    pack = Pack.from_networks(nets, cfgs)
    stats = pack_stllr_step(pack, x, y, loss=loss)
    assert all(not t.requires_grad for t in pack.parameters())
    if spec.ws_gain:  # the gains are parameters of the pack, and learn
        assert pack.layers[0].gain is not None and float(pack.layers[0].gain.grad.abs().max()) > 0
    for k in range(K):
        nets[k].zero_grad()
        own, _ = stllr_step(nets[k], x[k], y[k], cfgs[k].stllr, loss=loss)
        assert _worst(pack, nets, k) <= TOL, k
        assert float(stats.objective[k]) == pytest.approx(float(own.objective), rel=TOL)
        assert int(stats.correct[k]) == int(own.correct)


@pytest.mark.parametrize("family,loss", [*itertools.product(_FAMILIES, ["per_step"]),
                                         ("vgg2-max-ws", "sum_output"), ("vgg1-avg", "per_step_all")])
def test_conv_and_standardised_packs_equal_each_members_own_bptt_step(family, loss, fused_mode):
    K, T, B = 3, 8, 3
    spec = NetworkSpec(**_FAMILIES[family])
    cfgs = [TrainConfig(rule="bptt", loss=loss, stllr=STLLRConfig(learn_steps=n)) for n in (3, 8, 6)]
    nets, x, y = _members(spec, cfgs, K, T, B, seed=6)
    pack = Pack.from_networks(nets, cfgs)
    stats = pack_bptt_step(pack, x, y, loss=loss)
    for k in range(K):
        nets[k].zero_grad()
        own = bptt_step(nets[k], x[k].contiguous(), y[k], loss=loss, learn_steps=cfgs[k].loss_steps)
        assert _worst(pack, nets, k) <= TOL, k
        assert float(stats.objective[k]) == pytest.approx(float(own.objective), rel=TOL)


@pytest.mark.parametrize("family", ["vgg2-max-ws", "vgg2-avg-ws-gain-unbiased-nolastpool"])
def test_conv_pack_inference_equals_each_members_forward(family):
    spec = NetworkSpec(**_FAMILIES[family])
    cfgs = [TrainConfig(rule="stllr")] * 3
    nets, x, _ = _members(spec, cfgs, 3, 6, 4, seed=7)
    o = pack_inference(Pack.from_networks(nets, cfgs), x)
    for k in range(3):
        assert _rel(o[k], nets[k](x[k].transpose(0, 1)).sum(0)) <= TOL


def test_pack_inference_equals_each_members_forward():
    spec = NetworkSpec(kind="rsnn", input_shape=(7,), num_classes=4, width=9, depth=2, gamma=0.7, theta=0.3, gamma_o=0.5)
    cfgs = [TrainConfig(rule="stllr")] * 3
    nets, x, _ = _members(spec, cfgs, 3, 10, 4, seed=3)
    o = pack_inference(Pack.from_networks(nets, cfgs), x)
    for k in range(3):
        assert _rel(o[k], nets[k](x[k].transpose(0, 1)).sum(0)) <= TOL


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_the_pack_optimisers_are_torch_optim_per_member_with_frozen_members_untouched(kind):
    torch.manual_seed(0)
    K = 3
    lrs, wds = [1e-3, 3e-2, 0.5], [0.0, 1e-2, 0.3]
    own = [[torch.randn(4, 5, dtype=torch.float64, requires_grad=True), torch.randn(4, dtype=torch.float64,
            requires_grad=True)] for _ in range(K)]
    stacked = [torch.stack([o[j].detach() for o in own]).clone() for j in range(2)]
    if kind == "adam":
        pack_opt = PackAdam(stacked, lrs, wds)
        opts = [torch.optim.Adam(o, lr=lr, weight_decay=wd) for o, lr, wd in zip(own, lrs, wds)]
    else:
        pack_opt = PackSGD(stacked, lrs, wds, momentum=0.9)
        opts = [torch.optim.SGD(o, lr=lr, weight_decay=wd, momentum=0.9) for o, lr, wd in zip(own, lrs, wds)]
    for step in range(7):
        frozen = 1 if 2 <= step < 4 else None  # member 1 sits out two steps
        grads = [torch.randn(K, 4, 5, dtype=torch.float64), torch.randn(K, 4, dtype=torch.float64)]
        for j in range(2):
            stacked[j].grad = grads[j]
        pack_opt.active[:] = True
        if frozen is not None:
            pack_opt.active[frozen] = False
        pack_opt.step()
        for k in range(K):
            if k == frozen:
                continue
            for j in range(2):
                own[k][j].grad = grads[j][k].clone()
            opts[k].step()
        if step == 4:  # a learning-rate schedule changes every member's rate
            lrs = [lr * 0.5 for lr in lrs]
            pack_opt.set_lr(lrs)
            for o, lr in zip(opts, lrs):
                o.param_groups[0]["lr"] = lr
    for k in range(K):
        for j in range(2):
            assert _rel(stacked[j][k], own[k][j].detach()) <= TOL


def _experiment(seed: int, lr: float, rule: str = "stllr", patience: int | None = 2, epochs: int = 5,
                dtype: str = "float64", **stllr) -> ExperimentConfig:
    training = {"rule": rule, "lr": lr, "epochs": epochs, "patience": patience,
                "stllr": {"learn_steps": 8, **stllr}}
    if rule == "bptt":
        training["loss"] = "per_step"
    return ExperimentConfig.for_dataset("digits", {}, network={"kind": "mlp", "width": 24, "depth": 1},
                                        training=training, data={"batch_size": 128, "val_fraction": 0.2},
                                        runtime={"dtype": dtype}, seed=seed)


_KEYS = ("train_loss", "train_objective", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
         "test_accuracy", "lr", "epochs_trained", "best_epoch")


def _collect(configs, **kw):
    rows: list[list[dict]] = [[] for _ in configs]
    for metrics in run_pack(configs, **kw):
        for k, m in enumerate(metrics):
            if m is not None:
                rows[k].append(m)
    return rows


def _assert_each_member_is_its_run(packed, configs) -> list[list[dict]]:
    """Every member's epochs equal its separate run's (``_KEYS`` to ``TOL``); returns the separate runs."""
    alone_runs = []
    for k, config in enumerate(configs):
        alone = list(run_experiment(config))
        assert len(packed[k]) == len(alone)
        for a, b in zip(packed[k], alone):
            for key in _KEYS:
                expected = b[key] if b[key] is None else pytest.approx(b[key], rel=TOL, abs=TOL)
                assert a[key] == expected, (k, a["epoch"], key)
        alone_runs.append(alone)
    return alone_runs


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_a_packed_run_is_each_members_separate_run_epoch_by_epoch(rule):
    configs = [_experiment(0, 2e-2, rule, patience=1, epochs=8, learn_steps=4, lambda_post=0.2),
               _experiment(1, 5e-3, rule, patience=3, epochs=8, learn_steps=16, lambda_post=0.8),
               _experiment(2, 1e-2, rule, patience=None, epochs=3, learn_steps=8, alpha_post=1.0)]
    packed = _collect(configs)
    for k, alone in enumerate(_assert_each_member_is_its_run(packed, configs)):
        for a, b in zip(packed[k], alone):
            assert a["stopped_by"] == b["stopped_by"]
            assert a["pack_member"] == k
        # a member's measured costs are its own run's (measured on the member alone)
        assert packed[k][0]["learning_memory_bytes_measured_per_batch"] == alone[0]["learning_memory_bytes_measured_per_batch"]
        assert packed[k][0]["learning_macs_measured_per_sample"] == alone[0]["learning_macs_measured_per_sample"]
    # the pack's own footprint is the pack's, and more than any one member's step
    pack_bytes = packed[0][0]["pack_peak_step_bytes_measured_per_batch"]
    assert pack_bytes > max(rows[0]["peak_step_bytes_measured_per_batch"] for rows in packed)
    # the members ended at different epochs: the pack shrank as they left
    longest = max(packed, key=len)
    assert len(packed[2]) == 3 < len(longest)
    assert longest[0]["pack_size"] == 3 and longest[-1]["pack_size"] < 3


def test_float32_members_match_their_runs_to_float_noise():
    configs = [_experiment(s, lr, patience=None, epochs=3, dtype="float32") for s, lr in ((0, 1e-2), (1, 3e-3))]
    packed = _collect(configs)
    for k, config in enumerate(configs):
        for a, b in zip(packed[k], run_experiment(config)):
            for key in ("train_loss", "val_loss", "test_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
            assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 2 / 360  # at most a couple of argmax ties


def test_a_member_that_diverges_is_frozen_with_its_own_status_and_the_others_go_on():
    configs = [_experiment(0, 1e-2, patience=None, epochs=3, dtype="float32"),
               _experiment(1, 1e38, patience=None, epochs=3, dtype="float32")]
    configs = [c.replace(training=c.training.__class__.from_dict({**c.training.to_dict(), "optimizer": "sgd"}))
               for c in configs]
    packed = _collect(configs)
    with pytest.raises(StllrError) as alone_error:
        list(run_experiment(configs[1]))
    assert len(packed[1]) == 1 and packed[1][0]["status"] == "diverged"
    assert packed[1][0]["error"] == str(alone_error.value)
    healthy = list(run_experiment(configs[0]))
    assert len(packed[0]) == 3
    assert [m["pack_size"] for m in packed[0]] == [2, 1, 1]
    for a, b in zip(packed[0], healthy):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=2 / 360)


def test_a_killed_pack_resumes_every_member_exactly_and_a_member_resumes_alone(tmp_path):
    configs = [_experiment(0, 2e-2, patience=1, epochs=6, learn_steps=4),
               _experiment(1, 5e-3, patience=None, epochs=6, learn_steps=16)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    whole = _collect(configs)
    it = run_pack(configs, checkpoint_dirs=dirs)
    for _ in range(2):  # killed after two epochs
        next(it)
    del it
    resumed = _collect(configs, checkpoint_dirs=dirs, resume=True)
    for k in range(2):
        tail = [m for m in resumed[k] if not m.get("resumed_finished")]
        assert [m["epoch"] for m in tail] == [m["epoch"] for m in whole[k]][2:] or whole[k][-1]["epoch"] <= 2
        for a, b in zip(tail, whole[k][2:]):
            for key in _KEYS:
                assert a[key] == b[key], (k, key)
    # each member's checkpoint is an ordinary run's: it resumes unpacked, to the same end
    alone = list(run_experiment(configs[1], checkpoint_dir=dirs[1], resume=True))
    assert alone[-1]["resumed_finished"] and alone[-1]["test_accuracy"] == whole[1][-1]["test_accuracy"]


def test_members_must_share_what_is_not_theirs():
    spec = NetworkSpec(kind="mlp", input_shape=(7,), num_classes=4, width=9)
    nets = [build_network(spec), build_network(spec.replace(width=10, seed=1))]
    with pytest.raises(StllrError, match="share the architecture"):
        check_packable(nets, [TrainConfig()] * 2)
    same = [build_network(spec.replace(seed=s)) for s in range(2)]
    with pytest.raises(StllrError, match="share the architecture"):
        check_packable(same, [TrainConfig(rule="stllr"), TrainConfig(rule="bptt")])
    with pytest.raises(StllrError, match="share the architecture"):  # online and offline members
        check_packable(same, [TrainConfig(stllr=STLLRConfig(online=True)), TrainConfig()])
    # what a member owns may differ
    check_packable(same, [TrainConfig(lr=1e-3, stllr=STLLRConfig(learn_steps=2, alpha_post=1.0)),
                          TrainConfig(lr=1e-2, weight_decay=1e-4, stllr=STLLRConfig(learn_steps=5, mode="window"))])


def test_members_that_differ_only_in_their_window_measure_their_own_costs():
    # one instrumented step may stand for several members only where nothing that changes an
    # operation differs: a different learn_steps does
    configs = [_experiment(0, 1e-2, patience=None, epochs=1, learn_steps=4),
               _experiment(1, 1e-2, patience=None, epochs=1, learn_steps=16)]
    packed = _collect(configs)
    for k, config in enumerate(configs):
        alone = next(iter(run_experiment(config)))
        for key in ("learning_macs_measured_per_sample", "learning_memory_bytes_measured_per_batch"):
            assert packed[k][0][key] == alone[key], (k, key)
    assert packed[0][0]["learning_macs_measured_per_sample"] < packed[1][0]["learning_macs_measured_per_sample"]


@pytest.mark.parametrize("rule", ["stllr", "bptt"])
def test_a_packed_conv_run_with_standardised_weights_is_each_members_separate_run(rule):
    def config(seed: int, lr: float, **stllr) -> ExperimentConfig:
        training = {"rule": rule, "lr": lr, "epochs": 3, "patience": 1, "stllr": {"learn_steps": 6, **stllr}}
        if rule == "bptt":
            training["loss"] = "per_step"
        return ExperimentConfig.for_dataset(
            "digits", {"image": True, "T": 8}, training=training, seed=seed,
            network={"kind": "vgg", "width": 2, "depth": 1, "weight_standardization": True, "ws_gain": True},
            data={"batch_size": 256, "val_fraction": 0.2}, runtime={"dtype": "float64"})

    configs = [config(0, 2e-2, alpha_post=-1.0), config(1, 5e-3, learn_steps=8, lambda_post=0.8)]
    packed = _collect(configs)
    for k, alone in enumerate(_assert_each_member_is_its_run(packed, configs)):
        assert packed[k][0]["learning_memory_bytes_measured_per_batch"] == alone[0]["learning_memory_bytes_measured_per_batch"]


@pytest.mark.parametrize("family,signal", [("mlp2", "bp"), ("rsnn1-ws-rec-gain", "dfa"), ("vgg2-max-ws", "bp"),
                                           ("rsnn2", "bp")])
def test_online_packs_step_every_member_as_its_own_online_run(family, signal, fused_mode):
    """Online S-TLLR: an optimiser step at every step of each member's own window; after a few
    batches every member's parameters and Adam state are its separate online run's."""
    K, T, B = 3, 8, 3
    plain = dict(input_shape=(7,), num_classes=4, width=9, gamma=0.7, theta=0.3, gamma_o=0.5)
    families = {**_FAMILIES, "mlp2": dict(plain, kind="mlp", depth=2), "rsnn2": dict(plain, kind="rsnn", depth=2)}
    spec = NetworkSpec(**families[family])
    factors = [dict(f, learn_steps=min(f["learn_steps"], T)) for f in _FACTORS]
    lrs = [1e-2, 3e-3, 2e-2]
    cfgs = [TrainConfig(rule="stllr", lr=lr, weight_decay=wd, stllr=STLLRConfig(online=True, learning_signal=signal, **f))
            for f, lr, wd in zip(factors, lrs, [0.0, 1e-3, 0.0])]
    nets, _, _ = _members(spec, cfgs, K, T, B, seed=8)
    pack = Pack.from_networks(nets, cfgs)
    opt = PackAdam(pack.parameters(), lrs, [c.weight_decay for c in cfgs])
    opts = [torch.optim.Adam(n.parameters(), lr=c.lr, weight_decay=c.weight_decay) for n, c in zip(nets, cfgs)]
    g = torch.Generator().manual_seed(9)
    for batch in range(3):
        x = (torch.rand(K, T, B, *spec.input_shape, generator=g) < 0.4).double()
        y = torch.randint(0, spec.num_classes, (K, B), generator=g)
        if batch == 1:
            opt.active[1] = False  # a member frozen (diverged, stopped early) sits this batch out
        stats = pack_stllr_step(pack, x, y, optimizer=opt)
        opt.active[:] = True
        for k in range(K):
            if batch == 1 and k == 1:
                continue
            own, _ = stllr_step(nets[k], x[k], y[k], cfgs[k].stllr, optimizer=opts[k])
            assert float(stats.objective[k]) == pytest.approx(float(own.objective), rel=TOL)
            assert float(stats.loss[k]) == pytest.approx(float(own.loss), rel=TOL)
    for k in range(K):
        for stacked, own in zip(pack.parameters(), pack.member_parameters(nets)):
            assert _rel(stacked[k], own[k].detach()) <= TOL, k
        steps = [float(opts[k].state[p]["step"]) for p in nets[k].readout.parameters()]
        assert float(opt.steps[k]) == steps[0] == 3 * cfgs[k].stllr.learn_steps - (cfgs[k].stllr.learn_steps if k == 1 else 0)
    with pytest.raises(StllrError, match="pass optimizer="):
        pack_stllr_step(pack, x, y)


def test_a_packed_online_run_is_each_members_separate_run():
    configs = [_experiment(0, 2e-3, patience=1, epochs=3, learn_steps=4, online=True),
               _experiment(1, 5e-4, patience=None, epochs=2, learn_steps=16, online=True, alpha_post=1.0)]
    _assert_each_member_is_its_run(_collect(configs), configs)
