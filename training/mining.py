"""Which (anchor, positive, negative) combinations a batch trains on, and the global pool.

A batch holds N matching pairs (ground g_i, aerial a_i). Every rule here works in both
directions: a ground anchor g_i against aerial negatives a_j, and an aerial anchor a_i against
ground negatives g_j (CVM-Net section 5.2; VIGOR section 4.2).

- ``exhaustive_in_batch``: all 2N(N-1) triplets (CVM-Net 5.2 "exhaustive mini-batch", from
  Vo and Hays; VIGOR eq. 1 builds the same 2N(N-1)).
- ``hardest_in_batch``: per anchor the negative at the smallest distance (CVM-Net 5.2, second
  stage: "for each positive pair, we choose the negative pair with smallest distance").
- ``hardest_quadruplets``: the hardest triplet plus the hardest pair outside it (CVM-Net eq. 6).
- ``batch_similarities``: positive and negative cosine similarities for the binomial loss
  (Revisiting eq. 4).
- ``GlobalMiningPool``: the FIFO pool of Revisiting section 3.3, used by VIGOR section 4.1 to
  fill half of each batch with global hard negatives.

VIGOR tiles overlap by 50 %, so two different aerial tiles in one batch can both cover one
panorama, and one tile can appear twice. ``negative_mask`` turns tile ids into a mask of the
pairs that may serve as negatives; every in-batch rule takes it as ``neg_mask`` and never uses
a masked pair (with no mask, every off-diagonal pair is a negative, as in the papers).

Distances are squared L2 (CVM-Net 5.2: "we use the squared Euclidean distance"); inputs are
L2-normalised embeddings, so d = 2 - 2 cos.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Largest tolerated | ||x|| - 1 | of an embedding that is meant to be L2-normalised (float16
# rounding stays below 1e-3).
_NORM_TOL = 1e-2


def check_normalised(x: Tensor, name: str) -> None:
    """Refuse a (N, D) tensor whose rows are not L2-normalised; the formulas assume they are."""
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        return
    dev = (x.detach().float().norm(dim=1) - 1.0).abs().max().item()
    if not dev <= _NORM_TOL:  # also catches NaN
        raise ValueError(
            f"{name} rows must be L2-normalised (|norm - 1| <= {_NORM_TOL}), worst deviation "
            f"{dev:.3g}; apply torch.nn.functional.normalize(x, dim=-1) in the model head"
        )


def _check_pairs(g: Tensor, a: Tensor, min_n: int = 2) -> int:
    check_normalised(g, "g")
    check_normalised(a, "a")
    if g.shape != a.shape:
        raise ValueError(
            f"g and a must have the same shape (N, D), got {tuple(g.shape)} and {tuple(a.shape)}"
        )
    n = g.shape[0]
    if n < min_n:
        raise ValueError(f"need at least {min_n} pairs in the batch, got {n}")
    return n


def pairwise_squared_l2(x: Tensor, y: Tensor) -> Tensor:
    """(N, D), (M, D) -> (N, M) squared Euclidean distances, clamped at 0 against rounding."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d.clamp_min(0.0)


def negative_mask(aerial_ids: Tensor, cover_ids: Tensor | None = None) -> Tensor:
    """(N, N) bool: True where aerial j of the batch may serve as a negative for ground i.

    aerial_ids: (N,) tile id of each pair's positive aerial. cover_ids: (N, K) tile ids that
    cover panorama i (its positive and semi-positives, VIGOR section 3), -1 as padding; default
    (N, 1) = aerial_ids, which masks repeats of the same tile. The diagonal is always False.
    """
    aerial_ids = aerial_ids.reshape(-1)
    n = aerial_ids.shape[0]
    if cover_ids is None:
        cover_ids = aerial_ids[:, None]
    if cover_ids.ndim != 2 or cover_ids.shape[0] != n:
        raise ValueError(f"cover_ids must be (N, K) with N={n}, got shape {tuple(cover_ids.shape)}")
    cover_ids = cover_ids.to(aerial_ids.device)
    hit = (aerial_ids[None, :, None] == cover_ids[:, None, :]) & (cover_ids[:, None, :] >= 0)
    mask = ~hit.any(dim=2)
    mask.fill_diagonal_(False)
    return mask


