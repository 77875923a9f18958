"""Any per-step loss (issue #18 item 1): δ[t] = ∂L[t]/∂y[t] for L[t] = ℓ(o[t], target[t]).

A regression loss (mean squared error, and a Huber loss given as a plain callable) against
the explicit-eligibility reference (S-TLLR: bp and dfa, every mode, online, both objectives)
and unrolled autograd (BPTT, every objective), per-sample and per-step targets, float64 at
1e-10; packs of members with the same loss against each member's own step; the losses'
values and errors against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_cases import SPECS, grads_of, make_case, rel_err

from stllr_engine import StllrError, build_network
from stllr_engine.bptt import LOSSES, bptt_step
from stllr_engine.losses import CallableLoss, CrossEntropy, MeanSquaredError, get_step_loss
from stllr_engine.pack import Pack, PackAdam, pack_bptt_step, pack_stllr_step
from stllr_engine.reference import reference_bptt_loss, reference_stllr_grads, reference_stllr_online_sgd
from stllr_engine.stllr import STLLRConfig, stllr_step
from stllr_engine.train import TrainConfig

RTOL = 1e-10
HUBER = CallableLoss(lambda o, y: F.smooth_l1_loss(o, y, beta=0.5), name="huber")


def _targets(net, x, per_step: bool, seed: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    C = net.readout.num_classes
    shape = (x.shape[0], x.shape[1], C) if per_step else (x.shape[1], C)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_the_losses_give_hand_computed_values_and_errors():
    o = torch.tensor([[[1.0, 2.0], [0.0, -1.0]]], dtype=torch.float64)  # one step, two samples
    y = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]], dtype=torch.float64)
    total, err = MeanSquaredError().error(o, y)
    assert float(total) == pytest.approx((1 + 0 + 1 + 4) / 4)  # mean over batch and outputs
    assert err.tolist() == [[[0.5, 0.0], [-0.5, -1.0]]]  # 2 (o − y) / (B·C)
    # Huber (beta 0.5): |d| < 0.5 → d²/(2·0.5), else |d| − 0.25; error sign(d)/4 beyond beta
    total, err = HUBER.error(o, y)
    assert float(total) == pytest.approx((0.75 + 0 + 0.75 + 1.75) / 4)
    assert err.tolist() == [[[0.25, 0.0], [-0.25, -0.25]]]
    labels = torch.tensor([[1, 0]])
    total, err = CrossEntropy().error(o, labels)
    p = torch.softmax(o[0], -1)
    assert float(total) == pytest.approx(float(-(p[0, 1].log() + p[1, 0].log()) / 2))
    assert torch.allclose(err[0], (p - F.one_hot(labels[0], 2)) / 2)
    with pytest.raises(StllrError, match="step_loss='l1' is not a per-step loss"):
        get_step_loss("l1")
    with pytest.raises(StllrError, match="must be \\[B, C\\] or \\[T, B, C\\]"):
        MeanSquaredError().per_step(torch.zeros(3))


@pytest.mark.parametrize("mode", ["window", "streaming", "chunked"])
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_stllr_learns_a_regression_loss_by_the_equations(name, signal, mode):
    net, x, _ = make_case(name)
    for per_step, loss, sl in [(False, "per_step", "mse"), (True, "per_step", HUBER), (False, "sum_output", "mse")]:
        target = _targets(net, x, per_step)
        cfg = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=-0.5, learning_signal=signal,
                          mode=mode, chunk_steps=2 if mode == "chunked" else None)
        net.zero_grad(set_to_none=True)
        stats, _ = stllr_step(net, x, target, cfg, loss=loss, step_loss=sl)
        got = grads_of(net)
        ref = reference_stllr_grads(net, x, target, cfg, loss=loss, step_loss=sl)
        for n, r in ref.items():
            assert rel_err(got[n], r) <= RTOL, (n, loss, rel_err(got[n], r))
            if not n.endswith("bias"):
                assert float(r.abs().max()) > 1e-8, f"{n} got no update"
        assert int(stats.correct) == 0  # no classes: no accuracy
    # the loss matters: the same targets as class-free MSE and as Huber give other updates
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, _targets(net, x, False), cfg, step_loss=HUBER)
    assert rel_err(net.layers[0].weight.grad, got["layers.0.weight"]) > 1e-3


@pytest.mark.parametrize("name", ["dense", "recurrent_official", "conv_max"])
def test_online_stllr_with_a_regression_loss_is_the_reference_sgd(name):
    net, x, _ = make_case(name)
    target = _targets(net, x, True)
    cfg = STLLRConfig(learn_steps=3, lambda_pre=0.6, lambda_post=0.5, alpha_post=1.0, online=True)
    ref_net, _, _ = make_case(name)
    reference_stllr_online_sgd(ref_net, x, target, cfg, lr=0.05, step_loss="mse")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    stllr_step(net, x, target, cfg, optimizer=opt, step_loss="mse")
    for (n, p), q in zip(net.named_parameters(), ref_net.parameters()):
        assert rel_err(p.detach(), q.detach()) <= RTOL, n


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_bptt_of_a_regression_loss_is_unrolled_autograd(name, loss):
    net, x, _ = make_case(name, T=8)
    for per_step, sl in [(False, "mse"), (True, HUBER)]:
        target = _targets(net, x, per_step)
        window = 3 if loss == "per_step" else None
        net.zero_grad(set_to_none=True)
        stats = bptt_step(net, x, target, loss=loss, learn_steps=window, step_loss=sl)
        got = grads_of(net)
        net.zero_grad(set_to_none=True)
        objective = reference_bptt_loss(net, x, target, loss, window, step_loss=sl)
        objective.backward()
        assert float(stats.objective) == pytest.approx(float(objective.detach()), rel=1e-12)
        for n, p in net.named_parameters():
            assert float(p.grad.abs().max()) > 0, f"{n} got no gradient"
            assert rel_err(got[n], p.grad) <= RTOL, (n, per_step)


@pytest.mark.parametrize("rule,loss", [("stllr", "per_step"), ("stllr", "sum_output"), ("stllr", "online"),
                                       ("bptt", "per_step"), ("bptt", "sum_output")])
def test_packs_learn_a_regression_loss_as_each_member_alone(rule, loss):
    spec = SPECS["recurrent_official"]
    K, T, B = 3, 7, 4
    nets = [build_network(spec.replace(seed=s)).double() for s in range(K)]  # each its own initialisation
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # gains away from 1, so that a wrong gain update shows
        for net in nets:
            for n, p in net.named_parameters():
                if n.endswith("gain"):
                    p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    x = (torch.rand(K, T, B, *spec.input_shape, generator=g) < 0.4).double()
    target = torch.randn(K, T, B, spec.num_classes, generator=g, dtype=torch.float64)  # per step
    online = loss == "online"
    stllr = [STLLRConfig(learn_steps=n, alpha_post=a, online=online) for n, a in ((3, -1.0), (7, 1.0), (5, 0.0))]
    cfgs = [TrainConfig(rule=rule, stllr=s, lr=1e-2, loss="per_step" if loss == "online" else loss) for s in stllr]
    pack = Pack.from_networks(nets, cfgs)
    if rule == "stllr":
        opt = PackAdam(pack.parameters(), [1e-2] * K, [0.0] * K)
        stats = pack_stllr_step(pack, x, target, loss="per_step" if online else loss, step_loss="mse",
                                optimizer=opt if online else None)
    else:
        stats = pack_bptt_step(pack, x, target, loss=loss, step_loss="mse")
    for k in range(K):
        nets[k].zero_grad(set_to_none=True)
        if rule == "stllr" and online:
            own_opt = torch.optim.Adam(nets[k].parameters(), lr=1e-2)
            own, _ = stllr_step(nets[k], x[k], target[k], stllr[k], optimizer=own_opt, step_loss="mse")
            for stacked, mine in zip(pack.parameters(), pack.member_parameters(nets)):
                assert rel_err(stacked[k], mine[k].detach()) <= RTOL
        else:
            if rule == "stllr":
                own, _ = stllr_step(nets[k], x[k], target[k], stllr[k], loss=loss, step_loss="mse")
            else:
                own = bptt_step(nets[k], x[k], target[k], loss=loss, learn_steps=stllr[k].learn_steps, step_loss="mse")
            for stacked, mine in zip(pack.parameters(), pack.member_parameters(nets)):
                assert rel_err(stacked.grad[k], mine[k].grad) <= RTOL
        assert float(stats.objective[k]) == pytest.approx(float(own.objective), rel=RTOL)
        assert float(stats.loss[k]) == pytest.approx(float(own.loss), rel=RTOL)
        assert int(stats.correct[k]) == 0
