"""S-TLLR fast path == the naive explicit-eligibility reference (DESIGN §3).

float64 at a relative error of 1e-10 (observed ~1e-15); float32 separately, looser. The
reference computes its own factors, standardisation and DFA matrices; the fast path's
helpers are pinned to hand-computed numbers elsewhere."""

from __future__ import annotations

import pytest
import torch
from engine_cases import SPECS, grads_of, make_case, rel_err

from stllr_engine.forward import initial_state, run_chunk
from stllr_engine.reference import reference_stllr_grads
from stllr_engine.stllr import STLLRConfig, stllr_step

RTOL = 1e-10


def _compare(net, x, labels, cfg, rtol=RTOL):
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, labels, cfg)
    got = grads_of(net)
    ref = reference_stllr_grads(net, x, labels, cfg)
    assert set(got) == set(ref)
    for name, r in ref.items():
        assert torch.isfinite(r).all()
        assert rel_err(got[name], r) <= rtol, f"{name}: relative error {rel_err(got[name], r):.3g}"
    return got, ref


@pytest.mark.parametrize("mode", ["window", "streaming"])
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("alpha_post", [-1.0, 0.0, 0.5])
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_stllr_matches_explicit_eligibility(name, reset, alpha_post, signal, mode):
    net, x, labels = make_case(name, reset)
    cfg = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_pre=1.0, alpha_post=alpha_post,
                      learning_signal=signal, mode=mode)
    got, ref = _compare(net, x, labels, cfg)
    # Not a vacuous match: every weight (feed-forward, recurrent, readout) and gain moves.
    for n, r in ref.items():
        if not n.endswith("bias"):
            assert float(r.abs().max()) > 1e-8, f"{n} got no update"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_case_spikes_and_alpha_post_matters(name):
    net, x, labels = make_case(name)
    # every hidden layer fires, but not always: a non-degenerate case for the comparisons
    rates = _spike_rates(net, x)
    assert all(0.02 < r < 0.9 for r in rates), rates
    updates = []
    for a in (-1.0, 0.0, 0.5):
        net.zero_grad(set_to_none=True)
        stllr_step(net, x, labels, STLLRConfig(learn_steps=4, alpha_post=a, lambda_post=0.4))
        updates.append(net.layers[0].weight.grad.clone())
    assert rel_err(updates[0], updates[1]) > 1e-3
    assert rel_err(updates[2], updates[1]) > 1e-3


def _spike_rates(net, x):
    """Firing rate of each hidden layer, from the reference's plain unrolled forward."""
    from stllr_engine.neurons import LIFState, lif_step

    u = [x.new_zeros(x.shape[1], *layer.out_shape) for layer in net.layers]
    y_prev = [x.new_zeros(x.shape[1], *layer.out_shape) for layer in net.layers]
    counts = [0.0] * len(net.layers)
    with torch.no_grad():
        for xt in x.unbind(0):
            inp = xt
            for i, layer in enumerate(net.layers):
                w, w_rec = layer.effective_weights()
                cur = layer.add_bias(layer.synapse(layer.pre(inp), w))
                if w_rec is not None:
                    cur = cur + y_prev[i] @ w_rec.t()
                y, _, st = lif_step(cur, LIFState(u[i]), layer.lif)
                u[i], y_prev[i], inp = st.u, y, y
                counts[i] += float(y.mean())
    return [c / x.shape[0] for c in counts]


@pytest.mark.parametrize("learn_steps", [1, 7])  # 7 == T: the whole sequence
def test_window_lengths(learn_steps):
    net, x, labels = make_case("recurrent")
    _compare(net, x, labels, STLLRConfig(learn_steps=learn_steps, lambda_pre=0.9, lambda_post=0.5))


def test_a_window_longer_than_the_sequence_is_an_error():
    from stllr_engine.errors import StllrError

    net, x, labels = make_case("recurrent")  # T = 7
    with pytest.raises(StllrError, match="learn_steps=8 exceeds the T=7 steps of the batch: use learn_steps <= T"):
        stllr_step(net, x, labels, STLLRConfig(learn_steps=8))


def test_per_layer_factors_and_readout_lambda():
    net, x, labels = make_case("recurrent")
    cfg = STLLRConfig(learn_steps=5, lambda_pre=0.6, lambda_post=0.3, alpha_post=-1.0, readout_lambda=0.5,
                      layer_factors={1: {"alpha_post": 1.0, "lambda_pre": 1.0, "alpha_pre": 0.5, "lambda_post": 0.9}})
    _compare(net, x, labels, cfg)
    _compare(net, x, labels, STLLRConfig(learn_steps=5, alpha_pre=0.0, alpha_post=1.0))