def valid_negatives(n: int, neg_mask: Tensor | None, device: torch.device) -> Tensor:
    """(N, N) bool of the pairs used as negatives: ``neg_mask`` (checked) without the diagonal."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if neg_mask is None:
        return ~eye
    if neg_mask.shape != (n, n) or neg_mask.dtype != torch.bool:
        raise ValueError(
            f"neg_mask must be a ({n}, {n}) bool tensor, got {neg_mask.dtype} {tuple(neg_mask.shape)}"
        )
    return neg_mask.to(device) & ~eye


def exhaustive_in_batch(g: Tensor, a: Tensor, neg_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """All 2N(N-1) triplets of a batch of N pairs (CVM-Net 5.2; VIGOR 4.2, eq. 1).

    g, a: (N, D) L2-normalised ground and aerial embeddings, row i a matching pair.
    neg_mask: optional (N, N) bool from ``negative_mask``; masked pairs are left out.
    Returns (d_pos, d_neg), each (T,), T = 2N(N-1) without a mask. Order: first the ground
    anchors (i, then j != i ascending: d(g_i, a_i) vs d(g_i, a_j)), then the aerial anchors
    (d(a_i, g_i) vs d(a_i, g_j)).
    """
    n = _check_pairs(g, a)
    dist = pairwise_squared_l2(g, a)  # dist[i, j] = ||g_i - a_j||^2
    valid = valid_negatives(n, neg_mask, dist.device)
    d_pos = dist.diagonal()
    pos_row = d_pos[:, None].expand(n, n)
    # Aerial anchor i against ground j is dist[j, i]; its pair is valid when ground j may
    # take aerial i as negative, i.e. valid[j, i].
    d_pos_all = torch.cat([pos_row[valid], pos_row[valid.T]])
    d_neg_all = torch.cat([dist[valid], dist.T[valid.T]])
    return d_pos_all, d_neg_all


def hardest_negative_indices(g: Tensor, a: Tensor, neg_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Index of the hardest negative per anchor, both directions (CVM-Net 5.2, second stage).

    Returns (g2a, a2g), each (N,) int64: g2a[i] = argmin_j ||g_i - a_j||^2 over valid j,
    a2g[i] = argmin_j ||a_i - g_j||^2; -1 where an anchor has no valid negative. Ties go to the
    smallest index.
    """
    n = _check_pairs(g, a)
    with torch.no_grad():
        dist = pairwise_squared_l2(g, a)
        valid = valid_negatives(n, neg_mask, dist.device)
        inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
        d_g = torch.where(valid, dist, inf)
        d_a = torch.where(valid.T, dist.T, inf)
        g2a = torch.where(valid.any(1), d_g.argmin(1), -1)
        a2g = torch.where(valid.T.any(1), d_a.argmin(1), -1)
    return g2a, a2g


