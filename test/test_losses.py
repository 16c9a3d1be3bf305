"""Loss formulas against arithmetic done by hand with math.log / math.exp on a few numbers.

CVM-Net eq. 4 and 6, Revisiting eq. 4, VIGOR eq. 2-4 and its schedule, Sample4Geo's symmetric
InfoNCE; plus gradient signs and one SGD step lowering each loss.
"""

import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from crossview_training import losses, mining  # noqa: E402

torch.set_num_threads(1)


def sp(x: float) -> float:
    """ln(1 + e^x), the soft margin."""
    return math.log(1.0 + math.exp(x))


def t(*v: float) -> "torch.Tensor":
    return torch.tensor(v, dtype=torch.float64)


def circle(*deg: float) -> "torch.Tensor":
    xy = [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in deg]
    return torch.tensor(xy, dtype=torch.float64)


# --- CVM-Net -----------------------------------------------------------------------------


def test_soft_margin_triplet_values_and_reductions():
    d_pos, d_neg = t(0.5, 1.0), t(1.5, 0.8)
    per = [math.log(1 + math.exp(10 * (0.5 - 1.5))), math.log(1 + math.exp(10 * (1.0 - 0.8)))]
    smt = losses.soft_margin_triplet
    assert smt(d_pos, d_neg, reduction="none").tolist() == pytest.approx(per, rel=1e-12)
    assert smt(d_pos, d_neg).item() == pytest.approx((per[0] + per[1]) / 2, rel=1e-12)
    assert smt(d_pos, d_neg, reduction="sum").item() == pytest.approx(per[0] + per[1], rel=1e-12)
    # alpha = 1 is Vo and Hays' soft-margin triplet ln(1 + e^d)
    assert smt(t(0.5), t(1.5), alpha=1.0).item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    with pytest.raises(ValueError, match="reduction"):
        losses.soft_margin_triplet(d_pos, d_neg, reduction="avg")


def test_soft_margin_triplet_is_finite_at_extremes():
    # squared L2 on unit vectors lies in [0, 4]: alpha * d reaches +-40
    out = losses.soft_margin_triplet(t(4.0, 0.0), t(0.0, 4.0), reduction="none")
    assert out[0].item() == pytest.approx(40.0 + math.log(1 + math.exp(-40.0)))
    assert out[1].item() == pytest.approx(math.log(1 + math.exp(-40.0)), rel=1e-6)
    assert losses.soft_margin_triplet(t(), t()).item() == 0.0  # empty mean is 0


def test_quadruplet_loss_values():
    d_pos, d_neg, d_neg2 = t(0.4, 1.2), t(1.0, 1.0), t(0.6, 2.0)
    per = [sp(10 * (0.4 - 1.0)) + sp(10 * (0.4 - 0.6)), sp(10 * (1.2 - 1.0)) + sp(10 * (1.2 - 2.0))]
    got = losses.quadruplet_loss(d_pos, d_neg, d_neg2, reduction="none")
    assert got.tolist() == pytest.approx(per, rel=1e-12)
    assert losses.quadruplet_loss(d_pos, d_neg, d_neg2).item() == pytest.approx(sum(per) / 2, rel=1e-12)


def test_triplet_gradient_pulls_positive_and_pushes_negative():
    d_pos, d_neg = t(0.9).requires_grad_(), t(1.0).requires_grad_()
    losses.soft_margin_triplet(d_pos, d_neg).backward()
    s = 1 / (1 + math.exp(-10 * (0.9 - 1.0)))  # sigmoid(alpha d)
    assert d_pos.grad.item() == pytest.approx(10 * s) and d_neg.grad.item() == pytest.approx(-10 * s)


# --- Revisiting ----------------------------------------------------------------------------


def test_binomial_loss_values():
    sim_pos, sim_neg = t(0.9, 0.5), t(0.1, 0.8, 0.75)
    pos = math.log(1 + math.exp(-5 * (0.9 - 0.0))) + math.log(1 + math.exp(-5 * (0.5 - 0.0)))
    neg = sum(math.log(1 + math.exp(20 * (s - 0.7))) for s in (0.1, 0.8, 0.75))
    expected = pos / (5 * 2) + neg / (20 * 3)
    assert losses.binomial_loss(sim_pos, sim_neg).item() == pytest.approx(expected, rel=1e-12)
    other = losses.binomial_loss(t(0.3), t(0.2), alpha_p=2.0, alpha_n=4.0, m_p=0.5, m_n=0.1)
    assert other.item() == pytest.approx(sp(-2 * (0.3 - 0.5)) / 2 + sp(4 * (0.2 - 0.1)) / 4, rel=1e-12)


