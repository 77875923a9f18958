"""The fused time step (issue #16 item 5) against today's eager step.

* the kernel's one step, for every surrogate, reset and dtype, for one network and for a pack's
  strided ``[K, B, n]`` views with per-member λ: bit for bit on the vector lanes (the eager step's
  own instructions), to float rounding on a ragged tail;
* the S-TLLR (window, streaming, chunked) and BPTT steps of dense, recurrent and conv networks,
  and the packed steps: gradients fused vs eager, float64, relative 1e-12;
* runs: a float32 MLP run trains to the same bits fused or not; costs are the eager step's;
  the switch (``TrainConfig.fused``) and a machine without a compiler (for real: a compiler
  that is not there) give eager steps or one clear error.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from stllr_engine import NetworkSpec, STLLRConfig, TrainConfig, bptt_step, build_network, fused, stllr_step
from stllr_engine.errors import StllrError
from stllr_engine.neurons import SURROGATES
from stllr_engine.pack import Pack, pack_bptt_step, pack_stllr_step

pytestmark = pytest.mark.skipif(not fused.available(), reason=f"the fused kernel does not build here: {fused._error}")

REL = 1e-12


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / (b.abs().max() + 1e-30))


def _eager_step(u, cur, rec, lam, gamma, theta, reset, surrogate, tr, fma_trace=True):
    torch.add(cur, u, alpha=gamma, out=u)
    if rec is not None:
        u.add_(rec)
    v = torch.sub(u, theta)
    y = torch.heaviside(v, u.new_ones(()))
    if reset == "soft":
        u.sub_(y, alpha=theta)
    else:
        u.mul_(1.0 - y)
    psi = SURROGATES[surrogate](v)
    old = tr.clone()
    new = torch.add(psi, tr, alpha=float(lam)) if fma_trace else torch.addcmul(psi, tr, lam)
    return u, v, y, psi, old, new


@pytest.mark.parametrize("dtype,surrogate,reset", list(itertools.product(
    [torch.float32, torch.float64], sorted(SURROGATES), ["soft", "hard"])))
def test_one_fused_step_is_the_eager_step_bit_for_bit(dtype, surrogate, reset):
    g = torch.Generator().manual_seed(1)
    B, n = 16, 64  # a multiple of every vector width: every element on the vector lanes
    u = torch.randn(B, n, generator=g, dtype=dtype)
    cur, rec, tr = (torch.randn(B, n, generator=g, dtype=dtype) for _ in range(3))
    u[0, :8], cur[0, :8], rec[0, :8] = 0.0, 1.0, 0.0  # v exactly 0 (H(0) = 1) on a few elements
    lam = torch.tensor([0.7], dtype=torch.float64)
    eu, ev, ey, epsi, eold, enew = _eager_step(u.clone(), cur, rec, 0.7, 0.9, 1.0, reset, surrogate, tr)
    fv, fy, fpsi, fsave, fnew = (torch.empty_like(u) for _ in range(5))
    fu = u.clone()
    fused.lif_step(fu, cur, rec, fv, fy, fpsi, tr, fnew, fsave, lam, 0.9, 1.0, reset, surrogate)
    for name, a, b in [("u", fu, eu), ("v", fv, ev), ("y", fy, ey), ("psi", fpsi, epsi), ("saved trace", fsave, eold),
                       ("trace", fnew, enew)]:
        assert torch.equal(a, b), (name, _rel(a, b))
    assert float(fy[0, :8].min()) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_pack_step_on_strided_member_views_with_their_own_lambda(dtype):
    g = torch.Generator().manual_seed(2)
    K, T, B, n = 3, 4, 5, 7  # 35 elements per member: a ragged tail after the vector lanes
    u = torch.randn(K, B, n, generator=g, dtype=dtype)
    current = torch.randn(K, T, B, n, generator=g, dtype=dtype)
    hist = torch.randn(K, T + 1, B, n, generator=g, dtype=dtype)
    lam = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)
    spikes = torch.zeros(K, T, B, n, dtype=dtype)
    psi = torch.empty(K, T, B, n, dtype=dtype)
    ref_u, ref_hist = u.clone(), hist.clone()
    fused.lif_step(u, current[:, 1], None, None, spikes[:, 1], psi[:, 1], hist[:, 1], hist[:, 2], None, lam,
                   0.8, 0.4, "hard", "sigmoid", groups=K, fma_trace=False)
    eu, _, ey, epsi, _, enew = _eager_step(ref_u, current[:, 1], None, lam.view(K, 1, 1), 0.8, 0.4, "hard", "sigmoid",
                                           ref_hist[:, 1], fma_trace=False)
    tol = 1e-6 if dtype == torch.float32 else 1e-15
    for a, b in [(u, eu), (spikes[:, 1], ey), (psi[:, 1], epsi), (hist[:, 2], enew)]:
        assert _rel(a, b) <= tol
    assert torch.equal(spikes[:, 0], torch.zeros_like(spikes[:, 0])) and torch.equal(hist[:, 0], ref_hist[:, 0])


def test_the_kernel_refuses_what_it_cannot_read():
    u = torch.zeros(4, 8)
    with pytest.raises(RuntimeError, match="not contiguous within a member"):
        fused.lif_step(u, torch.zeros(8, 4).t(), None, None, torch.empty(4, 8), None, None, None, None, None,
                       0.9, 1.0, "soft", "sigmoid")
    with pytest.raises(RuntimeError, match="dtype"):
        fused.lif_step(u, torch.zeros(4, 8, dtype=torch.float64), None, None, torch.empty(4, 8), None, None, None,
                       None, None, 0.9, 1.0, "soft", "sigmoid")


def _net(kind: str, surrogate: str, reset: str, depth: int = 2):
    if kind == "vgg":
        spec = NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=4, depth=2, gamma=0.8, theta=0.3,
                           surrogate=surrogate, reset=reset, gamma_o=0.9, seed=1)
    else:
        spec = NetworkSpec(kind=kind, input_shape=(12,), num_classes=3, width=16, depth=depth, gamma=0.8, theta=0.3,
                           surrogate=surrogate, reset=reset, gamma_o=0.9, seed=1)
    return spec


def _grads(spec, rule: str, stllr: STLLRConfig | None, loss: str | None):
    net = build_network(spec).double()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(10, 5, *spec.input_shape, generator=g) < 0.4).double()
    y = torch.randint(0, spec.num_classes, (5,), generator=g)
    if rule == "stllr":
        stats = stllr_step(net, x, y, stllr, loss=loss or "per_step")[0]
    else:
        stats = bptt_step(net, x, y, loss=loss or "sum_output", learn_steps=4)
    return [p.grad.clone() for p in net.parameters() if p.grad is not None], float(stats.loss)


_STEP_CASES = [
    *[(kind, "stllr", mode, loss) for kind in ("mlp", "rsnn", "vgg") for mode in ("window", "streaming", "chunked")
      for loss in ("per_step", "sum_output")],
    *[(kind, "bptt", None, loss) for kind in ("mlp", "rsnn", "vgg") for loss in ("sum_output", "per_step", "per_step_all")],
]


@pytest.mark.parametrize("kind,rule,mode,loss", _STEP_CASES)
def test_fused_steps_equal_eager_steps(kind, rule, mode, loss):
    worst = 0.0
    for surrogate, reset in [("sigmoid", "soft"), ("triangle", "hard"), ("inverse_square", "soft"), ("arctan", "hard")]:
        spec = _net(kind, surrogate, reset)
        stllr = STLLRConfig(learn_steps=4, mode=mode, chunk_steps=3 if mode == "chunked" else None, lambda_post=0.5,
                            alpha_post=0.3) if rule == "stllr" else None
        with fused.use("off"):
            eager, eager_loss = _grads(spec, rule, stllr, loss)
        with fused.use("on"):
            fast, fast_loss = _grads(spec, rule, stllr, loss)
        assert len(fast) == len(eager) > 0
        worst = max(worst, *(_rel(a, b) for a, b in zip(fast, eager)))
        assert abs(fast_loss - eager_loss) <= REL * abs(eager_loss)
    assert worst <= REL


@pytest.mark.parametrize("kind,rule", list(itertools.product(["mlp", "rsnn"], ["stllr", "bptt"])))
def test_fused_pack_steps_equal_eager_pack_steps(kind, rule):
    K, T, B = 3, 12, 5
    spec = NetworkSpec(kind=kind, input_shape=(7,), num_classes=4, width=9, depth=2, gamma=0.7, theta=0.3,
                       gamma_o=0.5, surrogate="sigmoid")
    cfgs = [TrainConfig(rule=rule, stllr=STLLRConfig(learn_steps=ls, lambda_post=lp, alpha_post=0.5))
            for ls, lp in ((4, 0.2), (12, 0.7), (1, 1.0))]
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(K, T, B, 7, generator=g) < 0.4).double()
    y = torch.randint(0, 4, (K, B), generator=g)
    grads = {}
    for setting in ("off", "on"):
        nets = [build_network(spec.replace(seed=s)).double() for s in range(K)]
        pack = Pack.from_networks(nets, cfgs)
        with fused.use(setting):
            (pack_stllr_step if rule == "stllr" else pack_bptt_step)(pack, x, y)
        grads[setting] = [p.grad.clone() for p in pack.parameters()]
    assert max(_rel(a, b) for a, b in zip(grads["on"], grads["off"])) <= REL


def _exp(kind: str, rule: str, setting: str, epochs: int, measure: bool = True):
    from stllr_engine.experiment import ExperimentConfig

    return ExperimentConfig.for_dataset(
        "synthetic_temporal", {"T": 12, "channels": 8, "samples_per_class": 24},
        network={"kind": kind, "width": 24, "gamma": 0.9, "theta": 0.5, "surrogate": "sigmoid", "gamma_o": 0.9},
        training={"rule": rule, "epochs": epochs, "lr": 3e-3, "fused": setting, "measure_costs": measure,
                  "stllr": {"learn_steps": 4, "lambda_post": 0.5, "alpha_post": 0.5}},
        data={"batch_size": 16, "val_fraction": 0.25}, runtime={"threads": 1}, seed=0)


def _run(tmp_path, setting: str, name: str):
    from stllr_engine.experiment import run_experiment

    out = list(run_experiment(_exp("mlp", "stllr", setting, 3), checkpoint_dir=tmp_path / name))
    return out, torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]


def test_a_fused_float32_run_trains_to_the_eager_runs_bits_and_costs(tmp_path):
    eager, w_eager = _run(tmp_path, "off", "eager")
    fast, w_fast = _run(tmp_path, "auto", "fast")
    for k in w_eager:
        assert torch.equal(w_fast[k], w_eager[k]), k
    for a, b in zip(fast, eager):
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy",
                    "learning_memory_bytes_measured_per_batch", "peak_step_bytes_measured_per_batch",
                    "learning_macs_measured_per_sample", "forward_macs_measured_per_sample"):
            assert a.get(key) == b.get(key), key
    assert [m["fused_step"] for m in fast] == [True] * 3 and [m["fused_step"] for m in eager] == [False] * 3
    assert all(m["fused_compile_s"] >= 0.0 for m in fast) and eager[0]["fused_compile_s"] == 0.0


def test_a_run_resumes_under_the_other_setting(tmp_path):
    from stllr_engine.experiment import run_experiment

    first = list(run_experiment(_exp("rsnn", "bptt", "off", 2, measure=False), checkpoint_dir=tmp_path))
    again = list(run_experiment(_exp("rsnn", "bptt", "on", 2, measure=False), checkpoint_dir=tmp_path, resume=True))
    assert again[-1]["resumed_finished"] and again[-1]["val_accuracy"] == first[-1]["val_accuracy"]


def test_the_switch_takes_only_its_three_settings():
    assert TrainConfig(fused=False).fused == "off" and TrainConfig(fused=True).fused == "on"
    assert TrainConfig().fused == "auto"
    with pytest.raises(StllrError, match="fused"):
        TrainConfig(fused="fast")
    with pytest.raises(StllrError, match="fused must be one of auto, on, off"):
        with fused.use("sometimes"):
            pass


_NO_COMPILER = """
import warnings, torch
from stllr_engine import fused, TrainConfig
from stllr_engine.errors import StllrError
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    print("active", fused.active(torch.zeros(2)))
print("warned", any("fused steps unavailable" in str(x.message) for x in w))
try:
    with fused.use("on"):
        pass
