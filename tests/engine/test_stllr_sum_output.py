"""S-TLLR on the paper's BPTT objective, CE(Σ_t o[t], label): the fourth cell of rule × objective.

The output error of every window step is the sequence's, softmax(Σ_t o[t]) − onehot; the
fast path (every mode and chunk size) must equal the explicit-eligibility reference, and
with learn_steps = T its readout update must be the exact gradient of the objective.
"""

from __future__ import annotations

import pytest
import torch
from engine_cases import grads_of, make_case, rel_err

from stllr_engine.costs import CostProbe
from stllr_engine.errors import StllrError
from stllr_engine.reference import reference_bptt_loss, reference_stllr_grads
from stllr_engine.stllr import STLLRConfig, stllr_step
from stllr_engine.train import TrainConfig, fit

RTOL = 1e-10
T = 7


def _modes() -> list[STLLRConfig]:
    base = {"lambda_pre": 0.7, "lambda_post": 0.4, "alpha_pre": 1.0, "alpha_post": 0.5}
    return ([STLLRConfig(**base, mode="window"), STLLRConfig(**base, mode="streaming"),
             STLLRConfig(**base)]  # the automatic chunk
            + [STLLRConfig(**base, chunk_steps=c) for c in (1, 2, 3, T, T + 2)])


@pytest.mark.parametrize("learn_steps", [3, T])
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("name", ["dense", "recurrent", "conv_avg", "conv_max", "recurrent_official",
                                  "conv_official"])
def test_every_mode_matches_the_reference(name, signal, learn_steps):
    net, x, labels = make_case(name, T=T)
    for mode in _modes():
        cfg = STLLRConfig.from_dict({**mode.to_dict(), "learn_steps": learn_steps, "learning_signal": signal})
        ref = reference_stllr_grads(net, x, labels, cfg, loss="sum_output")
        per_step = reference_stllr_grads(net, x, labels, cfg)
        net.zero_grad(set_to_none=True)
        stats, _ = stllr_step(net, x, labels, cfg, loss="sum_output")
        got = grads_of(net)
        assert set(got) == set(ref)
        for n, r in ref.items():
            assert rel_err(got[n], r) <= RTOL, f"{cfg.mode} c={cfg.chunk_steps} {n}: {rel_err(got[n], r):.3g}"
        # not the per-step rule under another name: the weights' updates differ
        moved = [n for n in ref if not n.endswith("bias") and rel_err(ref[n], per_step[n]) > 1e-3]
        assert len(moved) >= len([n for n in ref if not n.endswith("bias")]) - 1, moved
        # the step reports the objective it followed
        expected = float(reference_bptt_loss(net, x, labels, "sum_output").detach())
        assert float(stats.objective.detach()) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["dense", "recurrent", "conv_avg"])
def test_with_the_whole_sequence_the_readout_update_is_the_exact_gradient(name):
    """learn_steps = T, the readout's trace at λ = γ_o: ∂CE(Σ_t o[t])/∂W_o = e ⊗ Σ_t tr[t]."""
    net, x, labels = make_case(name, T=T)
    net.zero_grad(set_to_none=True)
    reference_bptt_loss(net, x, labels, "sum_output").backward()
    exact = {n: net.get_parameter(n).grad.clone() for n in ("readout.weight", "readout.bias")}
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, labels, STLLRConfig(learn_steps=T, chunk_steps=2), loss="sum_output")
    for n, g in exact.items():
        assert float(g.abs().max()) > 1e-6
        assert rel_err(net.get_parameter(n).grad, g) <= RTOL, n


def test_per_step_labels_use_the_last_steps_label():
    net, x, labels = make_case("recurrent_official", T=T)
    per_step = torch.stack([labels.roll(t) for t in range(T)])
    cfg = STLLRConfig(learn_steps=4, chunk_steps=2, readout_lambda=0.99, readout_bias="error")
    stllr_step(net, x, per_step, cfg, loss="sum_output")
    got = grads_of(net)
    ref = reference_stllr_grads(net, x, per_step[-1], cfg, loss="sum_output")
    for n, r in ref.items():
        assert rel_err(got[n], r) <= RTOL, n