def test_binomial_gradient_signs():
    sim_pos, sim_neg = t(0.6).requires_grad_(), t(0.75).requires_grad_()
    losses.binomial_loss(sim_pos, sim_neg).backward()
    # d/ds of ln(1+e^{-a(s-m)})/a is -sigmoid(-a(s-m)); of ln(1+e^{a(s-m)})/a is sigmoid(a(s-m))
    assert sim_pos.grad.item() == pytest.approx(-1 / (1 + math.exp(5 * 0.6)))
    assert sim_neg.grad.item() == pytest.approx(1 / (1 + math.exp(-20 * 0.05)))


# --- VIGOR -------------------------------------------------------------------------------


def test_iou_loss_values_mask_and_clamp():
    sim_pos, sim_semi = t(0.8, 0.5), torch.tensor([[0.4, 0.2], [0.1, 0.3]], dtype=torch.float64)
    iou_pos, iou_semi = t(0.62, 0.5), torch.tensor([[0.3, 0.14], [0.2, 0.39]], dtype=torch.float64)
    per = [
        (0.4 / 0.8 - 0.3 / 0.62) ** 2,
        (0.2 / 0.8 - 0.14 / 0.62) ** 2,
        (0.1 / 0.5 - 0.2 / 0.5) ** 2,
        (0.3 / 0.5 - 0.39 / 0.5) ** 2,
    ]
    got = losses.iou_loss(sim_pos, sim_semi, iou_pos, iou_semi)
    assert got.item() == pytest.approx(sum(per) / 4, rel=1e-12)
    valid = torch.tensor([[True, False], [True, True]])
    got = losses.iou_loss(sim_pos, sim_semi, iou_pos, iou_semi, valid=valid)
    assert got.item() == pytest.approx((per[0] + per[2] + per[3]) / 3, rel=1e-12)
    # S_pos below min_sim_pos (0.1) divides by 0.1 instead
    one = torch.ones(1, 1, dtype=torch.float64)
    clamped = losses.iou_loss(t(-0.2), 0.05 * one, t(0.5), 0.25 * one)
    assert clamped.item() == pytest.approx((0.05 / 0.1 - 0.25 / 0.5) ** 2, abs=1e-15)
    with pytest.raises(ValueError, match="iou_pos"):
        losses.iou_loss(t(0.5), t(0.2), t(0.0), t(0.1))


