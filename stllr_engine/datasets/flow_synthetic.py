r"""An embedded optical-flow task: a smooth random texture that moves by a known rigid motion.

Each sample draws its own texture, a sum of ``K = 8`` plane waves with random directions,
wavelengths of 6 to 16 pixels, phases and amplitudes, scaled into ``[0.05, 0.95]``:

.. math::

    I_0(x, y) = 0.5 + 0.45\,\frac{\sum_k a_k \cos(2\pi(f_k \cdot (x, y)) + \phi_k)}{\sum_k |a_k|}

and a motion: a translation ``t`` (each component uniform in ``[-max_shift, max_shift]`` pixels)
and a rotation by ``θ`` (uniform in ``[-max_rotation, max_rotation]`` degrees) about the image
centre ``c = ((size-1)/2, (size-1)/2)``, both growing linearly over the interval ``s ∈ [0, 1]``:
a point ``p`` of the first image is at ``c + R(sθ)(p − c) + s·t`` at time ``s``. So the image at
time ``s`` is ``I_s(q) = I_0(c + R(−sθ)(q − c − s·t))`` (rendered exactly: the texture is analytic),
``I_prev = I_0``, ``I_next = I_1``, and the ground-truth flow is the exact displacement

.. math::

    F(x) = c + R(θ)(x − c) + t − x,\qquad I_\text{prev}(x) = I_\text{next}(x + F(x)).

Events: the image is rendered at ``S = 4T`` sub-steps ``s = k/S`` (``k = 1 .. S``); each pixel keeps
a reference log intensity (starting at ``log I_0``) and at each sub-step emits
``n = trunc((log I_s − ref) / contrast)`` events of polarity ``sign(n)`` and moves its reference by
``n · contrast`` (so ``ON − OFF`` is ``(log I_next − log I_prev) / contrast`` to within one event).
Sub-steps ``1 .. S/2`` are the former half and ``S/2 + 1 .. S`` the latter; each half is split into
``T`` equal-time bins (two sub-steps each). Frames ``[T, 4, size, size]``: at step ``t`` the
channels are (former-half bin ``t`` ON, former OFF, latter-half bin ``t`` ON, latter OFF), as
Spike-FlowNet's dt = 1 input. Counts are stored as uint8 (uint16 if a count exceeds 255).

Train and test are drawn from independent streams of the same seed (``[seed, 1]`` and
``[seed, 2]``). No files are used; the defaults take well under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stllr_engine.datasets import _params
from stllr_engine.datasets._base import DatasetInfo
from stllr_engine.datasets._flow import ArrayFlowSource, FlowDataset
from stllr_engine.errors import StllrError

NAME = "flow_synthetic"
DEFAULTS: dict[str, Any] = {"T": 5, "size": 32, "n_train": 512, "n_test": 128, "max_shift": 2.0,
                            "max_rotation": 5.0, "contrast": 0.1, "seed": 0}
WAVES = 8
WAVELENGTH_PX = (6.0, 16.0)
STEPS_PER_BIN = 2
_CHUNK_VALUES = 2**20  # pixels x sub-steps rendered at once (a few arrays of 8 MiB)


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check the knobs; return them normalised."""
    out = dict(params)
    out["T"] = _params.positive_int(NAME, "T", params["T"], 1)
    out["size"] = _params.positive_int(NAME, "size", params["size"], 8)
    if out["size"] % 8 or out["size"] > 512:
        raise StllrError(f"dataset {NAME!r}: size={params['size']!r} must be a multiple of 8 "
                         "between 8 and 512 (the flow network halves it three times)")
    out["n_train"] = _params.positive_int(NAME, "n_train", params["n_train"], 1)
    out["n_test"] = _params.positive_int(NAME, "n_test", params["n_test"], 1)
    out["max_shift"] = _params.real_in(NAME, "max_shift", params["max_shift"], 0.0, out["size"] / 4)
    out["max_rotation"] = _params.real_in(NAME, "max_rotation", params["max_rotation"], 0.0, 45.0)
    out["contrast"] = _params.real_in(NAME, "contrast", params["contrast"], 0.01, 5.0)
    out["seed"] = _params.any_int(NAME, "seed", params["seed"])
    return out