@pytest.mark.parametrize("name", ["recurrent", "recurrent_official"])
def test_official_readout_convention(name):
    """Readout weight from a λ = 0.99 trace, bias from the output error alone."""
    net, x, labels = make_case(name)
    got, ref = _compare(net, x, labels, STLLRConfig(learn_steps=5, readout_lambda=0.99, readout_bias="error"))
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, labels, STLLRConfig(learn_steps=5, readout_lambda=0.99))
    assert rel_err(got["readout.bias"], grads_of(net)["readout.bias"]) > 1e-3  # the convention matters


def test_per_step_labels():
    net, x, labels = make_case("dense")
    per_step = torch.stack([labels.roll(t) for t in range(x.shape[0])])
    _compare(net, x, per_step, STLLRConfig(learn_steps=5))


@pytest.mark.parametrize("name", ["recurrent", "conv_avg"])
def test_window_and_streaming_agree(name):
    net, x, labels = make_case(name, T=9)
    out = []
    for mode in ("window", "streaming"):
        net.zero_grad(set_to_none=True)
        stats, state = stllr_step(net, x, labels, STLLRConfig(learn_steps=3, mode=mode))
        out.append((grads_of(net), stats, state))
    for n, a in out[0][0].items():
        torch.testing.assert_close(a, out[1][0][n], rtol=1e-12, atol=1e-14)
    assert float(out[0][1].loss) == pytest.approx(float(out[1][1].loss), rel=1e-12)
    for a, b in zip(out[0][2].tensors(), out[1][2].tensors()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# -- the learning window (item 8b) ------------------------------------------------------


@pytest.mark.parametrize("mode", ["window", "streaming"])
def test_loss_before_the_window_changes_nothing(mode):
    net, x, labels = make_case("recurrent", T=8)
    T, ls = x.shape[0], 3
    cfg = STLLRConfig(learn_steps=ls, mode=mode)
    base = torch.stack([labels] * T)
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, base, cfg)
    g0 = grads_of(net)

    changed_before = base.clone()
    changed_before[: T - ls] = (labels + 1) % 4  # another loss at every step before the window
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, changed_before, cfg)
    g1 = grads_of(net)
    for n, a in g0.items():
        assert torch.equal(a, g1[n]), n

    changed_inside = base.clone()
    changed_inside[T - ls] = (labels + 1) % 4  # the first step of the window
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, changed_inside, cfg)
    assert not torch.equal(g0["readout.weight"], grads_of(net)["readout.weight"])


@pytest.mark.parametrize("name", ["recurrent", "conv_max"])
def test_inputs_before_the_window_act_only_through_state_and_traces(name):
    net, x, labels = make_case(name, T=9)
    ls = 3
    t0 = x.shape[0] - ls
    cfg = STLLRConfig(learn_steps=ls, lambda_pre=0.8, lambda_post=0.6)
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, labels, cfg)
    full = grads_of(net)

    # Run the prefix without learning, keep only its state and traces, then learn on the window.
    factors = cfg.factors(len(net.layers))
    lam = net.readout.gamma_o
    state = initial_state(net, x.shape[1], factors, lam)
    from stllr_engine.forward import effective_weights

    _, _, _, state = run_chunk(net, x[:t0], state, effective_weights(net), 0, factors, lam)
    net.zero_grad(set_to_none=True)
    stllr_step(net, x[t0:], labels, cfg, state=state)
    part = grads_of(net)
    for n, a in full.items():
        torch.testing.assert_close(a, part[n], rtol=1e-12, atol=1e-14)

    # ... and they do act through them: another prefix gives another update.
    x2 = x.clone()
    x2[:t0] = 1.0 - x2[:t0]
    net.zero_grad(set_to_none=True)
    stllr_step(net, x2, labels, cfg)
    assert rel_err(grads_of(net)["layers.0.weight"], full["layers.0.weight"]) > 1e-6


def test_no_batch_by_out_by_in_tensor_is_built():
    """The fast path never materialises e_ij: every tensor it creates is far smaller than
    B·out·in of the smallest layer (B = 16 here, so even one sample's out×in outer
    product per step would exceed the bound at T = 4)."""
    from stllr_engine.network import NetworkSpec, build_network

    net = build_network(NetworkSpec(kind="rsnn", input_shape=(50,), num_classes=3, width=40, depth=2,
                                    gamma=0.8, theta=0.5, surrogate="sigmoid"))
    x = (torch.rand(4, 16, 50) < 0.3).float()
    labels = torch.zeros(16, dtype=torch.long)
    limit = min(16 * 40 * 40, 16 * 40 * 50)  # B·out·in of the recurrent (and feed-forward) weights
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(out.numel())
            return out

    for mode in ("window", "streaming"):
        with Spy():
            stllr_step(net, x, labels, STLLRConfig(learn_steps=4, mode=mode))
    assert max(seen) <= 4 * 16 * 50 < limit / 5


