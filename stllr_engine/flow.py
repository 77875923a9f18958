r"""Optical flow: the self-supervised loss and the evaluation (issue #18 item 4).

In the style of Spike-FlowNet (ECCV 2020), which the S-TLLR authors' flow code follows.

Loss (per scale ``s``, images resized to the flow's size, summed over the scales)::

    L = Σ_s [ ρ(I_prev − W(I_next, F_s)) + λ_smooth · S₂(F_s) ]

* ``W(I, F)`` warps ``I`` by the flow: ``W(I, F)(x, y) = I(x + u(x, y), y + v(x, y))``,
  bilinear, zero outside the image (:func:`warp`); so ``F`` carries a pixel of ``I_prev`` to
  where it is in ``I_next``;
* ``ρ(d) = (d² + ε²)^α``, the generalised Charbonnier penalty (α = 0.45, ε = 1e-3), averaged
  over pixels (:func:`charbonnier`);
* ``S₂(F)``: second-order smoothness, ``ρ`` of the second differences of ``u`` and ``v``
  along x, along y and along both diagonals, each averaged over its positions, then summed
  (:func:`smoothness`); λ_smooth = 10.

Evaluation (:func:`flow_errors`, :class:`FlowMetrics`): the end-point error
``‖F − F_gt‖₂`` over the pixels that had at least one event and whose ground truth is
valid (finite and not zero in both components); AEE is its mean over those pixels of a frame,
then averaged over frames; "% outliers" is the share of those points, over all frames, with
an error above 3 pixels (MVSEC's convention in Spike-FlowNet's tables).

>>> import torch
>>> flow = torch.zeros(1, 2, 2, 2); gt = torch.zeros(1, 2, 2, 2); gt[0, 0] = 3.0; gt[0, 1] = 4.0
>>> aee, n, outliers = flow_errors(flow, gt, torch.ones(1, 2, 2, dtype=torch.bool))
>>> aee.tolist(), n.tolist(), outliers.tolist()
([5.0], [4], [4])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from stllr_engine.errors import StllrError
from stllr_engine.losses import StepLoss

__all__ = ["warp", "charbonnier", "photometric", "smoothness", "flow_loss", "flow_errors", "FlowMetrics",
           "FlowStepLoss", "FLOW_LOSSES", "ALPHA", "EPSILON", "SMOOTH_WEIGHT", "OUTLIER_PX"]

ALPHA = 0.45
EPSILON = 1e-3
SMOOTH_WEIGHT = 10.0
OUTLIER_PX = 3.0


def _image(t: Tensor) -> Tensor:
    """``[B, H, W]`` or ``[B, C, H, W]`` → ``[B, C, H, W]``."""
    if t.dim() == 3:
        return t[:, None]
    if t.dim() != 4:
        raise StllrError(f"an image batch must be [B, H, W] or [B, C, H, W], got {tuple(t.shape)}")
    return t


def _check_flow(flow: Tensor) -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise StllrError(f"a flow batch must be [B, 2, H, W] (u then v, in pixels), got {tuple(flow.shape)}")


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """``image`` sampled at ``(x + u, y + v)``: bilinear, zero outside; ``[B, (C,) H, W]`` and
    ``flow [B, 2, H, W]`` (pixels, ``u`` along x = width) → ``[B, C, H, W]``.

    >>> img = torch.arange(4.0, dtype=torch.float64).view(1, 1, 1, 4)
    >>> right = lambda u: torch.stack([torch.full((1, 4), u), torch.zeros(1, 4)])[None].double()
    >>> warp(img, right(1.0)).flatten().tolist(), warp(img, right(0.5)).flatten().round(decimals=12).tolist()
    ([1.0, 2.0, 3.0, 0.0], [0.5, 1.5, 2.5, 1.5])
    """
    img = _image(image)
    _check_flow(flow)
    B, _, H, W = img.shape
    if flow.shape[0] != B or flow.shape[2:] != (H, W):
        raise StllrError(f"flow {tuple(flow.shape)} does not fit images {tuple(img.shape)}: same batch, H and W")
    ys, xs = torch.meshgrid(torch.arange(H, dtype=flow.dtype, device=flow.device),
                            torch.arange(W, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    # grid_sample's normalised coordinates (align_corners=True: -1 and 1 are the edge pixels' centres)
    gx = 2.0 * x / max(W - 1, 1) - 1.0
    gy = 2.0 * y / max(H - 1, 1) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img.to(flow.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def charbonnier(d: Tensor, alpha: float = ALPHA, eps: float = EPSILON) -> Tensor:
    """``mean((d² + ε²)^α)``.

    >>> round(float(charbonnier(torch.zeros(3))), 8) == round((1e-3) ** 0.9, 8)
    True
    """
    return (d * d + eps * eps).pow(alpha).mean()


def photometric(prev: Tensor, nxt: Tensor, flow: Tensor, alpha: float = ALPHA, eps: float = EPSILON) -> Tensor:
    """``ρ(I_prev − W(I_next, F))`` averaged over pixels (and channels, samples)."""
    return charbonnier(_image(prev).to(flow.dtype) - warp(nxt, flow), alpha, eps)


def smoothness(flow: Tensor, alpha: float = ALPHA, eps: float = EPSILON) -> Tensor:
    """Second-order smoothness: ``ρ`` of ``F[i−1] − 2F[i] + F[i+1]`` along x, y and both diagonals
    (each averaged over its positions, the four summed). Zero-curvature flow gives ``4·ε^{2α}``.

    >>> ramp = torch.arange(5.0, dtype=torch.float64).expand(1, 2, 5, 5).clone()  # affine: no curvature
    >>> abs(float(smoothness(ramp)) - 4 * (1e-3) ** 0.9) < 1e-9
    True
    """
    _check_flow(flow)
    c = flow[:, :, 1:-1, 1:-1]
    terms = [
        flow[:, :, 1:-1, :-2] - 2 * c + flow[:, :, 1:-1, 2:],   # along x
        flow[:, :, :-2, 1:-1] - 2 * c + flow[:, :, 2:, 1:-1],   # along y
        flow[:, :, :-2, :-2] - 2 * c + flow[:, :, 2:, 2:],      # diagonal
        flow[:, :, :-2, 2:] - 2 * c + flow[:, :, 2:, :-2],      # anti-diagonal
    ]
    # a flow under 3 x 3 has no second differences: nothing to penalise
    return sum((charbonnier(t, alpha, eps) for t in terms if t.numel()),
               torch.zeros((), dtype=flow.dtype, device=flow.device))


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    img = _image(image)
    if tuple(img.shape[2:]) == size:
        return img
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False)


def flow_loss(flows: Sequence[Tensor], prev: Tensor, nxt: Tensor, smooth_weight: float = SMOOTH_WEIGHT,
              alpha: float = ALPHA, eps: float = EPSILON) -> Tensor:
    """The multi-scale self-supervised loss: for each flow ``[B, 2, h, w]`` (any number of scales),
    ``photometric`` on the images resized (bilinear) to ``h × w`` plus ``smooth_weight ·
    smoothness``; summed over the scales. A flow at a coarser scale is in that scale's pixels."""
    if not flows:
        raise StllrError("flow_loss needs at least one flow")
    total = torch.zeros((), dtype=flows[0].dtype, device=flows[0].device)
    for f in flows:
        size = (f.shape[2], f.shape[3])
        total = total + photometric(_resize(prev, size), _resize(nxt, size), f, alpha, eps)
        total = total + smooth_weight * smoothness(f, alpha, eps)
    return total


