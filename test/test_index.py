"""Tests for crossview_ros.index: scoped search, FAISS global index, descriptor checks.

Every search is compared with an independent brute force: float64 scores of all rows
(elementwise product summed per row, so identical rows tie exactly) ordered by Python's
sorted() with key (-score, id). float32 may order two rows whose float64 scores differ by
less than its rounding differently; ``assert_same_ranking`` allows exactly that and nothing
else: a swap of rows whose float64 scores are equal (a tie resolved the wrong way) fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from crossview_ros import index as ix
from crossview_ros.index import DescriptorError, GlobalIndex, ScopedSearch, SearchResult, check_descriptors

REPO = Path(__file__).resolve().parents[1]
NEAR_TIE = 1e-6  # float64 score gap below which float32 may legitimately swap two rows


# ---------------------------------------------------------------- reference implementation


def brute_scores(desc: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float64 cosine of every row with query; all-zero rows score 0."""
    d = np.asarray(desc, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    q = q / np.sqrt(np.sum(q * q))
    dots = np.sum(d * q, axis=1)
    norms = np.sqrt(np.sum(d * d, axis=1))
    out = np.zeros(len(d))
    nz = norms > 0
    out[nz] = dots[nz] / norms[nz]
    return out


def brute_top_k(scores: np.ndarray, candidates, k: int) -> list[int]:
    return sorted({int(i) for i in candidates}, key=lambda i: (-scores[i], i))[:k]


def assert_same_ranking(result: SearchResult, want: list[int], scores: np.ndarray, candidates=None) -> None:
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    assert len(result.ids) == len(want), f"got {len(result.ids)} results, want {len(want)}"
    assert len(set(result.ids.tolist())) == len(result.ids), "duplicate ids in result"
    if candidates is not None:
        assert set(result.ids.tolist()) <= {int(i) for i in candidates}, "id outside the candidates"
    np.testing.assert_allclose(result.scores, scores[result.ids], rtol=0, atol=2e-6)
    for pos, (got, exp) in enumerate(zip(result.ids.tolist(), want)):
        if got != exp:
            gap = abs(scores[got] - scores[exp])
            assert 0 < gap < NEAR_TIE, (
                f"position {pos}: got tile {got} (score {scores[got]!r}), want {exp} "
                f"(score {scores[exp]!r}); gap {gap:.3g} is not a float32 near-tie"
            )


def unit_rows(rng: np.random.Generator, n: int, d: int, dtype=np.float16) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def pooled_rows(rng: np.random.Generator, n: int, d: int, pool: int) -> np.ndarray:
    """n rows drawn from `pool` distinct unit rows: exact ties everywhere."""
    return unit_rows(rng, pool, d)[rng.integers(0, pool, n)]


# ---------------------------------------------------------------- float16 conversion


def test_f16_to_f32_is_bit_exact_for_every_finite_half():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16)
    want = halves.astype(np.float32)
    finite = np.isfinite(want)
    got, all_finite = ix._f16_to_f32(halves[finite].reshape(1, -1))
    assert all_finite
    np.testing.assert_array_equal(got.view(np.uint32).ravel(), want[finite].view(np.uint32))
    _, flagged = ix._f16_to_f32(halves[~finite][:5].reshape(1, -1))
    assert not flagged


# ---------------------------------------------------------------- scoped search