def displacement(size: int, shift: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """Exact flow ``[N, 2, size, size]`` (u, v in pixels) of a rotation by ``angle_deg [N]`` about the
    image centre followed by a translation ``shift [N, 2]`` (x, y)."""
    c = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    dx, dy = xs - c, ys - c
    u = c + cos * dx - sin * dy + shift[:, 0, None, None] - xs
    v = c + sin * dx + cos * dy + shift[:, 1, None, None] - ys
    return np.stack([u, v], axis=1)


def _render(waves: dict[str, np.ndarray], size: int, s: np.ndarray, shift: np.ndarray,
            theta: np.ndarray) -> np.ndarray:
    """Images ``[N, len(s), size, size]`` at times ``s``: ``I_0`` at ``p = c + R(−sθ)(q − c − s·t)``.

    A wave's phase ``2π f·p + φ`` is affine in the pixel ``q``: ``A + 2π g·q`` with ``g = R(sθ) f``,
    so each image is the real part of a product ``[size, K] @ [K, size]`` of complex exponentials.
    """
    c = (size - 1) / 2.0
    a = theta[:, None, None] * s[None, :, None]                    # [N, S, 1]
    fx, fy = waves["fx"][:, None, :], waves["fy"][:, None, :]      # [N, 1, K]
    gx = np.cos(a) * fx - np.sin(a) * fy                           # [N, S, K]
    gy = np.sin(a) * fx + np.cos(a) * fy
    ox = c + s[None, :, None] * shift[:, 0, None, None]            # q − (c + s·t)
    oy = c + s[None, :, None] * shift[:, 1, None, None]
    phase0 = waves["phase"][:, None, :] + 2 * np.pi * (fx * c + fy * c - gx * ox - gy * oy)
    pix = np.arange(size, dtype=np.float64)
    left = (waves["amp"][:, None, :] * np.exp(1j * phase0))[:, :, None, :] * np.exp(
        2j * np.pi * gy[:, :, None, :] * pix[None, None, :, None])        # [N, S, H, K]
    right = np.exp(2j * np.pi * gx[:, :, :, None] * pix[None, None, None, :])  # [N, S, K, W]
    total = np.matmul(left, right).real
    norm = np.abs(waves["amp"]).sum(1)[:, None, None, None]
    return 0.5 + 0.45 * total / norm


def _draw(n: int, p: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, T, contrast = p["size"], p["T"], p["contrast"]
    direction = rng.uniform(0, 2 * np.pi, (n, WAVES))
    wavelength = rng.uniform(*WAVELENGTH_PX, (n, WAVES))
    waves = {"fx": np.cos(direction) / wavelength, "fy": np.sin(direction) / wavelength,
             "phase": rng.uniform(0, 2 * np.pi, (n, WAVES)), "amp": rng.uniform(0.3, 1.0, (n, WAVES))}
    shift = rng.uniform(-p["max_shift"], p["max_shift"], (n, 2))
    angle = rng.uniform(-p["max_rotation"], p["max_rotation"], n)
    theta = np.deg2rad(angle)
    S = 2 * T * STEPS_PER_BIN
    s = np.arange(S + 1) / S
    counts = np.zeros((n, T, 4, size, size), dtype=np.int32)
    targets = np.empty((n, 4, size, size), dtype=np.float32)
    targets[:, 2:] = displacement(size, shift, angle)
    chunk = max(1, _CHUNK_VALUES // ((S + 1) * size * size))
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        part = {k: v[a:b] for k, v in waves.items()}
        images = _render(part, size, s, shift[a:b], theta[a:b])  # [n, S + 1, H, W]
        targets[a:b, 0] = images[:, 0]
        targets[a:b, 1] = images[:, -1]
        logs = np.log(images)
        ref = logs[:, 0].copy()
        for k in range(1, S + 1):
            fired = np.trunc((logs[:, k] - ref) / contrast)
            ref += fired * contrast
            bin_ = (k - 1) // STEPS_PER_BIN            # 0 .. 2T - 1
            latter, step = divmod(bin_, T)
            counts[a:b, step, 2 * latter] += np.maximum(fired, 0).astype(np.int32)
            counts[a:b, step, 2 * latter + 1] += np.maximum(-fired, 0).astype(np.int32)
    dtype = np.uint8 if counts.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16
    return counts.astype(dtype), targets


def load(params: dict[str, Any]) -> tuple[FlowDataset, FlowDataset]:
    """Generate the train and test splits from validated ``params``."""
    p = {**DEFAULTS, **params}
    pair = []
    for stream, split in enumerate(("train", "test"), start=1):
        n = p[f"n_{split}"]
        frames, targets = _draw(n, p, np.random.default_rng([p["seed"], stream]))
        info = DatasetInfo(name=NAME, split=split, input_shape=(4, p["size"], p["size"]), num_classes=2,
                           T=p["T"], params=dict(p), task="flow")
        pair.append(FlowDataset(ArrayFlowSource(frames, targets), info, [(f"{NAME}-{split}", 0, n)],
                                grouped=False))
    return pair[0], pair[1]