except StllrError as exc:
    print("error", str(exc).splitlines()[0][:60], len(str(exc).splitlines()))
"""


def test_a_machine_without_a_compiler_runs_eager_steps_or_says_why_not(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), STLLR_FUSED_DIR=str(tmp_path / "build"))
    res = subprocess.run([sys.executable, "-c", _NO_COMPILER], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[:2] == ["active False", "warned True"], res.stdout
    assert lines[2].startswith("error fused: on, but the fused kernel cannot be built") and lines[2].endswith(" 1")


def test_a_build_killed_midway_does_not_hang_the_next(tmp_path):
    # torch's own lock file, left by a killed builder, must not make the next build wait for ever
    import shutil

    folder = tmp_path / "build"
    shutil.copytree(fused.build_directory(), folder)  # built already: this load takes no compiler time
    (folder / "lock").write_text("")
    env = dict(os.environ, STLLR_FUSED_DIR=str(folder))
    code = "from stllr_engine import fused; print(fused.available(), fused._error)"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=400)
    assert res.stdout.split()[0] == "True", res.stdout + res.stderr[-2000:]


def test_two_checkouts_sharing_a_home_folder_build_into_their_own_folders(tmp_path):
    """Else each rebuilds the other's kernel (~50 s each time) and may overwrite a library
    that the other's processes have loaded."""
    import shutil

    import stllr_engine

    copy = tmp_path / "elsewhere"
    shutil.copytree(os.path.dirname(stllr_engine.__file__), copy / "stllr_engine")
    code = "from stllr_engine import fused; print(fused.build_directory())"
    env = {k: v for k, v in os.environ.items() if k != "STLLR_FUSED_DIR"}
    env["PYTHONPATH"] = str(copy)
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                           timeout=120).stdout.strip()
    env.pop("PYTHONPATH")
    here = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120).stdout.strip()
    assert other and here and other != here
    assert os.path.dirname(other) == os.path.dirname(here)  # the same cache, folders of their own