def test_no_bias_with_weight_standardisation():
    from stllr_engine.layers import Readout, SpikingLayer, Transform
    from stllr_engine.network import Network, NetworkSpec
    from stllr_engine.neurons import LIFParameters

    torch.manual_seed(0)
    lif = LIFParameters(gamma=0.7, theta=0.3, surrogate="triangle")
    spec = NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=3, depth=1)
    l1 = SpikingLayer("conv", (2, 8, 8), 3, lif, weight_standardization=True, bias=False)
    l2 = SpikingLayer("conv", (3, 8, 8), 4, lif, weight_standardization=True, bias=False)
    net = Network(spec, [l1, l2], Readout((4, 8, 8), 3, 0.5, pre=Transform(("avgpool", "gap")))).double()
    x = (torch.rand(6, 4, 2, 8, 8) < 0.4).double()
    _compare(net, x, torch.tensor([0, 1, 2, 0]), STLLRConfig(learn_steps=3))


# -- online updates (issue 6 item 8) ------------------------------------------------------


@pytest.mark.parametrize("mode", ["window", "streaming"])
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_online_equals_per_step_sgd_on_the_explicit_updates(name, signal, mode):
    import copy

    from stllr_engine.reference import reference_stllr_online_sgd

    net, x, labels = make_case(name)
    ref, before = copy.deepcopy(net), copy.deepcopy(net)
    cfg = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=0.5, learning_signal=signal,
                      mode=mode, online=True)
    lr = 0.3
    stllr_step(net, x, labels, cfg, optimizer=torch.optim.SGD(net.parameters(), lr=lr))
    reference_stllr_online_sgd(ref, x, labels, cfg, lr)
    for (n, p), r, b in zip(net.named_parameters(), ref.parameters(), before.parameters()):
        assert rel_err(p - b, r - b) <= 1e-10, n
    # not vacuous: the weights moved, and differently from one update per batch
    offline = copy.deepcopy(before)
    stllr_step(offline, x, labels, cfg.__class__(**{**cfg.to_dict(), "online": False}))
    torch.optim.SGD(offline.parameters(), lr=lr).step()
    w, w_off, w0 = net.layers[0].weight, offline.layers[0].weight, before.layers[0].weight
    assert rel_err(w - w0, w_off - w0) > 1e-6


def test_online_needs_an_optimizer():
    from stllr_engine.errors import StllrError

    net, x, labels = make_case("dense")
    with pytest.raises(StllrError, match="online=True steps the optimiser at every window step: pass optimizer="):
        stllr_step(net, x, labels, STLLRConfig(learn_steps=2, online=True))


# -- tests that catch specific mistakes (issue 6 item 9) ----------------------------------


@pytest.mark.parametrize("name", ["dense", "recurrent_official", "conv_official"])
def test_float32_matches_the_reference_in_float32(name):
    net, x, labels = make_case(name)
    net, x = net.float(), x.float()
    _compare(net, x, labels, STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=0.5), rtol=1e-4)


@pytest.mark.parametrize("name", ["recurrent", "conv_official"])
def test_window_mode_continues_a_carried_state(name):
    """A non-zero carried state and steps before the window: window mode collapses those
    steps into its trace prefix sums, which must start from the carried traces."""
    from stllr_engine.forward import effective_weights

    net, x, labels = make_case(name, T=11)
    cfg = STLLRConfig(learn_steps=3, lambda_pre=0.8, lambda_post=0.6, alpha_post=0.5, readout_lambda=0.7)
    factors = cfg.factors(len(net.layers))
    state0 = initial_state(net, x.shape[1], factors, 0.7)
    _, _, _, carried = run_chunk(net, x[:4], state0, effective_weights(net), 0, factors, 0.7)
    assert all(float(t.abs().max()) > 0 for t in carried.tensors())  # every trace is non-zero
    out = {}
    for mode in ("window", "streaming"):
        net.zero_grad(set_to_none=True)
        _, final = stllr_step(net, x[4:], labels, STLLRConfig(**{**cfg.to_dict(), "mode": mode}), state=carried)
        out[mode] = (grads_of(net), final)
    net.zero_grad(set_to_none=True)
    _, whole = stllr_step(net, x, labels, cfg)  # the same sequence in one call
    for n, g in out["window"][0].items():
        assert rel_err(g, out["streaming"][0][n]) <= RTOL, n
        assert rel_err(g, net.get_parameter(n).grad) <= RTOL, n
    for a, b, c in zip(out["window"][1].tensors(), out["streaming"][1].tensors(), whole.tensors()):
        assert rel_err(a, b) <= RTOL and rel_err(a, c) <= RTOL


