"""Chunked S-TLLR (issue #15 item 5): the sequence in chunks of c steps, exact for every c.

``c >= T`` is window mode, ``c = 1`` streaming; every c in between computes the same update
as the explicit-eligibility reference (float64, relative error <= 1e-10), and the measured
learning memory holds one chunk's records, not the window's."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from engine_cases import grads_of, make_case, rel_err

from stllr_engine.bptt import bptt_step
from stllr_engine.costs import CostProbe, measure_costs
from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec, build_network, preset
from stllr_engine.reference import reference_stllr_grads, reference_stllr_online_sgd
from stllr_engine.stllr import STLLRConfig, _chunks, stllr_step

RTOL = 1e-10
T = 7


def _chunked(cfg: STLLRConfig, c: int | None) -> STLLRConfig:
    return STLLRConfig.from_dict({**cfg.to_dict(), "mode": "chunked", "chunk_steps": c})


def _every_c_matches_the_reference(name: str, cfg: STLLRConfig, reset: str = "soft") -> None:
    net, x, labels = make_case(name, reset, T=T)
    ref = reference_stllr_grads(net, x, labels, cfg)
    for n, r in ref.items():  # not a vacuous match: every weight and gain moves
        if not n.endswith("bias"):
            assert float(r.abs().max()) > 1e-8, f"{n} got no update"
    for c in [*range(1, T + 1), T + 3, None]:
        net.zero_grad(set_to_none=True)
        stllr_step(net, x, labels, _chunked(cfg, c))
        got = grads_of(net)
        assert set(got) == set(ref)
        for n, r in ref.items():
            assert rel_err(got[n], r) <= RTOL, f"c={c} {n}: relative error {rel_err(got[n], r):.3g}"


@pytest.mark.parametrize("learn_steps", [3, T])  # a window shorter than the sequence, and the whole sequence
@pytest.mark.parametrize("signal", ["bp", "dfa"])
@pytest.mark.parametrize("name", ["dense", "recurrent", "conv_avg", "conv_max", "recurrent_official",
                                  "conv_official"])
def test_every_chunk_size_matches_the_reference(name, signal, learn_steps):
    cfg = STLLRConfig(learn_steps=learn_steps, lambda_pre=0.7, lambda_post=0.4, alpha_pre=1.0, alpha_post=0.5,
                      learning_signal=signal)
    _every_c_matches_the_reference(name, cfg)


@pytest.mark.parametrize("name", ["dense", "recurrent", "conv_avg"])
def test_every_chunk_size_with_per_layer_factors(name):
    """Layers with other decays, α_post = 0 on one (no post trace) and α_pre = 0 on the other
    (no pre traces), a readout trace of its own and the hard reset."""
    cfg = STLLRConfig(learn_steps=5, lambda_pre=0.6, lambda_post=0.3, alpha_post=-1.0, readout_lambda=0.5,
                      layer_factors={0: {"alpha_post": 0.0, "lambda_pre": 0.9},
                                     1: {"alpha_pre": 0.0, "alpha_post": 1.0, "lambda_post": 0.9}})
    _every_c_matches_the_reference(name, cfg, reset="hard")


def test_every_chunk_size_with_the_official_readout_and_per_step_labels():
    net, x, labels = make_case("recurrent_official", T=T)
    per_step = torch.stack([labels.roll(t) for t in range(T)])
    cfg = STLLRConfig(learn_steps=4, readout_lambda=0.99, readout_bias="error", alpha_post=1.0, lambda_pre=1.0)
    ref = reference_stllr_grads(net, x, per_step, cfg)
    for c in range(1, T + 1):
        net.zero_grad(set_to_none=True)
        stllr_step(net, x, per_step, _chunked(cfg, c))
        for n, g in grads_of(net).items():
            assert rel_err(g, ref[n]) <= RTOL, (c, n)


@pytest.mark.parametrize("mode, c", [("window", None), ("chunked", 3), ("chunked", None)])
@pytest.mark.parametrize("name", ["dense", "recurrent_official", "conv_official"])
def test_float32_matches_the_reference_in_float32(name, mode, c):
    net, x, labels = make_case(name, T=T)
    net, x = net.float(), x.float()
    cfg = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=0.5, mode=mode, chunk_steps=c)
    ref = reference_stllr_grads(net, x, labels, cfg)
    stllr_step(net, x, labels, cfg)
    for n, g in grads_of(net).items():
        assert rel_err(g, ref[n]) <= 1e-4, n


@pytest.mark.parametrize("name", ["recurrent", "conv_avg"])
def test_the_ends_are_window_and_streaming_bit_for_bit(name):
    """c >= T runs window mode's one chunk, c = 1 streaming's steps: the same floats, and the
    same loss, objective and final state."""
    net, x, labels = make_case(name, T=9)
    base = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=0.5)

    def run(cfg):
        net.zero_grad(set_to_none=True)
        stats, state = stllr_step(net, x, labels, cfg)
        return grads_of(net), stats, state

    for other, c in (("window", 9), ("window", 50), ("streaming", 1)):
        a = run(STLLRConfig.from_dict({**base.to_dict(), "mode": other}))
        b = run(_chunked(base, c))
        for n, g in a[0].items():
            assert torch.equal(g, b[0][n]), (other, c, n)
        assert torch.equal(a[1].loss, b[1].loss) and torch.equal(a[1].objective, b[1].objective)
        assert all(torch.equal(s, t) for s, t in zip(a[2].tensors(), b[2].tensors()))


def test_chunks_cover_the_sequence_and_never_straddle_the_window():
    for T_, ls in ((10, 4), (10, 10), (100, 90), (7, 1), (9, 3)):
        t_win = T_ - ls
        for c in range(1, T_ + 2):
            for online in (False, True):
                cfg = STLLRConfig(learn_steps=ls, mode="chunked", chunk_steps=c, online=online)
                chunks = _chunks(cfg, T_, t_win)
                assert [a for a, _ in chunks] == [0, *(b for _, b in chunks[:-1])] and chunks[-1][1] == T_
                assert all(b - a <= c for a, b in chunks)
                if c >= T_ and not online:
                    assert chunks == [(0, T_)]  # window mode
                else:
                    assert all(b <= t_win or a >= t_win for a, b in chunks), (T_, ls, c, chunks)
                if online:  # the window one step at a time
                    assert all(b - a == 1 for a, b in chunks if a >= t_win)
    cfg = STLLRConfig(learn_steps=4, mode="chunked", chunk_steps=3)
    assert _chunks(cfg, 10, 6) == [(0, 3), (3, 6), (6, 9), (9, 10)]


@pytest.mark.parametrize("c", [1, 2, 3, 7])
@pytest.mark.parametrize("name", ["recurrent", "conv_official"])
def test_online_chunked_equals_per_step_sgd(name, c):
    """Online: the steps before the window in chunks of c, the window step by step."""
    net, x, labels = make_case(name, T=T)
    ref, before = copy.deepcopy(net), copy.deepcopy(net)
    cfg = STLLRConfig(learn_steps=4, lambda_pre=0.7, lambda_post=0.4, alpha_post=0.5, mode="chunked",
                      chunk_steps=c, online=True)
    stllr_step(net, x, labels, cfg, optimizer=torch.optim.SGD(net.parameters(), lr=0.3))
    reference_stllr_online_sgd(ref, x, labels, cfg, 0.3)
    for (n, p), r, b in zip(net.named_parameters(), ref.parameters(), before.parameters()):
        assert rel_err(p - b, r - b) <= RTOL, n


def test_a_carried_state_continues_in_chunks():
    from stllr_engine.forward import effective_weights, initial_state, run_chunk

    net, x, labels = make_case("recurrent", T=11)
    cfg = STLLRConfig(learn_steps=3, lambda_pre=0.8, lambda_post=0.6, alpha_post=0.5, readout_lambda=0.7)
    factors = cfg.factors(len(net.layers))
    _, _, _, carried = run_chunk(net, x[:4], initial_state(net, x.shape[1], factors, 0.7), effective_weights(net),
                                 0, factors, 0.7)
    net.zero_grad(set_to_none=True)
    _, whole = stllr_step(net, x, labels, cfg)
    want = grads_of(net)
    for c in (1, 2, 3, 5):
        net.zero_grad(set_to_none=True)
        _, final = stllr_step(net, x[4:], labels, _chunked(cfg, c), state=carried)
        for n, g in grads_of(net).items():
            assert rel_err(g, want[n]) <= RTOL, (c, n)
        assert all(rel_err(a, b) <= RTOL for a, b in zip(final.tensors(), whole.tensors()))


# -- settings -------------------------------------------------------------------------------


def test_chunked_is_the_default_with_an_automatic_chunk():
    cfg = STLLRConfig()
    assert (cfg.mode, cfg.chunk_steps) == ("chunked", None)
    # chunks of at most T // 16 steps, the window split into equal ones
    sizes = {(T_, ls): STLLRConfig(learn_steps=ls).chunk_size(T_)
             for T_, ls in ((1, 1), (10, 1), (16, 16), (31, 31), (32, 32), (40, 10), (40, 5), (100, 90), (100, 100),
                            (100, 10), (100, 7), (400, 90), (400, 10))}
    assert sizes == {(1, 1): 1, (10, 1): 1, (16, 16): 1, (31, 31): 1, (32, 32): 2, (40, 10): 2, (40, 5): 2,
                     (100, 90): 6, (100, 100): 6, (100, 10): 5, (100, 7): 4, (400, 90): 23, (400, 10): 10}
    assert STLLRConfig(mode="window").chunk_size(100) == 100
    assert STLLRConfig(mode="streaming").chunk_size(100) == 1
    assert STLLRConfig(chunk_steps=12).chunk_size(100) == 12


def test_chunk_steps_round_trips():
    cfg = STLLRConfig(learn_steps=9, chunk_steps=4)
    d = cfg.to_dict()
    assert (d["mode"], d["chunk_steps"]) == ("chunked", 4)
    assert STLLRConfig.from_dict(d) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    assert STLLRConfig.from_dict({"learn_steps": 9}).chunk_steps is None  # older settings: automatic


@pytest.mark.parametrize("changes, message", [
    ({"chunk_steps": 0}, "S-TLLR: chunk_steps=0 must be an integer >= 1"),
    ({"chunk_steps": 2.5}, "S-TLLR: chunk_steps=2.5 must be an integer >= 1"),
    ({"chunk_steps": True}, "S-TLLR: chunk_steps=True must be an integer >= 1"),
    ({"chunk_steps": 4, "mode": "window"}, "S-TLLR: chunk_steps=4 applies to mode 'chunked' only, not 'window'"),
    ({"chunk_steps": 4, "mode": "streaming"}, "chunk_steps=4 applies to mode 'chunked' only, not 'streaming' "
                                              r"\(window mode is chunk_steps = T, streaming chunk_steps = 1\)"),
    ({"mode": "chunks"}, "S-TLLR: mode='chunks': use one of 'chunked', 'window', 'streaming'"),
])
def test_bad_chunk_settings_are_one_line_errors(changes, message):
    with pytest.raises(StllrError, match=message) as e:
        STLLRConfig(**changes)
    assert "\n" not in str(e.value)


# -- memory -----------------------------------------------------------------------------------

SPEC = NetworkSpec(kind="rsnn", input_shape=(50,), num_classes=5, width=40, depth=1, gamma=0.9, theta=0.5,
                   surrogate="inverse_square", gamma_o=0.95)
B = 8


def _measured(cfg: STLLRConfig | None, T_: int = 24, spec: NetworkSpec = SPEC, batch: int = B) -> int:
    """Measured learning memory of one step (the probe of ``measure_costs``, without FLOP counting)."""
    net = build_network(spec)
    g = torch.Generator().manual_seed(T_)
    x = (torch.rand(T_, batch, *spec.input_shape, generator=g) < 0.2).float()
    y = torch.randint(0, spec.num_classes, (batch,), generator=g)
    probe = CostProbe(exclude=[*net.parameters(), *net.buffers(), x], count_flops=False)
    if cfg is None:
        bptt_step(net, x, y, probe=probe)
    else:
        stllr_step(net, x, y, cfg, probe=probe)
    return probe.peak_bytes


def test_a_chunk_holds_its_records_and_no_more():
    """Records per window step: tr_pre(50), ψ, tr_post(t-1), y(t-1), tr_rec (4·40), the
    readout's trace (40) and o (5), and the bias trace c; x is a view of the input batch.
    A chunk of c window steps holds c of them; streaming holds none beyond the state."""
    streaming = _measured(STLLRConfig(learn_steps=10, mode="streaming"))
    per_step = 4 * (B * (50 + 4 * 40 + 40 + 5) + 1)
    for c in (2, 3, 7, 10, 30):
        got = _measured(STLLRConfig(learn_steps=10, chunk_steps=c))
        assert got - streaming == min(c, 10) * per_step, c
    assert _measured(STLLRConfig(learn_steps=10, chunk_steps=1)) == streaming
    assert _measured(STLLRConfig(learn_steps=10, mode="window")) - streaming == 10 * per_step
    # measure_costs (what training reports) reads the same probe
    cfg = STLLRConfig(learn_steps=10, chunk_steps=3)
    net = build_network(SPEC)
    g = torch.Generator().manual_seed(24)
    x = (torch.rand(24, B, 50, generator=g) < 0.2).float()
    y = torch.randint(0, 5, (B,), generator=g)
    c = measure_costs(net, lambda n, x, y, probe=None: stllr_step(n, x, y, cfg, probe=probe)[0], x, y, "stllr", cfg)
    assert c["learning_memory_bytes_measured_per_batch"] == _measured(cfg) == streaming + 3 * per_step


def test_the_default_on_the_shd_net_measures_under_a_quarter_of_bptt():
    """The SHD net (700 → 450 rec → 20), T = 100, learn_steps 90: exact, load-independent
    (memory is proportional to the batch, so batch 2 tells the ratio of batch 128)."""
    spec = preset("shd_rsnn")
    bptt = _measured(None, 100, spec, 2)
    default = _measured(STLLRConfig(learn_steps=90, lambda_pre=1.0, lambda_post=0.5, alpha_post=1.0), 100, spec, 2)
    window = _measured(STLLRConfig(learn_steps=90, lambda_pre=1.0, lambda_post=0.5, alpha_post=1.0,
                                   mode="window"), 100, spec, 2)
    assert default <= 0.25 * bptt < window