def flow_errors(flow: Tensor, gt: Tensor, events: Tensor, outlier_px: float = OUTLIER_PX) -> tuple[Tensor, Tensor, Tensor]:
    """Per frame: ``(AEE over the valid points, how many points, how many with error > outlier_px)``.

    A point is valid where ``events`` (``[B, H, W]``, at least one event there) and the ground
    truth is finite and not zero in both components. A frame without a valid point gets AEE nan.
    """
    _check_flow(flow)
    _check_flow(gt)
    if flow.shape != gt.shape or events.shape != (flow.shape[0], *flow.shape[2:]):
        raise StllrError(f"flow {tuple(flow.shape)}, ground truth {tuple(gt.shape)} and event mask "
                         f"{tuple(events.shape)} must agree ([B, 2, H, W] twice, [B, H, W])")
    finite = torch.isfinite(gt).all(1)
    nonzero = (gt != 0).any(1)
    valid = events.bool() & finite & nonzero
    gt0 = torch.where(finite[:, None], gt, torch.zeros_like(gt))
    epe = torch.linalg.vector_norm(flow - gt0, dim=1)  # [B, H, W]
    n = valid.flatten(1).sum(1)
    total = torch.where(valid, epe, torch.zeros_like(epe)).flatten(1).sum(1)
    aee = torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, float("nan")))
    outliers = (valid & (epe > outlier_px)).flatten(1).sum(1)
    return aee, n, outliers