@pytest.mark.parametrize("name", ["recurrent", "conv_avg"])
def test_readout_update_is_autograd_through_the_readout_recursion(name):
    """With λ = γ_o (and the bias trace) the readout's S-TLLR update is the exact gradient
    of Σ_window CE(o[t]) through o[t] = γ_o o[t-1] + W x[t] + b, hidden spikes fixed."""
    from stllr_engine.forward import effective_weights

    net, x, labels = make_case(name, T=9)
    ls = 4
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, labels, STLLRConfig(learn_steps=ls))
    got = grads_of(net)
    # hidden spikes by the plain unrolled forward, then the readout by hand
    spikes = _last_hidden_spikes(net, x)
    w = net.readout.weight.detach().clone().requires_grad_(True)
    b = net.readout.bias.detach().clone().requires_grad_(True)
    o = torch.zeros(x.shape[1], net.readout.num_classes, dtype=x.dtype)
    loss = 0.0
    for t in range(x.shape[0]):
        o = net.readout.gamma_o * o + net.readout.pre(spikes[t]) @ w.t() + b
        if t >= x.shape[0] - ls:
            loss = loss + torch.nn.functional.cross_entropy(o, labels)
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert rel_err(got["readout.weight"], gw) <= RTOL
    assert rel_err(got["readout.bias"], gb) <= RTOL
    del effective_weights


def _last_hidden_spikes(net, x):
    u = [x.new_zeros(x.shape[1], *layer.out_shape) for layer in net.layers]
    y_prev = [x.new_zeros(x.shape[1], *layer.out_shape) for layer in net.layers]
    from stllr_engine.neurons import LIFState, lif_step
    from stllr_engine.reference import reference_weights

    out = []
    with torch.no_grad():
        for xt in x.unbind(0):
            inp = xt
            for i, layer in enumerate(net.layers):
                w, w_rec = reference_weights(layer)
                cur = layer.add_bias(layer.synapse(layer.pre(inp), w))
                if w_rec is not None:
                    cur = cur + y_prev[i] @ w_rec.t()
                y, _, st = lif_step(cur, LIFState(u[i]), layer.lif)
                u[i], y_prev[i], inp = st.u, y, y
            out.append(inp)
    return out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_one_step_causal_stllr_is_bptt(name):
    """T = 1, α_pre = 1, α_post = 0: no time to be local in, so S-TLLR is the exact gradient."""
    from stllr_engine.bptt import bptt_step

    net, x, labels = make_case(name, T=1, batch=16)
    x = 3.0 * x  # every layer fires within the one step
    net.zero_grad(set_to_none=True)
    stllr_step(net, x, labels, STLLRConfig(learn_steps=1, alpha_pre=1.0, alpha_post=0.0, lambda_pre=0.3))
    got = grads_of(net)
    net.zero_grad(set_to_none=True)
    bptt_step(net, x, labels)
    for n, p in net.named_parameters():
        if n.endswith(("rec_weight", "rec_gain")):  # y[-1] = 0: no recurrent credit at T = 1 in either rule
            assert float(got[n].abs().max()) == 0.0 == float(p.grad.abs().max())
            continue
        assert float(p.grad.abs().max()) > 0, n
        assert rel_err(got[n], p.grad) <= RTOL, n


@pytest.mark.parametrize("mode", ["window", "streaming"])
def test_the_objective_is_the_mean_window_loss_and_accuracy_uses_the_sum(mode):
    """objective = mean over window steps of CE(o[t]); loss = CE(Σ_t o); correct = argmax Σ_t o."""
    net, x, labels = make_case("recurrent", T=9, batch=16, seed=0)
    with torch.no_grad():  # a readout whose per-step choices vary, so Σ_t o and o[T-1] disagree
        net.readout.weight.copy_(2 * torch.randn(net.readout.weight.shape, dtype=x.dtype,
                                                 generator=torch.Generator().manual_seed(0)))
        net.readout.bias.zero_()
    ls = 4
    stats, _ = stllr_step(net, x, labels, STLLRConfig(learn_steps=ls, mode=mode))
    with torch.no_grad():
        o = net(x.transpose(0, 1))  # [T, B, C], plain inference
    ce = [float(torch.nn.functional.cross_entropy(o[t], labels)) for t in range(9)]
    assert float(stats.objective) == pytest.approx(sum(ce[-ls:]) / ls, rel=1e-12)
    assert float(stats.loss) == pytest.approx(float(torch.nn.functional.cross_entropy(o.sum(0), labels)), rel=1e-12)
    by_sum = int((o.sum(0).argmax(-1) == labels).sum())
    by_last = int((o[-1].argmax(-1) == labels).sum())
    assert int(stats.correct) == by_sum != by_last  # the case tells the two apart
