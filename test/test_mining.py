"""Mining rules and the global FIFO pool against hand-computed cases on unit vectors in 2-D.

Embeddings are points on the unit circle at chosen angles, so every squared L2 distance is
2 - 2 cos(angle difference), computed here with math.cos independently of the code.
"""

import math

import pytest

torch = pytest.importorskip("torch")

from crossview_training import mining  # noqa: E402

torch.set_num_threads(1)


def circle(*deg: float) -> "torch.Tensor":
    """(N, 2) unit vectors at the given angles (degrees)."""
    xy = [[math.cos(math.radians(t)), math.sin(math.radians(t))] for t in deg]
    return torch.tensor(xy, dtype=torch.float64)


def rows(n: int, dim: int = 4, seed: int = 0) -> "torch.Tensor":
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)


def d(deg_a: float, deg_b: float) -> float:
    return 2.0 - 2.0 * math.cos(math.radians(deg_a - deg_b))


G_DEG = [0.0, 90.0, 210.0]
A_DEG = [10.0, 100.0, 180.0]


def test_pairwise_squared_l2_matches_cosine_identity():
    dist = mining.pairwise_squared_l2(circle(*G_DEG), circle(*A_DEG))
    expected = [[d(g, a) for a in A_DEG] for g in G_DEG]
    assert torch.allclose(dist, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_exhaustive_count_is_2n_n_minus_1():
    for n in (2, 3, 5, 8):
        g, a = rows(n, seed=n), rows(n, seed=n + 100)
        d_pos, d_neg = mining.exhaustive_in_batch(g, a)
        assert d_pos.shape == d_neg.shape == (2 * n * (n - 1),)


def test_exhaustive_pairs_and_order():
    d_pos, d_neg = mining.exhaustive_in_batch(circle(*G_DEG), circle(*A_DEG))
    exp_pos, exp_neg = [], []
    for i in range(3):  # ground anchor g_i: positive a_i, negatives a_j
        for j in range(3):
            if j != i:
                exp_pos.append(d(G_DEG[i], A_DEG[i]))
                exp_neg.append(d(G_DEG[i], A_DEG[j]))
    for i in range(3):  # aerial anchor a_i: positive g_i, negatives g_j
        for j in range(3):
            if j != i:
                exp_pos.append(d(A_DEG[i], G_DEG[i]))
                exp_neg.append(d(A_DEG[i], G_DEG[j]))
    assert torch.allclose(d_pos, torch.tensor(exp_pos, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d_neg, torch.tensor(exp_neg, dtype=torch.float64), atol=1e-12)


def test_hardest_negative_both_directions():
    # g0 at 0 deg: a1 (100 deg away) is closer than a2 (180) -> 1
    # g1 at 90: a0 (80) vs a2 (90) -> 0;  g2 at 210: a0 (160) vs a1 (110) -> 1
    # a0 at 10: g1 (80) vs g2 (160) -> 1; a1 at 100: g0 (100) vs g2 (110) -> 0
    # a2 at 180: g0 (180) vs g1 (90) -> 1
    g2a, a2g = mining.hardest_negative_indices(circle(*G_DEG), circle(*A_DEG))
    assert g2a.tolist() == [1, 0, 1]
    assert a2g.tolist() == [1, 0, 1]
    d_pos, d_neg = mining.hardest_in_batch(circle(*G_DEG), circle(*A_DEG))
    exp_pos = [d(G_DEG[i], A_DEG[i]) for i in range(3)] * 2
    exp_neg = [d(0, 100), d(90, 10), d(210, 100), d(10, 90), d(100, 0), d(180, 90)]
    assert torch.allclose(d_pos, torch.tensor(exp_pos, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d_neg, torch.tensor(exp_neg, dtype=torch.float64), atol=1e-12)


def test_hardest_is_minimum_of_exhaustive_per_anchor():
    gen = torch.Generator().manual_seed(3)
    g = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen), dim=1)
    a = torch.nn.functional.normalize(torch.randn(6, 5, generator=gen), dim=1)
    _, d_neg_all = mining.exhaustive_in_batch(g, a)
    _, d_neg_hard = mining.hardest_in_batch(g, a)
    assert torch.allclose(d_neg_hard, d_neg_all.reshape(12, 5).min(dim=1).values)


def test_negative_mask_from_ids_and_cover():
    ids = torch.tensor([7, 7, 9])
    assert mining.negative_mask(ids).tolist() == [
        [False, False, True],
        [False, False, True],
        [True, True, False],
    ]
    cover = torch.tensor([[7, 9], [7, -1], [9, -1]])
    assert mining.negative_mask(ids, cover).tolist() == [
        [False, False, False],
        [False, False, True],
        [True, True, False],
    ]


def test_masked_pairs_are_never_used():
    # Pair 0 and 1 share a tile: a1 must not be a negative of g0 nor g1 of a0, and so on.
    g, a = circle(*G_DEG), circle(*A_DEG)
    mask = mining.negative_mask(torch.tensor([7, 7, 9]))
    d_pos, d_neg = mining.exhaustive_in_batch(g, a, mask)
    # ground anchors: (0,2), (1,2), (2,0), (2,1); aerial anchors: a0-g2, a1-g2, a2-g0, a2-g1
    exp_neg = [d(0, 180), d(90, 180), d(210, 10), d(210, 100), d(10, 210), d(100, 210), d(180, 0), d(180, 90)]
    assert torch.allclose(d_neg, torch.tensor(exp_neg, dtype=torch.float64), atol=1e-12)
    g2a, a2g = mining.hardest_negative_indices(g, a, mask)
    assert g2a.tolist() == [2, 2, 1]  # g2: a0 160 deg vs a1 110 deg
    assert a2g.tolist() == [2, 2, 1]  # a2: g0 180 vs g1 90
    # An anchor with no valid negative is left out of the hardest triplets.
    only = torch.zeros(3, 3, dtype=torch.bool)
    only[0, 1] = True
    d_pos, d_neg = mining.hardest_in_batch(g, a, only)
    assert d_neg.tolist() == pytest.approx([d(0, 100), d(100, 0)])
    assert d_pos.tolist() == pytest.approx([d(0, 10), d(100, 90)])


def test_hardest_quadruplets_outside_pair():
    gd, ad = [0.0, 90.0, 180.0, 270.0], [20.0, 80.0, 170.0, 300.0]
    g, a = circle(*gd), circle(*ad)
    g2a, a2g = mining.hardest_negative_indices(g, a)
    d_pos, d_neg, d_neg2 = mining.hardest_quadruplets(g, a)
    assert d_pos.shape == (8,)
    exp_neg2 = []
    for i, j in enumerate(g2a.tolist()):
        k, m = [x for x in range(4) if x not in (i, j)]  # the two locations outside the triplet
        exp_neg2.append(min(d(gd[k], ad[m]), d(gd[m], ad[k])))
    for i, j in enumerate(a2g.tolist()):
        k, m = [x for x in range(4) if x not in (i, j)]
        exp_neg2.append(min(d(gd[k], ad[m]), d(gd[m], ad[k])))
    assert torch.allclose(d_neg2, torch.tensor(exp_neg2, dtype=torch.float64), atol=1e-12)
    # g0 at 0: negatives a1 (80), a2 (170), a3 (60 away) -> a3; outside pair from {1, 2}:
    # (g1, a2) 80 deg, (g2, a1) 100 deg -> 2 - 2 cos 80
    assert g2a[0].item() == 3
    assert d_neg2[0].item() == pytest.approx(d(90, 170))
    with pytest.raises(ValueError, match="at least 4"):
        mining.hardest_quadruplets(g[:3], a[:3])


def test_batch_similarities():
    sim_pos, sim_neg = mining.batch_similarities(circle(*G_DEG), circle(*A_DEG))
    assert sim_pos.tolist() == pytest.approx([math.cos(math.radians(G_DEG[i] - A_DEG[i])) for i in range(3)])
    exp = [math.cos(math.radians(G_DEG[i] - A_DEG[j])) for i in range(3) for j in range(3) if i != j]
    assert sim_neg.tolist() == pytest.approx(exp)


def test_refuses_unnormalised_and_mismatched():
    with pytest.raises(ValueError, match="L2-normalised"):
        mining.exhaustive_in_batch(2 * circle(*G_DEG), circle(*A_DEG))
    with pytest.raises(ValueError, match="same shape"):
        mining.exhaustive_in_batch(circle(*G_DEG), circle(*A_DEG[:2]))
    with pytest.raises(ValueError, match="neg_mask"):
        mining.exhaustive_in_batch(circle(*G_DEG), circle(*A_DEG), torch.ones(2, 2, dtype=torch.bool))


# --- GlobalMiningPool -------------------------------------------------------------------


def test_pool_fifo_order_size_and_wraparound():
    pool = mining.GlobalMiningPool(size=3, dim=4)
    assert len(pool) == 0 and pool.ids_in_order().tolist() == []
    e = rows(6)
    pool.push(e[:2], torch.tensor([0, 1]))
    assert pool.ids_in_order().tolist() == [0, 1] and len(pool) == 2
    pool.push(e[2:4], torch.tensor([2, 3]))  # 3 wraps around into slot 0, evicting 0 (oldest)
    assert pool.ids_in_order().tolist() == [1, 2, 3] and len(pool) == 3
    assert torch.equal(pool.embeddings_of(torch.tensor([3, 1])), e[[3, 1]].float())
    pool.push(e[4:5], torch.tensor([4]))
    assert pool.ids_in_order().tolist() == [2, 3, 4]
    with pytest.raises(KeyError):
        pool.embeddings_of(torch.tensor([1]))


def test_pool_batch_larger_than_capacity_keeps_newest():
    pool = mining.GlobalMiningPool(size=3, dim=4)
    e = rows(5)
    pool.push(e, torch.arange(10, 15))
    assert pool.ids_in_order().tolist() == [12, 13, 14]
    assert torch.equal(pool.embeddings_of(torch.tensor([12])), e[2:3].float())


def test_pool_repeated_id_keeps_newest_only():
    pool = mining.GlobalMiningPool(size=3, dim=4)
    e = rows(6)
    pool.push(e[:2], torch.tensor([0, 1]))
    pool.push(e[2:4], torch.tensor([2, 3]))  # live: 1, 2, 3
    pool.push(e[4:5], torch.tensor([2]))  # old 2 invalidated; new 2 overwrites the slot of 1
    assert pool.ids_in_order().tolist() == [3, 2] and len(pool) == 2
    assert torch.equal(pool.embeddings_of(torch.tensor([2])), e[4:5].float())
    pool.push(e[:3], torch.tensor([5, 6, 5]))  # within a batch the later row wins; 3 evicted
    assert pool.ids_in_order().tolist() == [2, 6, 5]
    assert torch.equal(pool.embeddings_of(torch.tensor([5])), e[2:3].float())


def test_pool_r1_returns_hardest_excluding_own_ids():
    # Pool tiles at angles 0, 40, 80, 120 deg; query at 35 deg is closest to 40, then 0, then 80.
    pool = mining.GlobalMiningPool(size=10, dim=2, r=1)
    pool.push(circle(0, 40, 80, 120), torch.tensor([100, 101, 102, 103]))
    q = circle(35, 35, 35, 35)
    own = torch.tensor([[-1, -1], [101, -1], [101, 100], [100, 101]])
    assert pool.sample_hard(q, own).tolist() == [101, 100, 102, 102]
    assert pool.sample_hard(q, torch.tensor([101, 101, 101, 101])).tolist() == [100] * 4


def test_pool_picks_only_among_r_hardest_and_is_seeded():
    pool = mining.GlobalMiningPool(size=10, dim=2, r=2, seed=5)
    pool.push(circle(0, 40, 80, 120, 160), torch.arange(5))
    q = circle(*([35.0] * 400))
    got = pool.sample_hard(q, torch.full((400,), -1))
    assert set(got.tolist()) == {0, 1}  # 40 deg (id 1) and 0 deg (id 0) are the two hardest
    assert 100 < (got == 1).sum().item() < 300  # uniform among the r
    twin = mining.GlobalMiningPool(size=10, dim=2, r=2, seed=5)
    twin.push(circle(0, 40, 80, 120, 160), torch.arange(5))
    assert torch.equal(twin.sample_hard(q, torch.full((400,), -1)), got)


def test_pool_exclusion_by_radius_and_scope():
    # Tile centres on a line, 50 m apart; query at x = 0 with tile 0 as its own positive.
    pos = torch.tensor([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0], [150.0, 0.0]])
    emb = circle(0, 5, 10, 15)  # tile 1 is most similar to a query at 4 deg, then 0, 2, 3
    q, own, qpos = circle(4), torch.tensor([0]), torch.tensor([[0.0, 0.0]])
    plain = mining.GlobalMiningPool(size=8, dim=2, r=1)
    plain.push(emb, torch.arange(4))
    assert plain.sample_hard(q, own).tolist() == [1]
    near = mining.GlobalMiningPool(size=8, dim=2, r=1, exclude_radius_m=51.6)
    near.push(emb, torch.arange(4), pos)
    assert near.sample_hard(q, own, qpos).tolist() == [2]  # tile 1 at 50 m overlaps: excluded
    scoped = mining.GlobalMiningPool(size=8, dim=2, r=4, exclude_radius_m=51.6, scope_radius_m=120.0)
    scoped.push(emb, torch.arange(4), pos)
    assert set(scoped.sample_hard(circle(*([4.0] * 50)), own.repeat(50), qpos.repeat(50, 1)).tolist()) == {2}
    with pytest.raises(ValueError, match="positions_m"):
        near.push(emb, torch.arange(4))
    with pytest.raises(ValueError, match="query_positions_m"):
        near.sample_hard(q, own)


def test_pool_no_candidate_gives_minus_one():
    pool = mining.GlobalMiningPool(size=4, dim=2, r=3)
    assert pool.sample_hard(circle(0, 10), torch.tensor([0, 0])).tolist() == [-1, -1]
    pool.push(circle(0), torch.tensor([7]))
    assert pool.sample_hard(circle(0, 10), torch.tensor([7, -1])).tolist() == [-1, 7]


def test_pool_state_dict_resumes_exactly():
    pool = mining.GlobalMiningPool(size=6, dim=4, r=4, seed=1)
    pool.push(rows(5, seed=1), torch.arange(5))
    q = rows(32, seed=2)
    pool.sample_hard(q)
    state = pool.state_dict()
    expected = pool.sample_hard(q)
    other = mining.GlobalMiningPool(size=6, dim=4, r=4, seed=99)
    other.load_state_dict(state)
    assert torch.equal(other.sample_hard(q), expected)
    assert other.ids_in_order().tolist() == pool.ids_in_order().tolist()
    with pytest.raises(ValueError, match="size"):
        mining.GlobalMiningPool(size=7, dim=4).load_state_dict(state)