@pytest.mark.parametrize("seed", range(24))
def test_scoped_search_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 1500))
    d = int(rng.choice([3, 16, 33, 64]))
    dtype = np.float16 if seed % 3 else np.float32
    desc = unit_rows(rng, n, d, np.float32) * rng.uniform(0.25, 4.0, (n, 1))  # not unit
    desc = desc.astype(dtype)
    dup_src = rng.integers(0, n, 6)
    dup_dst = rng.integers(0, n, 6)
    desc[dup_dst] = desc[dup_src]  # exact duplicates anywhere, including near the ends
    desc[[0, n - 1]] = desc[n // 2]
    query = desc[n // 2].astype(np.float32) + rng.normal(0, 0.05, d).astype(np.float32)
    m = int(rng.integers(1, n + 1))
    candidates = rng.choice(n, m, replace=False)
    candidates = np.concatenate([candidates, [0, n - 1, n // 2]])
    if seed % 2:
        candidates = np.concatenate([candidates, candidates[:5]])  # unsorted, with repeats
    k = int(rng.integers(1, len(set(candidates.tolist())) + 6))
    scores = brute_scores(desc, query)
    result = ScopedSearch(desc, device="cpu").search(query, candidates, k)
    assert_same_ranking(result, brute_top_k(scores, candidates, k), scores, candidates)


@pytest.mark.parametrize("n_candidates", [40, 200, 3000])  # short lexsort path and partition path
@pytest.mark.parametrize("k", [1, 7, 50])
def test_exact_ties_are_ordered_by_id(n_candidates, k):
    rng = np.random.default_rng(n_candidates * 100 + k)
    desc = pooled_rows(rng, 4000, 24, pool=12)
    query = rng.standard_normal(24).astype(np.float32)
    candidates = np.sort(rng.choice(4000, n_candidates, replace=False))
    scores = brute_scores(desc, query)
    want = brute_top_k(scores, candidates, k)
    result = ScopedSearch(desc, device="cpu").search(query, candidates, k)
    assert_same_ranking(result, want, scores, candidates)
    assert result.ids.tolist() == want  # pooled rows: no near-ties, every tie exact


def test_tie_straddling_k_keeps_smallest_ids():
    desc = np.zeros((10, 4), np.float16)
    desc[:, 3] = 1.0  # all rows orthogonal to the query's best direction ...
    desc[[9, 5, 2]] = [1.0, 0.0, 0.0, 0.0]  # ... except three identical best rows
    desc[7] = [0.6, 0.8, 0.0, 0.0]
    s = ScopedSearch(desc, device="cpu")
    result = s.search(np.array([1.0, 0.0, 0.0, 0.0]), np.arange(10), 2)
    assert result.ids.tolist() == [2, 5]
    np.testing.assert_array_equal(result.scores, [1.0, 1.0])
    result = s.search(np.array([2.0, 0.0, 0.0, 0.0]), np.array([9, 7, 5]), 3)
    assert result.ids.tolist() == [5, 9, 7]
    np.testing.assert_allclose(result.scores, [1.0, 1.0, 0.6], atol=1e-3)  # 0.6 in float16


def test_scores_are_exact_cosine_for_rows_that_are_not_unit():
    rng = np.random.default_rng(5)
    base = unit_rows(rng, 1, 8, np.float32)[0]
    desc = np.stack([base, 4.0 * base, 0.125 * base, -base]).astype(np.float32)  # exact scalings
    query = base + np.float32(0.3) * unit_rows(rng, 1, 8, np.float32)[0]
    want = float(base @ query / np.linalg.norm(query))
    result = ScopedSearch(desc, device="cpu").search(query, np.arange(4), 4)
    assert result.ids.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(result.scores, [want, want, want, -want], atol=1e-6)


def test_zero_row_scores_zero():
    desc = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0]], np.float16)
    result = ScopedSearch(desc, device="cpu").search(np.array([1.0, 0, 0]), np.arange(3), 3)
    assert result.ids.tolist() == [1, 0, 2]
    np.testing.assert_array_equal(result.scores, [1.0, 0.0, -1.0])


def test_k_beyond_candidates_and_empty_scope():
    rng = np.random.default_rng(1)
    desc = unit_rows(rng, 30, 8)
    s = ScopedSearch(desc, device="cpu")
    query = rng.standard_normal(8)
    assert len(s.search(query, np.array([4, 2, 9]), 10)) == 3
    empty = s.search(query, np.array([], np.int64), 5)
    assert empty.ids.shape == (0,) and empty.ids.dtype == np.int64 and empty.scores.dtype == np.float32
    assert len(s.search(query, [], 5)) == 0


def test_memmap_descriptors_match_in_memory(tmp_path):
    rng = np.random.default_rng(2)
    desc = unit_rows(rng, 500, 16)
    np.save(tmp_path / "d.npy", desc)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    query = rng.standard_normal(16)
    ids = rng.choice(500, 60, replace=False)
    a = ScopedSearch(mapped, device="cpu").search(query, ids, 10)
    b = ScopedSearch(desc, device="cpu").search(query, ids, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_search_batch_equals_search():
    rng = np.random.default_rng(3)
    desc = pooled_rows(rng, 800, 16, pool=40)
    s = ScopedSearch(desc, device="cpu")
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    lists = [rng.choice(800, int(rng.integers(0, 300)), replace=False) for _ in range(5)]
    shared = rng.choice(800, 120, replace=False)
    for got, q, ids in zip(s.search_batch(queries, lists, 9), queries, lists):
        want = s.search(q, ids, 9)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
    for got, q in zip(s.search_batch(queries, shared, 9), queries):
        want = s.search(q, shared, 9)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)
    rows = np.stack([shared[:50]] * 5)
    assert [r.ids.tolist() for r in s.search_batch(queries, rows, 3)] == [
        s.search(q, shared[:50], 3).ids.tolist() for q in queries
    ]
    with pytest.raises(ValueError, match="2 candidate id lists"):
        s.search_batch(queries, lists[:2], 3)


@pytest.mark.parametrize(
    "query, ids, k, error, match",
    [
        (np.ones(8), [1, 2], 0, ValueError, "k must be an integer >= 1"),
        (np.ones(8), [1, 2], -3, ValueError, "k must be"),
        (np.ones(8), [1, 2], 2.5, ValueError, "k must be"),
        (np.ones(8), [1, 2], True, ValueError, "k must be"),
        (np.ones(7), [1, 2], 3, DescriptorError, "dim 7 but the tile descriptors have dim 8"),
        (np.ones((2, 8)), [1, 2], 3, ValueError, r"\(D,\) array"),
        (np.r_[np.nan, np.ones(7)], [1, 2], 3, ValueError, "NaN"),
        (np.r_[np.inf, np.ones(7)], [1, 2], 3, ValueError, "infinite"),
        (np.zeros(8), [1, 2], 3, ValueError, "all zeros"),
        (np.ones(8), [1, 20], 3, ValueError, r"\[20\] are outside 0..19"),
        (np.ones(8), [-1, 3], 3, ValueError, r"\[-1\] are outside"),
        (np.ones(8), [1.0, 2.0], 3, ValueError, "integer array"),
        (np.ones(8), [[1, 2]], 3, ValueError, "1-D integer array"),
    ],
)
def test_invalid_search_arguments_are_refused(query, ids, k, error, match):
    s = ScopedSearch(np.ones((20, 8), np.float16), device="cpu")
    with pytest.raises(error, match=match):
        s.search(query, np.asarray(ids), k)


def test_non_finite_descriptor_rows_are_refused_when_in_scope():
    desc = np.ones((10, 4), np.float16)
    desc[6, 2] = np.inf
    desc[3, 0] = np.nan
    s = ScopedSearch(desc, device="cpu")
    assert s.search(np.ones(4), np.array([0, 1, 2]), 2).ids.tolist() == [0, 1]
    with pytest.raises(DescriptorError, match=r"tiles \[3, 6\] are NaN or infinite.*re-encode"):
        s.search(np.ones(4), np.arange(10), 2)
    s32 = ScopedSearch(desc.astype(np.float32), device="cpu")
    with pytest.raises(DescriptorError, match=r"tiles \[6\]"):
        s32.search(np.ones(4), np.array([5, 6]), 1)


@pytest.mark.parametrize(
    "desc, device, match",
    [
        (np.ones(8, np.float16), "cpu", "shape"),
        (np.ones((4, 0), np.float16), "cpu", "shape"),
        (np.ones((4, 8), np.int8), "cpu", "floating point"),
        (np.ones((4, 8), np.float16), "gpu", "device must be"),
        (np.ones((4, 8), np.float16), "cuda:x", "device must be"),
        (np.ones((4, 8), np.float16), None, "device must be"),
    ],
)
def test_constructor_refuses_bad_arguments(desc, device, match):
    with pytest.raises(ValueError, match=match):
        ScopedSearch(desc, device=device)


def _cuda_torch_available() -> bool:
    if not ix._nvidia_device_present():
        return False
    try:
        import torch
    except Exception:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_cuda_torch_available(), reason="this machine has CUDA torch")
def test_explicit_cuda_without_cuda_torch_is_refused():
    with pytest.raises(RuntimeError, match="use device='cpu'"):
        ScopedSearch(np.ones((4, 8), np.float16), device="cuda")


@pytest.mark.skipif(not _cuda_torch_available(), reason="needs an NVIDIA GPU and CUDA torch")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    desc = pooled_rows(rng, 5000, 64, pool=200)
    queries = rng.standard_normal((6, 64)).astype(np.float32)
    lists = [rng.choice(5000, int(rng.integers(1, 400)), replace=False) for _ in range(6)]
    gpu = ScopedSearch(desc, device="auto")
    assert gpu.device.startswith("cuda")
    cpu = ScopedSearch(desc, device="cpu")
    for q, ids, got in zip(queries, lists, gpu.search_batch(queries, lists, 10)):
        scores = brute_scores(desc, q)
        assert_same_ranking(got, brute_top_k(scores, ids, 10), scores, ids)
        want = cpu.search(q, ids, 10)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)


_PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import crossview_ros.index as ix
    ix._NVIDIA_DEVICE_GLOB = sys.argv[1]
    s = ix.ScopedSearch(np.ones((4, 3), np.float16), device="auto")
    s.search(np.ones(3), np.arange(4), 2)
    print(s.device, "torch" in sys.modules, "faiss" in sys.modules)
    """
)


def test_auto_never_imports_torch_without_an_nvidia_device(tmp_path):
    # A fake, importable torch without CUDA: the probe sees whether "auto" imported it.
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "class cuda:\n    @staticmethod\n    def is_available():\n        return False\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))

    def probe(device_glob: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, device_glob], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert probe(str(tmp_path / "no-such-device*")) == "cpu False False"
    (tmp_path / "nvidia0").touch()  # control: with a device node, "auto" does try torch
    assert probe(str(tmp_path / "nvidia*")) == "cpu True False"


# ---------------------------------------------------------------- global index


@pytest.mark.parametrize("pool", [None, 25])  # distinct rows; massive exact ties
def test_global_flat_matches_brute_force(pool):
    rng = np.random.default_rng(7)
    desc = pooled_rows(rng, 3000, 32, pool) if pool else unit_rows(rng, 3000, 32)
    desc[::7] = (desc[::7].astype(np.float32) * 2.5).astype(np.float16)  # some rows not unit
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    index = GlobalIndex.build(desc)
    assert (index.kind, index.count, index.dim) == ("flat", 3000, 32)
    for k in (1, 10, 150):
        for q, got in zip(queries, index.search(queries, k)):
            scores = brute_scores(desc, q)
            assert_same_ranking(got, brute_top_k(scores, range(3000), k), scores)
    single = index.search(queries[0], 5)
    assert len(single) == 1 and len(single[0]) == 5
    assert len(index.search(queries[0], 5000)[0]) == 3000


class _AdversarialFlat:
    """A stand-in FAISS flat index that breaks ties against us: largest ids first, and its
    scores carry rounding noise of 1e-6, as a GPU or BLAS path may."""

    def __init__(self, rows: np.ndarray, seed: int) -> None:
        self.rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        self.d, self.ntotal = rows.shape[1], rows.shape[0]
        self.rng = np.random.default_rng(seed)

    def search(self, queries, k):
        scores = queries @ self.rows.T
        noisy = scores + self.rng.uniform(-1e-6, 1e-6, scores.shape)
        order = np.lexsort((-np.arange(self.ntotal)[None].repeat(len(queries), 0), -scores), axis=1)[:, :k]
        return np.take_along_axis(noisy, order, 1).astype(np.float32), order.astype(np.int64)

    def reconstruct_batch(self, ids):
        return self.rows[ids].astype(np.float32)


def test_global_search_widens_until_ties_at_k_are_settled():
    rng = np.random.default_rng(11)
    desc = pooled_rows(rng, 2000, 16, pool=20).astype(np.float32)  # ~100 copies of each row
    index = GlobalIndex(_AdversarialFlat(desc, seed=1), "flat")
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    for k in (1, 5, 40):
        for q, got in zip(queries, index.search(queries, k)):
            scores = brute_scores(desc, q)
            assert got.ids.tolist() == brute_top_k(scores, range(2000), k)


def test_global_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    desc = pooled_rows(rng, 1000, 16, pool=30)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    index = GlobalIndex.build(desc)
    path = index.save(tmp_path / "index.faiss")
    assert path == tmp_path / "index.faiss"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss"]  # no temporary left
    loaded = GlobalIndex.load(path)
    assert (loaded.kind, loaded.count, loaded.dim) == ("flat", 1000, 16)
    for a, b in zip(index.search(queries, 20), loaded.search(queries, 20)):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_global_load_refuses_what_it_cannot_use(tmp_path):
    import faiss

    with pytest.raises(FileNotFoundError, match="GlobalIndex.build"):
        GlobalIndex.load(tmp_path / "missing.faiss")
    (tmp_path / "junk.faiss").write_bytes(b"not a faiss index at all")
    with pytest.raises(DescriptorError, match="corrupt or not a FAISS file"):
        GlobalIndex.load(tmp_path / "junk.faiss")
    l2 = faiss.IndexFlatL2(4)
    l2.add(np.eye(4, dtype=np.float32))
    faiss.write_index(l2, str(tmp_path / "l2.faiss"))
    with pytest.raises(DescriptorError, match="not an inner-product index"):
        GlobalIndex.load(tmp_path / "l2.faiss")


def test_global_hnsw_finds_most_of_the_exact_top_k():
    rng = np.random.default_rng(9)
    desc = unit_rows(rng, 4000, 32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    exact = GlobalIndex.build(desc).search(queries, 10)
    approx = GlobalIndex.build(desc, kind="hnsw", hnsw_m=16, ef_search=64).search(queries, 10)
    recall = np.mean([len(set(a.ids) & set(e.ids)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9
    for r in approx:  # whatever HNSW finds comes back in the house order
        keys = list(zip((-r.scores).tolist(), r.ids.tolist()))
        assert keys == sorted(keys)


def test_global_build_refuses_bad_input():
    with pytest.raises(DescriptorError, match=r"tiles \[2\] are NaN"):
        GlobalIndex.build(np.array([[1, 0], [0, 1], [np.nan, 1]], np.float32))
    with pytest.raises(ValueError, match="kind must be"):
        GlobalIndex.build(np.ones((3, 2), np.float32), kind="ivf")
    with pytest.raises(DescriptorError, match="dim 3 but the tile descriptors have dim 2"):
        GlobalIndex.build(np.ones((3, 2), np.float32)).search(np.ones(3), 1)


# ---------------------------------------------------------------- check_descriptors


class _StubTileSet(SimpleNamespace):
    def __len__(self) -> int:
        return self.n


def _stub(desc, model_hash="abc123", n=None):
    """What check_descriptors reads of a TileSet: path, descriptors, model_hash, len()."""
    count = len(desc) if n is None else n
    return _StubTileSet(path=Path("/sets/nyc"), descriptors=desc, model_hash=model_hash, n=count)


def test_check_descriptors_accepts_matching_set():
    check_descriptors(_stub(np.zeros((5, 8), np.float16)), "abc123", 8)


@pytest.mark.parametrize(
    "tile_set, match",
    [
        (
            _stub(None, None, 5),
            r"/sets/nyc has no descriptors; encode the tile set with this model \(model hash 'abc123', dim 8\)",
        ),
        (
            _stub(np.zeros((5, 8), np.float16), "fff999"),
            r"model 'fff999' but the encoder is model 'abc123'.*re-encode the tile set with this model",
        ),
        (_stub(np.zeros((5, 16), np.float16)), r"dim 16 but the encoder produces dim 8; re-encode"),
        (_stub(np.zeros((4, 8), np.float16), n=5), r"4 descriptor rows for 5 tiles"),
        (_stub(np.zeros((5, 16), np.float16), "fff999"), r"'fff999'.*'abc123'.*dim 16 .*dim 8"),
    ],
)
def test_check_descriptors_refuses_mismatch(tile_set, match):
    with pytest.raises(DescriptorError, match=match):
        check_descriptors(tile_set, "abc123", 8)


def test_check_descriptors_refuses_bad_arguments():
    with pytest.raises(ValueError, match="model_hash"):
        check_descriptors(_stub(np.zeros((5, 8), np.float16)), "", 8)
    with pytest.raises(ValueError, match="dim must be"):
        check_descriptors(_stub(np.zeros((5, 8), np.float16)), "abc123", 0)


# ---------------------------------------------------------------- end to end on 1 M tiles

_SIDE = 1000  # 1000 x 1000 lattice = 1 M tiles
_STRIDE_M = 36.48  # VIGOR tiles (72.96 m) at 50 % overlap
_DIM = 32
_MODEL = "test-model-e2e"


@pytest.fixture(scope="session")
def million_tiles(tmp_path_factory):
    """A 1 M-tile set without images around New York (zone 18N) with random descriptors.

    Every third tile copies its west neighbour's descriptor, so scopes hold exact ties.
    """
    from crossview_ros import geo, tiles

    zone = geo.UTMZone.parse("18N")
    e0 = round(585_000 / _STRIDE_M) * _STRIDE_M
    n0 = round(4_511_000 / _STRIDE_M) * _STRIDE_M
    col, row = np.meshgrid(np.arange(_SIDE), np.arange(_SIDE))
    east, north = e0 + col.ravel() * _STRIDE_M, n0 + row.ravel() * _STRIDE_M
    path = tiles.write_tile_set(
        tmp_path_factory.mktemp("e2e") / "nyc", zone=zone, easting_m=east, northing_m=north,
        tile_size_m=2 * _STRIDE_M, tile_px=640,
    )
    desc = np.random.default_rng(12).standard_normal((_SIDE * _SIDE, _DIM), dtype=np.float32)
    copies = np.arange(1, _SIDE * _SIDE, 3)
    desc[copies] = desc[copies - 1]
    tiles.TileSet.open(path).write_descriptors(desc, _MODEL)
    tile_set = tiles.TileSet.open(path)
    stored = np.asarray(tile_set.descriptors, dtype=np.float64)  # the float16 values, widened
    unit = stored / np.sqrt(np.sum(stored * stored, axis=1, keepdims=True))
    return SimpleNamespace(tile_set=tile_set, zone=zone, east=east, north=north, unit=unit)


def test_scope_then_search_equals_brute_force_over_one_million_tiles(million_tiles):
    from crossview_ros import geo

    m = million_tiles
    ts = m.tile_set
    assert len(ts) == 1_000_000 and ts.descriptors.shape == (1_000_000, _DIM)
    check_descriptors(ts, _MODEL, _DIM)
    search = ScopedSearch(ts.descriptors, device="cpu")
    rng = np.random.default_rng(13)
    tied_results = 0
    for fix in range(20):
        e = rng.uniform(m.east.min(), m.east.max())
        n = rng.uniform(m.north.min(), m.north.max())
        lat, lon = geo.utm_to_latlon(e, n, m.zone)
        radius_m = 200.0 if fix % 4 else 500.0
        candidates = ts.tiles_within(lat, lon, radius_m)

        dist = np.hypot(m.east - e, m.north - n)
        in_scope = np.flatnonzero(dist <= radius_m)
        differ = np.setxor1d(candidates, in_scope)
        assert np.all(np.abs(dist[differ] - radius_m) < 1e-3), "scope differs away from its edge"
        near = in_scope[np.argmin(dist[in_scope])]
        query = (m.unit[near] + rng.normal(0, 0.3, _DIM)).astype(np.float32)

        scores = np.zeros(len(m.unit))
        for start in range(0, len(m.unit), 200_000):  # all 1 M, per row, float64
            block = m.unit[start : start + 200_000]
            scores[start : start + 200_000] = np.sum(block * (query / np.linalg.norm(query)), axis=1)
        for k in (10, 1000):
            result = search.search(query, candidates, k)
            assert_same_ranking(result, brute_top_k(scores, candidates, k), scores, candidates)
            tied_results += int(np.any(result.scores[1:] == result.scores[:-1]))
    assert tied_results >= 10  # the comparison did exercise exact ties


def test_global_index_over_one_million_tiles_equals_brute_force(million_tiles):
    m = million_tiles
    index = GlobalIndex.build(m.tile_set.descriptors)
    queries = np.random.default_rng(14).standard_normal((3, _DIM)).astype(np.float32)
    for q, got in zip(queries, index.search(queries, 10)):
        scores = np.sum(m.unit * (q / np.linalg.norm(q)), axis=1)
        shortlist = np.flatnonzero(scores >= np.sort(scores)[-10])  # every row that can be top 10
        assert_same_ranking(got, brute_top_k(scores, shortlist, 10), scores)


def test_fix_outside_coverage_gives_empty_scope_and_result(million_tiles):
    ts = million_tiles.tile_set
    candidates = ts.tiles_within(48.85, 2.35, 200.0)  # Paris: far from the New York set
    assert candidates.size == 0
    assert len(ScopedSearch(ts.descriptors, device="cpu").search(np.ones(_DIM), candidates, 10)) == 0


def test_check_descriptors_refuses_another_model_on_a_real_set(million_tiles):
    with pytest.raises(DescriptorError, match=f"model '{_MODEL}' but the encoder is model 'other'"):
        check_descriptors(million_tiles.tile_set, "other", _DIM)
    with pytest.raises(DescriptorError, match=f"dim {_DIM} but the encoder produces dim 512"):
        check_descriptors(million_tiles.tile_set, _MODEL, 512)


def test_torch_path_matches_numpy_on_cpu_torch():
    """The CUDA code path (gather, batched scoring, host ordering) run by CPU torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(15)
    desc = pooled_rows(rng, 3000, 16, pool=30)
    cpu = ScopedSearch(desc, device="cpu")
    sim = ScopedSearch(desc, device="cpu")
    sim._torch, sim.device = torch, "cpu"
    sim._upload()
    assert sim._gpu_desc.dtype == torch.float16
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    lists = [sim._check_ids(rng.choice(3000, int(rng.integers(0, 500)), replace=False)) for _ in range(5)]
    got = sim._search_cuda(ix._normalise_queries(queries, 16, batch=True), lists, 12)
    for q, ids, g in zip(queries, lists, got):
        want = cpu.search(q, ids, 12)
        assert g.ids.tolist() == want.ids.tolist()
        np.testing.assert_allclose(g.scores, want.scores, atol=1e-6)


def test_bench_scope_runs_and_writes_its_json(tmp_path):
    """Smoke run of benchmarks/bench_scope.py on a tiny set: it must keep working."""
    import json

    out = tmp_path / "scope.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scope", "--sizes", "3k", "--dim", "16", "--queries", "20",
         "--faiss-queries", "2", "--warmup", "2", "--workdir", str(tmp_path / "sets"), "--json", str(out)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    (result,) = summary["results"]
    assert result["tiles"] == 3000 and result["scoped"]["n"] == 20 and result["faiss_flat"]["n"] == 2
    # pi (200 m)^2 / (36.48 m)^2 = 94.4 tiles in a full scope; fewer near the set's edges
    assert 60 <= result["candidates_mean"] <= 95
    assert summary["machine"]["cpu_cores"] >= 1 and "scoped p50" in done.stdout