def hardest_in_batch(g: Tensor, a: Tensor, neg_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The hardest negative per anchor in both directions: 2N triplets (CVM-Net 5.2).

    Returns (d_pos, d_neg), each (2N,) without a mask: first the N ground anchors, then the N
    aerial anchors; an anchor with no valid negative is left out.
    """
    g2a, a2g = hardest_negative_indices(g, a, neg_mask)
    dist = pairwise_squared_l2(g, a)
    d_pos = dist.diagonal()
    idx = torch.arange(g.shape[0], device=dist.device)
    kg, ka = g2a >= 0, a2g >= 0
    d_pos_all = torch.cat([d_pos[kg], d_pos[ka]])
    d_neg_all = torch.cat([dist[idx[kg], g2a[kg]], dist[a2g[ka], idx[ka]]])
    return d_pos_all, d_neg_all


def hardest_quadruplets(
    g: Tensor, a: Tensor, neg_mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Hardest triplet per anchor plus the hardest pair outside it, for CVM-Net eq. 6.

    CVM-Net defines d*_neg as the distance of "another example that is outside of the chosen
    set of positive, negative and anchor examples" and leaves the choice open. Our choice: a
    cross-view pair (g_k, a_l), k != l, valid in ``neg_mask``, with k and l both outside the
    anchor's location i and its hardest negative's location j; among those the closest one
    (hard, like the triplet). Needs N >= 4; costs O(N^3) memory.

    Returns (d_pos, d_neg, d_neg2), each (2N,) without a mask, in ``hardest_in_batch`` order;
    anchors without a valid negative or outside pair are left out.
    """
    n = _check_pairs(g, a, min_n=4)
    g2a, a2g = hardest_negative_indices(g, a, neg_mask)
    dist = pairwise_squared_l2(g, a)
    valid = valid_negatives(n, neg_mask, dist.device)
    idx = torch.arange(n, device=dist.device)
    d_pos = dist.diagonal()
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)

    def outside(neg: Tensor) -> tuple[Tensor, Tensor]:
        # allowed[i, k, l]: pair (g_k, a_l) is a negative pair and avoids locations i and neg[i].
        off = (idx[None, :] != idx[:, None]) & (idx[None, :] != neg[:, None])  # (N, N): k outside
        allowed = valid[None, :, :] & off[:, :, None] & off[:, None, :]
        masked = torch.where(allowed, dist[None, :, :], inf)
        flat = masked.reshape(n, n * n)
        best = flat.detach().argmin(1)
        has = allowed.reshape(n, n * n).any(1) & (neg >= 0)
        return flat.gather(1, best[:, None])[:, 0], has

    dq_g, kg = outside(g2a)
    dq_a, ka = outside(a2g)
    d_pos_all = torch.cat([d_pos[kg], d_pos[ka]])
    d_neg_all = torch.cat([dist[idx[kg], g2a[kg]], dist[a2g[ka], idx[ka]]])
    d_neg2_all = torch.cat([dq_g[kg], dq_a[ka]])
    return d_pos_all, d_neg_all, d_neg2_all


