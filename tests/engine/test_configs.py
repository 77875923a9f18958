"""Settings are checked once and cannot change afterwards; no value is silently adjusted."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from stllr_engine.errors import StllrError
from stllr_engine.network import NetworkSpec, build_network, derived_seed
from stllr_engine.neurons import LIFParameters
from stllr_engine.stllr import STLLRConfig


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"reset": "none"}, "LIF: reset='none': use one of 'soft', 'hard'"),
        ({"surrogate": "relu"}, "LIF: surrogate='relu': use one of"),
        ({"gamma": 1.2}, "LIF: gamma=1.2 must lie in"),
        ({"theta": -0.1}, "LIF: theta=-0.1 must lie in"),
    ],
)
def test_lif_parameters_are_checked(changes, message):
    with pytest.raises(StllrError, match=message):
        LIFParameters(**changes)
    import dataclasses

    with pytest.raises(StllrError, match=message):  # replace() checks too
        dataclasses.replace(LIFParameters(), **changes)


def test_layer_factors_cannot_change_after_validation():
    cfg = STLLRConfig(layer_factors={"1": {"alpha_post": 1.0}})
    assert cfg.layer_factors == {1: {"alpha_post": 1.0}}
    with pytest.raises(TypeError):
        cfg.layer_factors[0] = {"alpha_post": 5.0}  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.layer_factors[1]["alpha_post"] = float("nan")  # type: ignore[index]
    assert cfg.to_dict()["layer_factors"] == {"1": {"alpha_post": 1.0}}
    assert STLLRConfig.from_dict(cfg.to_dict()) == cfg
    for clone in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert clone == cfg
        with pytest.raises(TypeError):
            clone.layer_factors[1]["alpha_post"] = 2.0  # type: ignore[index]
    import dataclasses

    assert dataclasses.asdict(cfg)["layer_factors"] == {1: {"alpha_post": 1.0}}  # enclosing configs use asdict
    assert hash(cfg) == hash(STLLRConfig.from_dict(cfg.to_dict()))


@pytest.mark.parametrize("seed", [0, 12345, 2**63 - 1])
def test_feedback_matrices_for_any_valid_seed(seed):
    net = build_network(NetworkSpec(kind="mlp", input_shape=(6,), num_classes=3, width=5, depth=2, seed=seed))
    b0, b1 = net.feedback_matrix(0), net.feedback_matrix(1)
    assert b0.shape == (3, 5) and not torch.equal(b0, b1)
    assert torch.equal(build_network(net.spec).feedback_matrix(0), b0)  # rebuilt: the same matrix
    assert 0 <= derived_seed(seed, "dfa/0") < 2**63


@pytest.mark.parametrize("seed, message", [(-1, "seed=-1 must be an integer >= 0"),
                                           (2**63, "seed=9223372036854775808 is too large")])
def test_seeds_out_of_range_are_clear_errors(seed, message):
    with pytest.raises(StllrError, match=message):
        NetworkSpec(seed=seed)