def test_float32_matches_the_reference_in_float32():
    net, x, labels = make_case("recurrent_official", T=T)
    net, x = net.float(), x.float()
    cfg = STLLRConfig(learn_steps=5, chunk_steps=2)
    ref = reference_stllr_grads(net, x, labels, cfg, loss="sum_output")
    stllr_step(net, x, labels, cfg, loss="sum_output")
    for n, g in grads_of(net).items():
        assert rel_err(g, ref[n]) <= 1e-5, n


def _peak(cfg: STLLRConfig, loss: str) -> int:
    net, x, labels = make_case("recurrent", T=12, batch=4)
    probe = CostProbe(exclude=[*net.parameters(), *net.buffers(), x], count_flops=False)
    stllr_step(net, x, labels, cfg, probe=probe, loss=loss)
    return probe.peak_bytes


def test_the_window_is_held_to_the_end_and_no_more():
    """Its output error is known at the sequence's end: the window's records (learn_steps of
    them) are held until then in every mode, as window mode holds them; the steps before the
    window still run in chunks."""
    for learn_steps in (3, 6):
        window = _peak(STLLRConfig(learn_steps=learn_steps, mode="window"), "sum_output")
        for cfg in (STLLRConfig(learn_steps=learn_steps, mode="streaming"),
                    STLLRConfig(learn_steps=learn_steps, chunk_steps=2)):
            assert _peak(cfg, "per_step") < _peak(cfg, "sum_output") <= window
    # streaming: the records of every window step more (a one-step window is learned at once)
    extra = {n: _peak(STLLRConfig(learn_steps=n, mode="streaming"), "sum_output")
             - _peak(STLLRConfig(learn_steps=n, mode="streaming"), "per_step") for n in range(1, 6)}
    step = extra[3] - extra[2]
    assert step > 0 and extra == {1: 0, 2: 2 * step, 3: 3 * step, 4: 4 * step, 5: 5 * step}


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "per_step_all"}, "per_step_all is per_step with learn_steps = T"),
    ({"loss": "sum_output", "stllr": STLLRConfig(online=True)}, "known only at the sequence's end"),
])
def test_bad_combinations_are_one_line_errors(kwargs, message):
    with pytest.raises(StllrError, match=message) as e:
        TrainConfig(rule="stllr", **kwargs)
    assert "\n" not in str(e.value)


def test_stllr_step_refuses_an_unknown_loss_and_online():
    net, x, labels = make_case("dense", T=T)
    with pytest.raises(StllrError, match="not an objective S-TLLR learns"):
        stllr_step(net, x, labels, STLLRConfig(), loss="per_step_all")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(StllrError, match="online=True"):
        stllr_step(net, x, labels, STLLRConfig(online=True), optimizer=opt, loss="sum_output")


def test_it_learns_and_reports_the_objective_it_followed():
    from test_train import SPEC, _loader, _task
    from torch.utils.data import DataLoader

    from stllr_engine.network import build_network

    net = build_network(SPEC)
    cfg = TrainConfig(rule="stllr", loss="sum_output", stllr=STLLRConfig(learn_steps=6, alpha_post=1.0), lr=5e-3,
                      epochs=3)
    metrics = list(fit(net, _loader(_task(seed=0)), cfg, test_loader=DataLoader(_task(n=96, seed=1), batch_size=48)))
    assert metrics[-1]["test_accuracy"] >= 0.85
    assert [m["loss_kind"] for m in metrics] == ["sum_output"] * 3
    assert [m["loss_steps"] for m in metrics] == [10] * 3  # all T steps
    for m in metrics:  # the objective is CE(Σ_t o[t]): the train loss itself
        assert m["train_objective"] == pytest.approx(m["train_loss"], rel=1e-9)