@dataclass
class FlowMetrics:
    """Accumulates :func:`flow_errors` over a sequence's frames: :meth:`result` gives AEE (mean of
    the frames' AEE, frames without a valid point left out), % outliers over all valid points,
    and the counts."""

    outlier_px: float = OUTLIER_PX
    frame_aee: list[float] = field(default_factory=list)
    points: int = 0
    outliers: int = 0
    empty_frames: int = 0

    def update(self, flow: Tensor, gt: Tensor, events: Tensor) -> None:
        aee, n, out = flow_errors(flow.detach(), gt, events, self.outlier_px)
        for a, k in zip(aee.tolist(), n.tolist()):
            if k:
                self.frame_aee.append(float(a))
            else:
                self.empty_frames += 1
        self.points += int(n.sum())
        self.outliers += int(out.sum())

    def result(self) -> dict[str, float]:
        frames = len(self.frame_aee)
        return {"aee": sum(self.frame_aee) / frames if frames else float("nan"),
                "outliers_pct": 100.0 * self.outliers / self.points if self.points else float("nan"),
                "frames": float(frames), "empty_frames": float(self.empty_frames), "points": float(self.points)}



#: the losses a flow network trains on (``TrainConfig.flow_loss``)
FLOW_LOSSES = ("photometric", "supervised")


class FlowStepLoss(StepLoss):
    """The flow losses as a per-step loss (:class:`stllr_engine.losses.StepLoss`).

    ``o[t]`` is the flow head's flat output ``[B, 2·H·W]`` (the u map, then the v map); a
    sample's target is ``[4, H, W]``: the previous and the next grey image, then the
    ground-truth flow ``(u, v)``.

    * ``"photometric"`` (the default, the paper's, self-supervised): :func:`flow_loss` of the
      flow at one scale; the ground truth is not used;
    * ``"supervised"``: the mean squared error to the ground-truth flow over the pixels where it
      is known (finite and not zero in both components, MVSEC's marker of an unknown flow),
      both components; for tasks whose flow is known (``flow_synthetic``: everywhere but the
      centre of a rotation).
    """

    name = "flow"
    classification = False
    target_dims = 3

    def __init__(self, kind: str = "photometric", smooth_weight: float = SMOOTH_WEIGHT):
        if kind not in FLOW_LOSSES:
            raise StllrError(f"flow loss {kind!r}: use one of {', '.join(FLOW_LOSSES)}")
        self.kind = kind
        self.smooth_weight = float(smooth_weight)

    def step(self, o: Tensor, target: Tensor) -> Tensor:
        b, _, h, w = target.shape
        flow = o.reshape(b, 2, h, w)
        if self.kind == "supervised":
            gt = target[:, 2:4]
            known = (torch.isfinite(gt).all(1) & (gt != 0).any(1))[:, None].to(flow.dtype)  # [B, 1, H, W]
            d = torch.where(known.bool(), flow - torch.nan_to_num(gt), torch.zeros_like(flow))
            return (d * d).sum() / (2.0 * known.sum()).clamp_min(1.0)
        return flow_loss([flow], target[:, 0], target[:, 1], self.smooth_weight)

    def __repr__(self) -> str:
        return f"FlowStepLoss({self.kind!r}, smooth_weight={self.smooth_weight})"
