"""Small networks and inputs shared by the engine tests (float64, spikes near threshold)."""

from __future__ import annotations

import torch

from stllr_engine.network import Network, NetworkSpec, build_network

SPECS = {
    "dense": NetworkSpec(kind="mlp", input_shape=(10,), num_classes=4, width=9, depth=2, gamma=0.8,
                         theta=0.5, surrogate="sigmoid", gamma_o=0.7, seed=1),
    "recurrent": NetworkSpec(kind="rsnn", input_shape=(12,), num_classes=4, width=9, depth=2, gamma=0.8,
                             theta=0.5, surrogate="arctan", gamma_o=0.9, seed=2),
    "conv_avg": NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=3, depth=2, theta=0.3,
                            surrogate="triangle", weight_standardization=True, pool="avg", seed=3),
    "conv_max": NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=3, depth=2, theta=0.3,
                            surrogate="triangle", weight_standardization=False, pool="max", seed=4),
    # the authors' layers: unbiased WS with a gain, also on the recurrent weights; their VGG
    # pools with max and not after its last block
    "recurrent_official": NetworkSpec(kind="rsnn", input_shape=(12,), num_classes=4, width=9, depth=2, gamma=0.8,
                                      theta=0.4, surrogate="inverse_square", gamma_o=0.9, seed=5,
                                      weight_standardization=True, ws_variance="unbiased", ws_gain=True,
                                      recurrent_standardization=True),
    "conv_official": NetworkSpec(kind="vgg", input_shape=(2, 8, 8), num_classes=3, width=3, depth=2, theta=0.3,
                                 surrogate="triangle", weight_standardization=True, ws_variance="unbiased",
                                 ws_gain=True, pool="max", pool_last_block=False, seed=6),
}


def make_case(name: str, reset: str = "soft", T: int = 7, batch: int = 5, seed: int = 0) -> tuple[Network, torch.Tensor, torch.Tensor]:
    spec = SPECS[name].replace(reset=reset)
    net = build_network(spec).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # gains away from 1, so that a wrong gain update shows
        for n, p in net.named_parameters():
            if n.endswith("gain"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
    x = (torch.rand(T, batch, *spec.input_shape, generator=g) < 0.4).double()
    labels = torch.randint(0, spec.num_classes, (batch,), generator=g)
    return net, x, labels


def grads_of(net: Network) -> dict[str, torch.Tensor]:
    """``.grad`` of every parameter by name (zeros where none was written)."""
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