def batch_similarities(g: Tensor, a: Tensor, neg_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cosine similarities of the N positive and N(N-1) negative pairs (Revisiting eq. 4).

    The similarity of a pair does not depend on which side is the anchor, so each negative pair
    (g_i, a_j), i != j, is counted once (both directions would repeat the same values and
    leave eq. 4's means unchanged). Returns (sim_pos (N,), sim_neg (Q,)), negatives row-major.
    """
    n = _check_pairs(g, a)
    sim = g @ a.T
    valid = valid_negatives(n, neg_mask, sim.device)
    return sim.diagonal(), sim[valid]


class GlobalMiningPool:
    """Revisiting's global hard-negative mining pool (section 3.3; VIGOR section 4.1).

    A fixed-capacity FIFO ring of aerial embeddings from recent training steps, with their tile
    ids (and tile-centre positions in metres, when exclusion by distance is wanted). For each
    query ``sample_hard`` scores the whole pool with one matmul and returns the id of one of the
    r hardest (most similar) tiles, drawn uniformly (Revisiting: "we randomly select one of the
    r hardest negative samples from the mining pool"; r = 100 in section 5). Pushing every
    step gives section 3.3's online FIFO; pushing a whole pass gives section 5's "updated every
    epoch" variant.

    Choices where the papers are silent:
    - An id pushed again replaces its older entry (the older slot is invalidated), so the pool
      holds the newest embedding of each tile once; "the whole training set" mode of Revisiting
      is a pool whose size is the number of tiles.
    - Never returned: the query's own ids (its positive, and its semi-positives when given:
      VIGOR tiles overlap) and, with ``exclude_radius_m``, any tile whose centre lies within
      that distance of the query position. A tile covers a point when the point is within
      L/2 of its centre along both axes, so exclude_radius_m = L / sqrt(2) removes every tile
      that covers the query (51.6 m for VIGOR's L = 72.96 m).
    - With ``scope_radius_m``, only tiles whose centre lies within that distance of the query
      are candidates: negatives from the query's GPS neighbourhood, the only ones the runtime
      ever has to tell apart (design.md, Sample4Geo's GPS sampling).
    - Candidates are ordered by (similarity descending, tile id ascending) before the random
      pick, and the pick draws from a CPU generator seeded with ``seed``: the same pushes and
      queries give the same ids. ``state_dict`` keeps the generator, for an exact resume.
    - A query with no candidate (empty pool, everything excluded) gets id -1.

    Positions are planar metres in one frame shared by queries and tiles (the tile set's UTM
    zone), stored as float64.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        r: int = 100,
        exclude_radius_m: float | None = None,
        seed: int = 0,
        *,
        scope_radius_m: float | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if size < 1 or dim < 1 or r < 1:
            raise ValueError(f"size, dim and r must be >= 1, got size={size}, dim={dim}, r={r}")
        for name, value in (("exclude_radius_m", exclude_radius_m), ("scope_radius_m", scope_radius_m)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be None or >= 0 metres, got {value}")
        self.size = int(size)
        self.dim = int(dim)
        self.r = int(r)
        self.exclude_radius_m = exclude_radius_m
        self.scope_radius_m = scope_radius_m
        self.device = torch.device(device)
        self.dtype = dtype
        self.needs_positions = exclude_radius_m is not None or scope_radius_m is not None
        self._emb = torch.zeros(self.size, self.dim, dtype=dtype, device=self.device)
        self._ids = torch.full((self.size,), -1, dtype=torch.int64, device=self.device)
        self._pos = torch.zeros(self.size, 2, dtype=torch.float64, device=self.device)
        self._valid = torch.zeros(self.size, dtype=torch.bool, device=self.device)
        self._age = torch.zeros(self.size, dtype=torch.int64, device=self.device)  # push counter, for order
        self._next = 0  # ring slot written next
        self._pushed = 0  # entries written so far
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(int(seed))

    def __len__(self) -> int:
        """Number of live entries (at most ``size``)."""
        return int(self._valid.sum().item())

    def ids_in_order(self) -> Tensor:
        """(M,) int64 ids of the live entries, oldest first (CPU)."""
        slots = torch.nonzero(self._valid).reshape(-1)
        order = torch.argsort(self._age[slots])
        return self._ids[slots[order]].cpu()

    def embeddings_of(self, ids: Tensor) -> Tensor:
        """(B, D) stored embeddings of the given live ids, in the given order (for inspection)."""
        ids = torch.as_tensor(ids, dtype=torch.int64, device=self.device).reshape(-1)
        match = (self._ids[None, :] == ids[:, None]) & self._valid[None, :]
        missing = ~match.any(1)
        if missing.any():
            raise KeyError(f"ids not in the pool: {ids[missing].tolist()}")
        return self._emb[match.int().argmax(1)]

    def push(self, emb: Tensor, ids: Tensor, positions_m: Tensor | None = None) -> None:
        """Add a batch in FIFO order; the oldest entries make room once the pool is full.

        emb: (B, D) aerial embeddings (detached and copied); ids: (B,) int tile ids >= 0;
        positions_m: (B, 2) tile-centre (easting, northing) metres, required when the pool
        excludes or scopes by distance. A repeated id keeps only its newest embedding.
        """
        emb = emb.detach()
        ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).to(self.device)
        if emb.ndim != 2 or emb.shape[1] != self.dim or emb.shape[0] != ids.shape[0]:
            raise ValueError(
                f"push needs emb (B, {self.dim}) and ids (B,), got {tuple(emb.shape)} and {tuple(ids.shape)}"
            )
        if (ids < 0).any():
            raise ValueError("tile ids must be >= 0 (-1 marks an empty slot)")
        if positions_m is None:
            if self.needs_positions:
                raise ValueError(
                    "this pool excludes or scopes by distance: push(..., positions_m=(B, 2) metres)"
                )
            pos = torch.zeros(ids.shape[0], 2, dtype=torch.float64, device=self.device)
        else:
            pos = torch.as_tensor(positions_m).to(self.device, torch.float64)
            if pos.shape != (ids.shape[0], 2):
                raise ValueError(f"positions_m must be (B, 2) metres, got {tuple(pos.shape)}")
        # Within the batch, an id seen again later wins; then only the newest `size` rows fit.
        later = torch.triu(ids[:, None] == ids[None, :], diagonal=1).any(1)
        keep = torch.nonzero(~later).reshape(-1)[-self.size:]
        emb, ids, pos = emb[keep].to(self.device, self.dtype), ids[keep], pos[keep]
        b = ids.shape[0]
        if b == 0:
            return
        self._valid &= ~torch.isin(self._ids, ids)
        slots = (self._next + torch.arange(b, device=self.device)) % self.size
        self._emb[slots] = emb
        self._ids[slots] = ids
        self._pos[slots] = pos
        self._valid[slots] = True
        self._age[slots] = self._pushed + torch.arange(b, device=self.device)
        self._next = (self._next + b) % self.size
        self._pushed += b

    def sample_hard(
        self,
        query_emb: Tensor,
        query_ids: Tensor | None = None,
        query_positions_m: Tensor | None = None,
    ) -> Tensor:
        """For each query, the tile id of one of its r hardest pool entries.

        query_emb: (B, D) L2-normalised ground embeddings. query_ids: (B,) or (B, K) tile ids
        never to return for that query (its positive, and semi-positives), -1 as padding.
        query_positions_m: (B, 2) metres, required when the pool excludes or scopes by distance.
        Returns (B,) int64 tile ids on the CPU, -1 where no candidate is left.
        """
        q = query_emb.detach()
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query_emb must be (B, {self.dim}), got {tuple(q.shape)}")
        b = q.shape[0]
        slots = torch.nonzero(self._valid).reshape(-1)
        if b == 0 or slots.numel() == 0:
            return torch.full((b,), -1, dtype=torch.int64)
        pool_ids = self._ids[slots]
        score = q.to(self.device, self.dtype) @ self._emb[slots].T  # (B, M) cosine, one matmul
        score = score.float()
        banned = torch.zeros_like(score, dtype=torch.bool)
        if query_ids is not None:
            qid = torch.as_tensor(query_ids, dtype=torch.int64).to(self.device)
            qid = qid.reshape(b, -1)
            banned |= ((pool_ids[None, :, None] == qid[:, None, :]) & (qid[:, None, :] >= 0)).any(2)
        if self.needs_positions:
            if query_positions_m is None:
                raise ValueError(
                    "this pool excludes or scopes by distance: "
                    "sample_hard(..., query_positions_m=(B, 2) metres)"
                )
            qpos = torch.as_tensor(query_positions_m).to(self.device, torch.float64).reshape(b, 2)
            dist_m = torch.cdist(qpos, self._pos[slots])
            if self.exclude_radius_m is not None:
                banned |= dist_m <= self.exclude_radius_m
            if self.scope_radius_m is not None:
                banned |= dist_m > self.scope_radius_m
        score = score.masked_fill(banned, float("-inf"))
        k = min(self.r, slots.numel())
        top_score, top_col = torch.topk(score, k, dim=1)
        top_ids = pool_ids[top_col]
        # Deterministic order inside the r hardest: similarity descending, id ascending.
        order = torch.argsort(top_ids, dim=1, stable=True)
        top_score, top_ids = top_score.gather(1, order), top_ids.gather(1, order)
        order = torch.argsort(-top_score, dim=1, stable=True)
        top_score, top_ids = top_score.gather(1, order), top_ids.gather(1, order)
        n_ok = torch.isfinite(top_score).sum(1).cpu()
        u = torch.rand(b, generator=self._gen)
        pick = torch.minimum((u * n_ok).long(), (n_ok - 1).clamp_min(0))
        chosen = top_ids.cpu().gather(1, pick[:, None])[:, 0]
        return torch.where(n_ok > 0, chosen, torch.full_like(chosen, -1))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume sampling exactly (tensors on the CPU)."""
        return {
            "size": self.size,
            "dim": self.dim,
            "emb": self._emb.cpu(),
            "ids": self._ids.cpu(),
            "pos": self._pos.cpu(),
            "valid": self._valid.cpu(),
            "age": self._age.cpu(),
            "next": self._next,
            "pushed": self._pushed,
            "generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` taken from a pool of the same size and dim."""
        if state["size"] != self.size or state["dim"] != self.dim:
            raise ValueError(
                f"pool state is size={state['size']}, dim={state['dim']}; this pool is "
                f"size={self.size}, dim={self.dim}: build the pool with the checkpoint's settings"
            )
        self._emb = state["emb"].to(self.device, self.dtype).clone()
        self._ids = state["ids"].to(self.device).clone()
        self._pos = state["pos"].to(self.device).clone()
        self._valid = state["valid"].to(self.device).clone()
        self._age = state["age"].to(self.device).clone()
        self._next = int(state["next"])
        self._pushed = int(state["pushed"])
        self._gen.set_state(state["generator"])
