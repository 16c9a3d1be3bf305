"""Retrieval losses of the papers we reproduce, plus symmetric InfoNCE.

Papers (``../shared/papers``): CVM-Net (Hu et al., CVPR 2018), Revisiting (Zhu et al., WACV 2021,
"Revisiting Street-to-Aerial View Image Geo-localization and Orientation Estimation"), VIGOR
(Zhu et al., CVPR 2021); InfoNCE as in Sample4Geo (Deuser et al., ICCV 2023).

Conventions: embeddings are L2-normalised (B, D) rows; distances d are squared L2 (CVM-Net 5.2),
so d = 2 - 2 cos; similarities s are cosines. ``mining.py`` turns a batch of embeddings into the
d/s tensors these functions take. ``reduction`` is "mean" (the papers' 1/N sum, Revisiting
eq. 2), "sum" or "none" (per element); the mean of an empty set is 0, still attached to the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossview_training.mining import (
    check_normalised,
    exhaustive_in_batch,
    hardest_in_batch,
    valid_negatives,
)

Reduction = Literal["mean", "sum", "none"]

# CVM-Net 5.2: alpha = 10 for the weighted triplet and quadruplet losses (VIGOR 5 follows).
CVM_ALPHA = 10.0
# Revisiting 5 (implementation details): alpha_p = 5, alpha_n = 20, m_p = 0, m_n = 0.7.
BINOMIAL_ALPHA_P = 5.0
BINOMIAL_ALPHA_N = 20.0
BINOMIAL_M_P = 0.0
BINOMIAL_M_N = 0.7
# VIGOR 5: triplet only, then the hybrid loss after 30 epochs (same-area) or 10 (cross-area).
VIGOR_HYBRID_START_SAME_AREA = 30
VIGOR_HYBRID_START_CROSS_AREA = 10
# Sample4Geo: logit scale initialised at 1 / 0.07, learnable; CE label smoothing 0.1.
INFONCE_TEMPERATURE = 0.07
INFONCE_LABEL_SMOOTHING = 0.1
# CLIP's cap on the learnable logit scale (1 / temperature), against runaway growth.
INFONCE_MAX_LOGIT_SCALE = 100.0
# Smallest S_pos used as the divisor of VIGOR eq. 2 (see iou_loss).
IOU_MIN_SIM_POS = 0.1


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return x
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.sum() if x.numel() == 0 else x.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def soft_margin_triplet(
    d_pos: Tensor, d_neg: Tensor, alpha: float = CVM_ALPHA, reduction: Reduction = "mean"
) -> Tensor:
    """Weighted soft-margin triplet loss, CVM-Net eq. 4: ln(1 + exp(alpha (d_pos - d_neg))).

    d_pos, d_neg: (T,) squared L2 distances of each triplet's positive and negative pair
    (broadcastable). alpha = 1 gives Vo and Hays' soft-margin loss. Computed with softplus,
    which is exact and does not overflow.
    """
    return _reduce(F.softplus(alpha * (d_pos - d_neg)), reduction)


def quadruplet_loss(
    d_pos: Tensor,
    d_neg: Tensor,
    d_neg2: Tensor,
    alpha: float = CVM_ALPHA,
    reduction: Reduction = "mean",
) -> Tensor:
    """Weighted soft-margin quadruplet loss, CVM-Net eq. 6.

    ln(1 + exp(alpha (d_pos - d_neg))) + ln(1 + exp(alpha (d_pos - d*_neg))): the margins of
    eq. 5 are dropped, as the paper says. d_neg2 (= d*_neg): (T,) distance of a negative pair
    that involves none of the triplet's examples (``mining.hardest_quadruplets``).
    """
    per = F.softplus(alpha * (d_pos - d_neg)) + F.softplus(alpha * (d_pos - d_neg2))
    return _reduce(per, reduction)


def binomial_loss(
    sim_pos: Tensor,
    sim_neg: Tensor,
    alpha_p: float = BINOMIAL_ALPHA_P,
    alpha_n: float = BINOMIAL_ALPHA_N,
    m_p: float = BINOMIAL_M_P,
    m_n: float = BINOMIAL_M_N,
) -> Tensor:
    """Binomial deviance loss with separate weights and margins, Revisiting eq. 4.

    sum_i ln(1 + exp(-alpha_p (s_i^p - m_p))) / (alpha_p N_p)
      + sum_i ln(1 + exp(alpha_n (s_i^n - m_n))) / (alpha_n N_n),
    sim_pos: (N_p,) cosines of positive pairs, sim_neg: (N_n,) cosines of negative pairs
    (any shapes; N = numel). The loss is defined as these two means, so it has no reduction
    argument. Constants from Revisiting 5 (alpha_p = 5, alpha_n = 20, m_p = 0, m_n = 0.7; 3.2
    takes m_p and m_n from the mean negative and positive cosines of a trained model). Revisiting
    trains with eq. 2 (alpha = 20) first and adopts this loss after 30 epochs; that schedule is
    the training loop's.
    """
    pos = F.softplus(-alpha_p * (sim_pos - m_p))
    neg = F.softplus(alpha_n * (sim_neg - m_n))
    return _reduce(pos, "mean") / alpha_p + _reduce(neg, "mean") / alpha_n


def iou_loss(
    sim_pos: Tensor,
    sim_semi: Tensor,
    iou_pos: Tensor,
    iou_semi: Tensor,
    valid: Tensor | None = None,
    reduction: Reduction = "mean",
    min_sim_pos: float = IOU_MIN_SIM_POS,
) -> Tensor:
    """IoU-based semi-positive assignment loss, VIGOR eq. 2: (S_semi / S_pos - IoU_semi / IoU_pos)^2.

    sim_pos: (N,) cosine of each panorama with its positive tile; sim_semi: (N, K) cosines with
    its K semi-positive tiles (VIGOR: K = 3); iou_pos: (N,), iou_semi: (N, K) IoU of each tile
    with the tile aligned on the panorama (VIGOR Fig. 1d); valid: optional (N, K) bool for
    panoramas with fewer than K semi-positives. "mean" averages over the valid (i, k) pairs.

    Our choice (the paper is silent): S_pos is clamped below at ``min_sim_pos`` before dividing,
    so an untrained model with S_pos near 0 or negative cannot blow the ratio up (VIGOR only
    switches this loss on after epochs of triplet training, when S_pos is well above 0).
    """
    if sim_semi.ndim == 1:
        sim_semi, iou_semi = sim_semi[:, None], iou_semi.reshape(-1, 1)
    if sim_semi.shape != iou_semi.shape or sim_semi.shape[0] != sim_pos.shape[0]:
        raise ValueError(
            f"iou_loss shapes: sim_pos (N,) {tuple(sim_pos.shape)}, sim_semi (N, K) {tuple(sim_semi.shape)}, "
            f"iou_semi (N, K) {tuple(iou_semi.shape)} must agree"
        )
    if (iou_pos <= 0).any():
        raise ValueError("iou_pos must be > 0 (a positive tile overlaps the aligned one by > 0.39, VIGOR 3)")
    ratio_sim = sim_semi / sim_pos.clamp_min(min_sim_pos)[:, None]
    ratio_iou = iou_semi / iou_pos[:, None]
    per = (ratio_sim - ratio_iou) ** 2
    if valid is not None:
        per = per[valid.reshape(per.shape)] if reduction != "none" else per * valid.reshape(per.shape)
    return _reduce(per, reduction)


def offset_loss(pred: Tensor, target: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Offset regression loss, VIGOR eq. 3: (lat - lat*)^2 + (lon - lon*)^2 per panorama.

    pred, target: (N, 2) offset of the camera from the tile centre, (dE, dN) / L (VIGOR 4.3:
    metres normalised by the tile size L). The two squared errors are summed per panorama, as
    in the equation (so "mean" is twice torch's elementwise MSE), then reduced over the batch.
    """
    if pred.shape != target.shape or pred.shape[-1] != 2:
        raise ValueError(
            f"offset_loss needs pred and target (N, 2), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return _reduce(((pred - target) ** 2).sum(-1), reduction)


@dataclass(frozen=True)
class LossTerms:
    """A loss and its parts, for the optimiser (``total``) and the per-epoch log (the rest)."""

    total: Tensor  # scalar, what backward() runs on
    triplet: Tensor  # scalar, weighted soft-margin triplet term
    iou: Tensor  # scalar, IoU semi-positive term (0 before the switch)
    offset: Tensor  # scalar, offset regression term (0 before the switch)
    hybrid: bool  # whether the IoU and offset terms were active


class HybridLoss(nn.Module):
    """VIGOR's hybrid loss (eq. 4) with its schedule (section 5).

    L_hybrid = w_triplet L_triplet + w_iou L_IOU + w_offset L_offset, weights 1 in the paper.
    Before ``hybrid_start_epoch`` (0-based) only L_triplet is used; from that epoch on, all
    three: VIGOR trains 30 epochs (same-area) or 10 (cross-area) with the triplet loss first, so
    hybrid_start_epoch = 30 or 10 with epochs counted from 0.

    L_triplet is CVM-Net eq. 4 with alpha = 10 on the 2N(N-1) exhaustive triplets (VIGOR eq. 1)
    or, with ``mining="hardest"``, the hardest per anchor. Semi-positive tiles enter only
    L_IOU: they are neither positives nor negatives of the triplet term (VIGOR Table 4, "IOU"
    row). A term whose weight is 0 is skipped and need not be given.
    """

    def __init__(
        self,
        hybrid_start_epoch: int = VIGOR_HYBRID_START_SAME_AREA,
        alpha: float = CVM_ALPHA,
        w_triplet: float = 1.0,
        w_iou: float = 1.0,
        w_offset: float = 1.0,
        mining: Literal["exhaustive", "hardest"] = "exhaustive",
        min_sim_pos: float = IOU_MIN_SIM_POS,
    ) -> None:
        super().__init__()
        if hybrid_start_epoch < 0:
            raise ValueError(f"hybrid_start_epoch must be >= 0, got {hybrid_start_epoch}")
        if mining not in ("exhaustive", "hardest"):
            raise ValueError(f"mining must be 'exhaustive' or 'hardest', got {mining!r}")
        self.hybrid_start_epoch = int(hybrid_start_epoch)
        self.alpha = float(alpha)
        self.w_triplet, self.w_iou, self.w_offset = float(w_triplet), float(w_iou), float(w_offset)
        self.mining = mining
        self.min_sim_pos = float(min_sim_pos)

    def is_hybrid(self, epoch: int) -> bool:
        """True from ``hybrid_start_epoch`` on (epochs counted from 0)."""
        return epoch >= self.hybrid_start_epoch

    def forward(
        self,
        g: Tensor,
        a: Tensor,
        *,
        epoch: int,
        a_semi: Tensor | None = None,
        iou_pos: Tensor | None = None,
        iou_semi: Tensor | None = None,
        semi_valid: Tensor | None = None,
        offset_pred: Tensor | None = None,
        offset_target: Tensor | None = None,
        neg_mask: Tensor | None = None,
    ) -> LossTerms:
        """One batch.

        g: (N, D) ground embeddings; a: (N, D) positive aerial embeddings (row i matches g_i);
        a_semi: (N, K, D) semi-positive aerial embeddings; iou_pos: (N,); iou_semi: (N, K);
        semi_valid: optional (N, K) bool; offset_pred, offset_target: (N, 2) (dE, dN) / L;
        neg_mask: optional (N, N) bool from ``mining.negative_mask`` (overlapping tiles).
        All embeddings L2-normalised. Returns ``LossTerms``.
        """
        mine = exhaustive_in_batch if self.mining == "exhaustive" else hardest_in_batch
        d_pos, d_neg = mine(g, a, neg_mask)
        triplet = soft_margin_triplet(d_pos, d_neg, self.alpha)
        zero = triplet.new_zeros(())
        hybrid = self.is_hybrid(epoch)
        iou, offset = zero, zero
        if hybrid and self.w_iou != 0.0:
            if a_semi is None or iou_pos is None or iou_semi is None:
                raise ValueError(
                    f"epoch {epoch} >= hybrid_start_epoch {self.hybrid_start_epoch}: the IoU term needs "
                    "a_semi, iou_pos and iou_semi (or set w_iou=0)"
                )
            if a_semi.ndim != 3 or a_semi.shape[0] != g.shape[0] or a_semi.shape[2] != g.shape[1]:
                raise ValueError(
                    f"a_semi must be (N, K, D) = ({g.shape[0]}, K, {g.shape[1]}), got {tuple(a_semi.shape)}"
                )
            check_normalised(a_semi.reshape(-1, a_semi.shape[-1]), "a_semi")
            sim_pos = (g * a).sum(-1)
            sim_semi = torch.einsum("nd,nkd->nk", g, a_semi)
            iou = iou_loss(
                sim_pos, sim_semi, iou_pos, iou_semi, valid=semi_valid, min_sim_pos=self.min_sim_pos
            )
        if hybrid and self.w_offset != 0.0:
            if offset_pred is None or offset_target is None:
                raise ValueError(
                    f"epoch {epoch} >= hybrid_start_epoch {self.hybrid_start_epoch}: the offset term needs "
                    "offset_pred and offset_target (or set w_offset=0)"
                )
            offset = offset_loss(offset_pred, offset_target)
        total = self.w_triplet * triplet + self.w_iou * iou + self.w_offset * offset
        return LossTerms(total=total, triplet=triplet, iou=iou, offset=offset, hybrid=hybrid)


class SymmetricInfoNCE(nn.Module):
    """Symmetric InfoNCE over a batch of pairs, as in Sample4Geo (Deuser et al., ICCV 2023).

    logits = scale * G A^T (cosines times 1 / temperature); the loss is the mean of the
    cross-entropy of each ground row against its aerial (targets on the diagonal) and of each
    aerial row against its ground. Every other pair in the batch is a negative, so batches built
    from GPS neighbours (Sample4Geo's sampling; here the pool's ``scope_radius_m``) make it
    discriminate inside the neighbourhood the runtime searches.

    Sample4Geo's settings are the defaults: scale = exp(s) with s a parameter initialised at
    ln(1 / 0.07), label smoothing 0.1. ``learnable=False`` keeps the temperature fixed. The scale
    is capped at 100 as in CLIP (Radford et al., 2021). ``neg_mask`` leaves overlapping tiles out
    of the softmax (false negatives); label smoothing then spreads over the remaining classes,
    which without a mask equals torch's ``cross_entropy(label_smoothing=...)``.
    """

    def __init__(
        self,
        temperature: float = INFONCE_TEMPERATURE,
        learnable: bool = True,
        label_smoothing: float = INFONCE_LABEL_SMOOTHING,
        max_logit_scale: float = INFONCE_MAX_LOGIT_SCALE,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.label_smoothing = float(label_smoothing)
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def temperature(self) -> float:
        """Current temperature, 1 / scale (after the cap)."""
        return float(torch.exp(-self.log_scale.detach().clamp(max=self.max_log_scale)))

    def _ce(self, logits: Tensor, allowed: Tensor) -> Tensor:
        """(N, N) logits, (N, N) allowed classes (diagonal True) -> (N,) smoothed CE."""
        logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
        nll = -logp.diagonal()
        n_cls = allowed.sum(1).to(logp.dtype)
        smooth = -torch.where(allowed, logp, torch.zeros_like(logp)).sum(1) / n_cls
        eps = self.label_smoothing
        return (1.0 - eps) * nll + eps * smooth

    def forward(self, g: Tensor, a: Tensor, neg_mask: Tensor | None = None) -> Tensor:
        """g, a: (N, D) L2-normalised ground and aerial embeddings, row i a pair;
        neg_mask: optional (N, N) bool, True where a_j may be a negative of g_i.
        Returns the scalar loss."""
        check_normalised(g, "g")
        check_normalised(a, "a")
        if g.shape != a.shape or g.shape[0] < 2:
            raise ValueError(
                f"g and a must be (N, D) with N >= 2 and equal shapes, got {tuple(g.shape)}, {tuple(a.shape)}"
            )
        n = g.shape[0]
        allowed = valid_negatives(n, neg_mask, g.device) | torch.eye(n, dtype=torch.bool, device=g.device)
        logits = self.log_scale.clamp(max=self.max_log_scale).exp() * (g @ a.T)
        return 0.5 * (self._ce(logits, allowed).mean() + self._ce(logits.T, allowed.T).mean())