def test_offset_loss_is_squared_euclidean_per_panorama():
    pred = torch.tensor([[0.1, -0.2], [0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.1], [0.25, 0.0]], dtype=torch.float64)
    per = [(0.1 - 0.0) ** 2 + (-0.2 - 0.1) ** 2, 0.25**2]
    assert losses.offset_loss(pred, target, reduction="none").tolist() == pytest.approx(per, rel=1e-12)
    assert losses.offset_loss(pred, target).item() == pytest.approx(sum(per) / 2, rel=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        losses.offset_loss(pred[:, :1], target[:, :1])


def hybrid_batch():
    """Two pairs on the unit circle: g at 0 and 90 deg, positives at 30 and 120, semis at 60 and 150."""
    g, a = circle(0, 90), circle(30, 120)
    a_semi = circle(60, 150).reshape(2, 1, 2)
    iou_pos, iou_semi = t(0.62, 0.5), torch.tensor([[0.3], [0.2]], dtype=torch.float64)
    off_pred = torch.tensor([[0.1, 0.0], [0.0, -0.1]], dtype=torch.float64)
    off_true = torch.tensor([[0.0, 0.0], [0.2, 0.0]], dtype=torch.float64)
    return g, a, a_semi, iou_pos, iou_semi, off_pred, off_true


def hand_hybrid_terms():
    dp = 2 - 2 * math.cos(math.radians(30))  # every positive pair is 30 deg apart
    # triplets: g0 vs a1 (120 deg), g1 vs a0 (60), a0 vs g1 (60), a1 vs g0 (120)
    dn = [2 - 2 * math.cos(math.radians(x)) for x in (120, 60, 60, 120)]
    triplet = sum(math.log(1 + math.exp(10 * (dp - x))) for x in dn) / 4
    c30, c60 = math.cos(math.radians(30)), math.cos(math.radians(60))
    iou = ((c60 / c30 - 0.3 / 0.62) ** 2 + (c60 / c30 - 0.2 / 0.5) ** 2) / 2
    offset = ((0.1**2 + 0.0) + (0.2**2 + 0.1**2)) / 2
    return triplet, iou, offset


def test_hybrid_schedule_switches_at_start_epoch():
    g, a, a_semi, iou_pos, iou_semi, off_pred, off_true = hybrid_batch()
    triplet, iou, offset = hand_hybrid_terms()
    loss = losses.HybridLoss(hybrid_start_epoch=3)
    kw = dict(a_semi=a_semi, iou_pos=iou_pos, iou_semi=iou_semi, offset_pred=off_pred, offset_target=off_true)
    for epoch in (0, 2):  # triplet only
        out = loss(g, a, epoch=epoch, **kw)
        assert not out.hybrid
        assert out.total.item() == pytest.approx(triplet, rel=1e-12)
        assert out.iou.item() == 0.0 and out.offset.item() == 0.0
    for epoch in (3, 10):  # hybrid: eq. 4, weights 1
        out = loss(g, a, epoch=epoch, **kw)
        assert out.hybrid
        assert out.triplet.item() == pytest.approx(triplet, rel=1e-12)
        assert out.iou.item() == pytest.approx(iou, rel=1e-12)
        assert out.offset.item() == pytest.approx(offset, rel=1e-12)
        assert out.total.item() == pytest.approx(triplet + iou + offset, rel=1e-12)
    # before the switch the extra inputs are not needed
    assert loss(g, a, epoch=0).total.item() == pytest.approx(triplet, rel=1e-12)


def test_hybrid_defaults_weights_and_missing_inputs():
    assert losses.HybridLoss().hybrid_start_epoch == 30 == losses.VIGOR_HYBRID_START_SAME_AREA
    assert losses.VIGOR_HYBRID_START_CROSS_AREA == 10
    g, a, a_semi, iou_pos, iou_semi, off_pred, off_true = hybrid_batch()
    triplet, iou, offset = hand_hybrid_terms()
    with pytest.raises(ValueError, match="a_semi"):
        losses.HybridLoss(hybrid_start_epoch=0)(g, a, epoch=0, offset_pred=off_pred, offset_target=off_true)
    with pytest.raises(ValueError, match="offset_pred"):
        semi_only = dict(a_semi=a_semi, iou_pos=iou_pos, iou_semi=iou_semi)
        losses.HybridLoss(hybrid_start_epoch=0)(g, a, epoch=0, **semi_only)
    no_offset = losses.HybridLoss(hybrid_start_epoch=0, w_offset=0.0, w_iou=2.0)
    out = no_offset(g, a, epoch=0, a_semi=a_semi, iou_pos=iou_pos, iou_semi=iou_semi)
    assert out.total.item() == pytest.approx(triplet + 2 * iou, rel=1e-12)
    hardest = losses.HybridLoss(mining="hardest")(g, a, epoch=0)  # N = 2: hardest = exhaustive
    assert hardest.total.item() == pytest.approx(triplet, rel=1e-12)


# --- InfoNCE -------------------------------------------------------------------------------


def test_infonce_two_pairs_by_hand():
    g = a = circle(0, 90)  # logits = scale * identity
    # fixed temperature 0.5 -> scale 2; row i: log p_ii = -ln(1 + e^-2), log p_ij = -2 - ln(1 + e^-2)
    lp_ii = -math.log(1 + math.exp(-2))
    lp_ij = -2 + lp_ii
    plain = losses.SymmetricInfoNCE(temperature=0.5, learnable=False, label_smoothing=0.0)
    assert plain(g, a).item() == pytest.approx(-lp_ii, rel=1e-12)
    smooth = losses.SymmetricInfoNCE(temperature=0.5, learnable=False, label_smoothing=0.1)
    assert smooth(g, a).item() == pytest.approx(0.9 * -lp_ii + 0.1 * -(lp_ii + lp_ij) / 2, rel=1e-12)
    assert smooth.temperature == pytest.approx(0.5)
    assert list(smooth.parameters()) == []


def test_infonce_matches_torch_cross_entropy_and_masks_false_negatives():
    gen = torch.Generator().manual_seed(0)
    g = F.normalize(torch.randn(5, 8, generator=gen, dtype=torch.float64), dim=1)
    a = F.normalize(torch.randn(5, 8, generator=gen, dtype=torch.float64), dim=1)
    loss = losses.SymmetricInfoNCE()  # Sample4Geo defaults: T = 0.07 learnable, smoothing 0.1
    logits = (g @ a.T) / 0.07
    ref = 0.5 * (
        F.cross_entropy(logits, torch.arange(5), label_smoothing=0.1)
        + F.cross_entropy(logits.T, torch.arange(5), label_smoothing=0.1)
    )
    assert loss(g, a).item() == pytest.approx(ref.item(), rel=1e-6)  # float32 scale
    # A mask that removes every negative leaves one class per row: log p = 0, loss 0.
    assert loss(g, a, torch.zeros(5, 5, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-12)
    # Masking pair (0, 1) drops a_1 from g_0's softmax and g_0 from a_1's (targets re-indexed).
    mask = ~torch.eye(5, dtype=torch.bool)
    mask[0, 1] = False

    def ce(row, keep, target):
        return F.cross_entropy(row[keep][None, :], torch.tensor([keep.index(target)]), label_smoothing=0.1)

    everyone = [0, 1, 2, 3, 4]
    rows = [ce(logits[i], [0, 2, 3, 4] if i == 0 else everyone, i) for i in range(5)]
    cols = [ce(logits.T[j], [1, 2, 3, 4] if j == 1 else everyone, j) for j in range(5)]
    expected = 0.5 * (torch.stack(rows).mean() + torch.stack(cols).mean())
    assert loss(g, a, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_infonce_learnable_scale_gets_gradient_and_is_capped():
    loss = losses.SymmetricInfoNCE()
    assert len(list(loss.parameters())) == 1
    assert loss.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    loss(circle(0, 90, 200), circle(10, 100, 190)).backward()
    assert torch.isfinite(loss.log_scale.grad) and loss.log_scale.grad.item() != 0.0
    with torch.no_grad():
        loss.log_scale.fill_(10.0)
    assert loss.temperature == pytest.approx(1 / 100)


# --- gradients and one optimisation step -----------------------------------------------------


def _loss_fns():
    def triplet_exh(g, a):
        return losses.soft_margin_triplet(*mining.exhaustive_in_batch(g, a))

    def triplet_hard(g, a):
        return losses.soft_margin_triplet(*mining.hardest_in_batch(g, a))

    def quad(g, a):
        return losses.quadruplet_loss(*mining.hardest_quadruplets(g, a))

    def binomial(g, a):
        return losses.binomial_loss(*mining.batch_similarities(g, a))

    hybrid = losses.HybridLoss(hybrid_start_epoch=0)

    def hybrid_fn(g, a):
        n = g.shape[0]
        semi = F.normalize(a.roll(1, 0) + g, dim=1).reshape(n, 1, -1)
        pred = (g[:, :2] - a[:, :2]) * 0.5
        return hybrid(
            g, a, epoch=0, a_semi=semi, iou_pos=torch.full((n,), 0.6), iou_semi=torch.full((n, 1), 0.2),
            offset_pred=pred, offset_target=torch.zeros(n, 2),
        ).total

    infonce = losses.SymmetricInfoNCE(temperature=0.1, learnable=False)
    return {
        "triplet_exhaustive": triplet_exh,
        "triplet_hardest": triplet_hard,
        "quadruplet": quad,
        "binomial": binomial,
        "hybrid": hybrid_fn,
        "infonce": lambda g, a: infonce(g, a),
    }


@pytest.mark.parametrize("name", list(_loss_fns()))
def test_gradient_finite_and_one_sgd_step_lowers_loss(name):
    fn = _loss_fns()[name]
    gen = torch.Generator().manual_seed(1)
    raw_g = torch.randn(6, 8, generator=gen).requires_grad_()
    raw_a = torch.randn(6, 8, generator=gen).requires_grad_()

    def value():
        return fn(F.normalize(raw_g, dim=1), F.normalize(raw_a, dim=1))

    before = value()
    before.backward()
    assert torch.isfinite(raw_g.grad).all() and torch.isfinite(raw_a.grad).all()
    assert raw_g.grad.abs().sum() > 0 and raw_a.grad.abs().sum() > 0
    with torch.no_grad():
        for p in (raw_g, raw_a):
            p -= 1e-3 * p.grad
        after = value()
    assert after.item() < before.item()
