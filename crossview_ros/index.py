"""Descriptor search: exact top-k cosine inside a GPS scope, and FAISS over all tiles.

The localizer only ever compares a panorama with the ~100 tiles that the noisy fix allows,
so the hot path is an exact search over a short list of rows gathered from the memory-mapped
float16 descriptors (``ScopedSearch``). ``GlobalIndex`` is the fallback when there is no
usable fix: FAISS over every tile. Both return the same order: cosine descending, ties by
tile id ascending, so results are reproducible across runs and machines.

torch is imported lazily and only for the optional CUDA path; faiss only by ``GlobalIndex``.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only; no cycle (tiles never imports index), and index needs no pyarrow
    from crossview_ros.tiles import TileSet

logger = logging.getLogger(__name__)

# Device nodes of the NVIDIA kernel driver; without one, "auto" never imports torch.
_NVIDIA_DEVICE_GLOB = "/dev/nvidia*"
# Above this many candidates, a partial sort picks the top k before the exact ordering.
_PARTITION_MIN_CANDIDATES = 256
# Rows uploaded to the GPU (or added to FAISS) per step, to bound host memory.
_CHUNK_ROWS = 65536
# FAISS and our re-scoring sum in different orders; scores within this of the k-th may
# hide rows that belong in the top k, so the FAISS short list is widened until it is clear.
_RESCORE_TOL = 1e-4

_SIGN_BIT = np.int32(-(2**31))
_F16_NONFINITE_BITS = np.int32(0x7C00 << 13)  # half exponent all ones, shifted to float32 place
_F16_RESCALE = np.float32(2.0**112)  # 2^(127 - 15): float32 minus float16 exponent bias


class DescriptorError(ValueError):
    """Descriptors that cannot be searched: wrong model, size, count or values; says how to fix."""


@dataclass(frozen=True)
class SearchResult:
    """Top-k tiles of one query: cosine descending, ties by tile id ascending."""

    ids: np.ndarray  # (k,) int64 tile ids
    scores: np.ndarray  # (k,) float32 cosine similarity

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def check_descriptors(tile_set: TileSet, model_hash: str, dim: int) -> None:
    """Refuse a tile set whose descriptors another model (or size) produced.

    Cosine between descriptors of different models is meaningless and would silently pick
    wrong tiles, so every mismatch is an error that names both sides.
    """
    if not isinstance(model_hash, str) or not model_hash:
        raise ValueError(f"model_hash must be a non-empty string, got {model_hash!r}")
    dim = _check_positive_int(dim, "dim")
    where = f"tile set {getattr(tile_set, 'path', '?')}"
    desc = tile_set.descriptors
    if desc is None:
        raise DescriptorError(
            f"{where} has no descriptors; encode the tile set with this model "
            f"(model hash {model_hash!r}, dim {dim}) before searching it"
        )
    problems = []
    if tile_set.model_hash != model_hash:
        problems.append(
            f"its descriptors come from model {tile_set.model_hash!r} but the encoder is "
            f"model {model_hash!r}"
        )
    if desc.ndim != 2 or desc.shape[1] != dim:
        have = desc.shape[1] if desc.ndim == 2 else f"shape {desc.shape}"
        problems.append(f"its descriptors have dim {have} but the encoder produces dim {dim}")
    if desc.shape[0] != len(tile_set):
        problems.append(f"it holds {desc.shape[0]} descriptor rows for {len(tile_set)} tiles")
    if problems:
        raise DescriptorError(
            f"{where}: " + "; ".join(problems) + "; re-encode the tile set with this model"
        )


class ScopedSearch:
    """Exact top-k cosine search restricted to candidate tile ids (the GPS scope).

    Rows are gathered from the (memory-mapped) descriptors per query, so opening costs
    nothing and only the pages of tiles in scope are ever read on the CPU path.
    """

    def __init__(self, descriptors: np.ndarray, device: str = "auto") -> None:
        """descriptors: (N, D) float16 or float32, row = tile id (np.memmap welcome).

        device: "cpu" (numpy), "cuda" / "cuda:I" (torch, descriptors resident on the GPU in
        float16), or "auto": CUDA only if an NVIDIA device node exists and torch imports
        with CUDA, else CPU.
        """
        arr = np.asarray(descriptors)  # a memmap stays a mapping; nothing is read here
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise DescriptorError(f"descriptors must be a (N, D) array with D >= 1, got shape {arr.shape}")
        if arr.dtype.kind != "f":
            raise DescriptorError(f"descriptors must be floating point (float16 or float32), got {arr.dtype}")
        self._desc = arr
        self._torch: Any = None
        self._gpu_desc: Any = None
        self.device, reason = self._pick_device(device)
        if self.device != "cpu":
            self._upload()
        logger.info("ScopedSearch over %d x %d descriptors on %s: %s", *arr.shape, self.device, reason)

    @property
    def count(self) -> int:
        """Number of descriptor rows (tiles)."""
        return int(self._desc.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor size D."""
        return int(self._desc.shape[1])

    def search(self, query: np.ndarray, candidate_ids: np.ndarray, k: int) -> SearchResult:
        """Top-k of candidate_ids by cosine with query (D,). Duplicate ids count once."""
        q = _normalise_queries(query, self.dim, batch=False)
        k = _check_positive_int(k, "k")
        ids = self._check_ids(candidate_ids)
        if self.device != "cpu":
            return self._search_cuda(q, [ids], k)[0]
        return self._search_cpu(q[0], ids, k)

    def search_batch(
        self, queries: np.ndarray, candidate_ids: np.ndarray | Sequence[np.ndarray], k: int
    ) -> list[SearchResult]:
        """Top-k for each of queries (B, D).

        candidate_ids: one 1-D array shared by all queries, or B arrays (a sequence or a
        (B, M) array), one per query. Results equal B calls of ``search``.
        """
        qs = _normalise_queries(queries, self.dim, batch=True)
        k = _check_positive_int(k, "k")
        shared = (
            isinstance(candidate_ids, np.ndarray) and candidate_ids.ndim == 1 and candidate_ids.dtype != object
        )
        if shared:
            id_lists = [self._check_ids(candidate_ids)] * len(qs)
        else:
            if len(candidate_ids) != len(qs):
                raise ValueError(
                    f"got {len(qs)} queries but {len(candidate_ids)} candidate id lists; "
                    "pass one list per query or a single 1-D array shared by all"
                )
            id_lists = [self._check_ids(ids) for ids in candidate_ids]
        if self.device != "cpu":
            return self._search_cuda(qs, id_lists, k)
        if shared and id_lists and id_lists[0].size:
            rows, norms = self._gather_cpu(id_lists[0])
            return [_top_k(id_lists[0], _cosine(rows, norms, q), k) for q in qs]
        return [self._search_cpu(q, ids, k) for q, ids in zip(qs, id_lists)]

    def _search_cpu(self, q: np.ndarray, ids: np.ndarray, k: int) -> SearchResult:
        if ids.size == 0:
            return _empty_result()
        rows, norms = self._gather_cpu(ids)
        return _top_k(ids, _cosine(rows, norms, q), k)

    def _gather_cpu(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows as float32 and their L2 norms; refuses non-finite rows."""
        raw = np.take(self._desc, ids, axis=0)
        if raw.dtype == np.float16:
            rows, finite = _f16_to_f32(raw)
        else:
            rows = raw.astype(np.float32, copy=False)
            finite = bool(np.isfinite(rows).all())
        if not finite:
            bad = ids[~np.isfinite(raw.astype(np.float32)).all(axis=1)]
            raise DescriptorError(
                f"descriptor rows of tiles {bad[:10].tolist()} are NaN or infinite; the "
                "descriptor file is corrupt: re-encode the tile set with this model"
            )
        # einsum (no BLAS) sums every row in the same order, so identical rows score
        # bit-identically wherever they sit in the gather and exact ties stay ties.
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        return rows, norms

    def _check_ids(self, candidate_ids: Any) -> np.ndarray:
        ids = np.asarray(candidate_ids)
        if ids.size == 0:
            return np.empty(0, np.int64)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"candidate ids must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.unique(ids)  # the scope is a set: sort and drop repeats
        if ids[0] < 0 or ids[-1] >= self.count:
            bad = ids[(ids < 0) | (ids >= self.count)]
            raise ValueError(
                f"candidate ids {bad[:10].tolist()} are outside 0..{self.count - 1}; "
                "they must be tile ids of the tile set these descriptors belong to"
            )
        return ids

    def _pick_device(self, device: str) -> tuple[str, str]:
        if not isinstance(device, str):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
        if device == "cpu":
            return "cpu", "requested"
        if device == "auto":
            if not _nvidia_device_present():
                return "cpu", f"no NVIDIA device ({_NVIDIA_DEVICE_GLOB} absent); torch not imported"
            try:
                import torch
            except Exception as exc:  # any import failure means no usable CUDA torch
                return "cpu", f"NVIDIA device present but torch does not import ({exc})"
            if not torch.cuda.is_available():
                return "cpu", "NVIDIA device present but torch has no CUDA support"
            self._torch = torch
            return "cuda:0", "NVIDIA device and CUDA torch found"
        if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
            try:
                import torch
            except Exception as exc:
                raise RuntimeError(
                    f"device {device!r} needs PyTorch with CUDA, which does not import ({exc}); "
                    "install torch with CUDA or use device='cpu'"
                ) from exc
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu' or 'auto'"
                )
            self._torch = torch
            return ("cuda:0" if device == "cuda" else device), "requested"
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")

    def _upload(self) -> None:
        """Copy the descriptors to the GPU as float16, in chunks (never whole in host RAM)."""
        torch = self._torch
        n, d = self._desc.shape
        gpu = torch.empty((n, d), dtype=torch.float16, device=self.device)
        for start in range(0, n, _CHUNK_ROWS):
            chunk = np.array(self._desc[start : start + _CHUNK_ROWS], dtype=np.float16)
            gpu[start : start + len(chunk)].copy_(torch.from_numpy(chunk))
        if n and not bool(torch.isfinite(gpu).all()):
            bad = torch.nonzero(~torch.isfinite(gpu).all(dim=1)).flatten()[:10].tolist()
            raise DescriptorError(
                f"descriptor rows of tiles {bad} are NaN or infinite (or overflow float16); "
                "re-encode the tile set with this model"
            )
        self._gpu_desc = gpu

    def _search_cuda(self, qs: np.ndarray, id_lists: list[np.ndarray], k: int) -> list[SearchResult]:
        """One gather and one kernel for the whole batch; ordering happens on the host."""
        torch = self._torch
        sizes = [ids.size for ids in id_lists]
        total = sum(sizes)
        if total == 0:
            return [_empty_result() for _ in id_lists]
        all_ids = np.concatenate(id_lists)
        owner = np.repeat(np.arange(len(id_lists)), sizes)
        ids_t = torch.from_numpy(all_ids).to(self.device)
        owner_t = torch.from_numpy(owner).to(self.device)
        q_t = torch.from_numpy(np.ascontiguousarray(qs, dtype=np.float32)).to(self.device)
        rows = self._gpu_desc.index_select(0, ids_t).float()
        dots = (rows * q_t.index_select(0, owner_t)).sum(dim=1)
        norms = (rows * rows).sum(dim=1).sqrt()
        scores_t = torch.where(norms > 0, dots / norms.clamp_min(1e-30), torch.zeros_like(dots))
        scores = scores_t.cpu().numpy()
        out = []
        start = 0
        for ids, size in zip(id_lists, sizes):
            out.append(_top_k(ids, scores[start : start + size], k) if size else _empty_result())
            start += size
        return out


class GlobalIndex:
    """FAISS inner-product index over all tiles, for searching without a usable fix.

    Rows are L2-normalised float32, so inner product is cosine. "flat" is exact
    (IndexFlatIP); "hnsw" (IndexHNSWFlat) is approximate and much faster on large sets.
    The FAISS GPU build is used for "flat" when it is installed and a GPU is present.
    """

    def __init__(self, index: Any, kind: str) -> None:
        """Wrap a FAISS index; use ``build`` or ``load`` instead of calling this."""
        self._index = index
        self.kind = kind
        # FAISS GPU returns at most 2048 neighbours per query; ties wider than that stay unsettled.
        self._max_fetch = 2048 if "Gpu" in type(index).__name__ else None

    @property
    def dim(self) -> int:
        """Descriptor size D."""
        return int(self._index.d)

    @property
    def count(self) -> int:
        """Number of indexed tiles."""
        return int(self._index.ntotal)

    @classmethod
    def build(
        cls,
        descriptors: np.ndarray,
        *,
        kind: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        use_gpu: bool | None = None,
    ) -> GlobalIndex:
        """Index (N, D) descriptors (row = tile id), added in chunks from a memmap.

        hnsw_m / ef_construction / ef_search: HNSW graph degree and beam widths (kind
        "hnsw" only). use_gpu: None picks the FAISS GPU build when available ("flat" only).
        """
        faiss = _import_faiss()
        arr = np.asarray(descriptors)
        if arr.ndim != 2 or arr.shape[1] < 1 or arr.dtype.kind != "f":
            raise DescriptorError(
                f"descriptors must be a floating (N, D) array, got {arr.dtype} with shape {arr.shape}"
            )
        d = int(arr.shape[1])
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, _check_positive_int(hnsw_m, "hnsw_m"), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = _check_positive_int(ef_construction, "ef_construction")
            index.hnsw.efSearch = _check_positive_int(ef_search, "ef_search")
        else:
            raise ValueError(f"kind must be 'flat' or 'hnsw', got {kind!r}")
        index = _maybe_to_gpu(faiss, index, kind, use_gpu)
        for start in range(0, arr.shape[0], _CHUNK_ROWS):
            chunk = np.asarray(arr[start : start + _CHUNK_ROWS], dtype=np.float32)
            if not np.isfinite(chunk).all():
                bad = start + np.flatnonzero(~np.isfinite(chunk).all(axis=1))
                raise DescriptorError(
                    f"descriptor rows of tiles {bad[:10].tolist()} are NaN or infinite; "
                    "re-encode the tile set with this model"
                )
            index.add(_normalise_rows(chunk))
        return cls(index, kind)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically (temporary name, then rename); returns the path."""
        faiss = _import_faiss()
        path = Path(path)
        index = self._index
        if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
            index = faiss.index_gpu_to_cpu(index)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            faiss.write_index(index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, use_gpu: bool | None = None) -> GlobalIndex:
        """Read an index written by ``save``; refuses files that are not one."""
        faiss = _import_faiss()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no FAISS index at {path}; build one with GlobalIndex.build(descriptors).save(path)"
            )
        try:
            index = faiss.read_index(str(path))  # already its concrete type
        except RuntimeError as exc:
            raise DescriptorError(
                f"cannot read FAISS index {path} ({exc}); it is corrupt or not a FAISS file: "
                "delete it and rebuild it with GlobalIndex.build(descriptors).save(path)"
            ) from exc
        if isinstance(index, faiss.IndexHNSWFlat):
            kind = "hnsw"
        elif isinstance(index, faiss.IndexFlat):
            kind = "flat"
        else:
            raise DescriptorError(
                f"{path} holds a FAISS {type(index).__name__}, not a flat or HNSW index; "
                "rebuild it with GlobalIndex.build(descriptors).save(path)"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise DescriptorError(
                f"{path} is not an inner-product index (metric {index.metric_type}); "
                "rebuild it with GlobalIndex.build(descriptors).save(path)"
            )
        return cls(_maybe_to_gpu(faiss, index, kind, use_gpu), kind)

    def search(self, queries: np.ndarray, k: int) -> list[SearchResult]:
        """Top-k tiles for each query, (D,) or (B, D); cosine descending, ties by id.

        FAISS sums in an order that can break exact ties by a rounding step, so its short
        list is re-scored here from the stored rows and widened until no row outside it
        can still enter the top k.
        """
        qs = _normalise_queries(queries, self.dim, batch=np.ndim(queries) == 2)
        k = _check_positive_int(k, "k")
        if self.count == 0:
            return [_empty_result() for _ in qs]
        limit = min(self.count, self._max_fetch or self.count)
        fetch = min(limit, k + max(k, 16))
        scores, ids = self._index.search(qs, fetch)
        out = []
        for i, q in enumerate(qs):
            s_i, ids_i, fetch_i = scores[i], ids[i], fetch
            while True:
                result, done = self._rescore(q, s_i, ids_i, k, fetch_i >= limit)
                if done:
                    break
                fetch_i = min(limit, 2 * fetch_i)
                s_row, ids_row = self._index.search(q[None], fetch_i)
                s_i, ids_i = s_row[0], ids_row[0]
            out.append(result)
        return out

    def _rescore(
        self, q: np.ndarray, faiss_scores: np.ndarray, ids: np.ndarray, k: int, at_limit: bool
    ) -> tuple[SearchResult, bool]:
        """Exact top k of FAISS's short list, and whether it is settled (no row outside it can
        still enter, or FAISS can give no more)."""
        valid = ids >= 0
        ids = ids[valid].astype(np.int64)
        if ids.size == 0:
            return _empty_result(), True
        vecs = self._reconstruct(ids)
        result = _top_k(ids, np.einsum("ij,j->i", vecs, q), k)
        exhausted = at_limit or not valid.all()
        clear = len(result) == k and faiss_scores[valid][-1] < result.scores[-1] - _RESCORE_TOL
        return result, exhausted or clear

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)
        except RuntimeError:  # some (GPU) index types only reconstruct one row at a time
            return np.stack([self._index.reconstruct(int(i)) for i in ids]).astype(np.float32)


def _nvidia_device_present() -> bool:
    return bool(glob.glob(_NVIDIA_DEVICE_GLOB))


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise RuntimeError(
            "GlobalIndex needs FAISS: install faiss-cpu (or faiss-gpu); scoped search does not"
        ) from exc
    return faiss


def _maybe_to_gpu(faiss: Any, index: Any, kind: str, use_gpu: bool | None) -> Any:
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not available:
        raise RuntimeError("use_gpu=True but the FAISS GPU build or a GPU is missing; use use_gpu=None")
    if kind != "flat" or not available or use_gpu is False:
        return index
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu_index.crossview_resources = resources  # keep the resources alive with the index
    logger.info("GlobalIndex on the FAISS GPU build")
    return gpu_index


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _normalise_queries(queries: Any, dim: int, *, batch: bool) -> np.ndarray:
    """Queries as (B, D) float32 unit rows; refuses wrong sizes, NaN/inf and zero vectors."""
    q = np.asarray(queries)
    want = 2 if batch else 1
    if q.ndim != want or q.dtype.kind not in "fiu":
        shape = "(B, D)" if batch else "(D,)"
        raise ValueError(f"query must be a numeric {shape} array, got {q.dtype} with shape {q.shape}")
    q = np.atleast_2d(q).astype(np.float64)  # float64 so huge components cannot overflow the norm
    if q.shape[1] != dim:
        raise DescriptorError(
            f"query descriptors have dim {q.shape[1]} but the tile descriptors have dim {dim}; "
            "the encoder and the tile set come from different models: re-encode the tile set "
            "with this model"
        )
    if not np.isfinite(q).all():
        raise ValueError("query descriptor contains NaN or infinite values; the encoder output is invalid")
    norms = np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]
    if not (norms > 0).all():
        raise ValueError("query descriptor is all zeros; cosine similarity is undefined for it")
    return (q / norms).astype(np.float32)


def _normalise_rows(rows: np.ndarray) -> np.ndarray:
    """L2-normalise float32 rows; all-zero rows stay zero (they score 0 against anything)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def _cosine(rows: np.ndarray, norms: np.ndarray, q_unit: np.ndarray) -> np.ndarray:
    """Exact cosine of float32 rows with a unit query, even for rows that are not unit.

    All-zero rows score 0 (cosine is undefined for them).
    """
    dots = np.einsum("ij,j->i", rows, q_unit)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def _f16_to_f32(h16: np.ndarray) -> tuple[np.ndarray, bool]:
    """float16 -> float32, bit-exact for every finite half (subnormals included).

    numpy's own half cast is a scalar loop (~1.7 ns per element here, 90 us for 100 x 512);
    this moves the bits into float32 position and rescales by 2^112 in a few vector passes.
    Assumes the CPU does not flush denormals (DAZ off, the default); if a library turned DAZ
    on, half subnormals (|x| < 6.1e-5) read as 0, a cosine error below 1e-4.
    Returns (rows, all_finite); inf/NaN halves come out finite but wrong and flag False.
    """
    h = h16.view(np.int16).astype(np.int32)  # sign-extended: bit 31 is the half's sign
    bits = h & 0x7FFF
    bits <<= 13
    finite = bool(bits.max(initial=0) < _F16_NONFINITE_BITS)
    h &= _SIGN_BIT
    bits |= h
    rows = bits.view(np.float32)
    rows *= _F16_RESCALE
    return rows, finite


def _top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> SearchResult:
    """The k best (score descending, id ascending) of ids with their float32 scores."""
    if ids.size > _PARTITION_MIN_CANDIDATES and k < ids.size:
        kth = np.partition(scores, ids.size - k)[ids.size - k]
        keep = np.flatnonzero(scores >= kth)  # every row tied with the k-th stays in the race
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return SearchResult(ids=ids[order], scores=scores[order].astype(np.float32, copy=False))


def _empty_result() -> SearchResult:
    return SearchResult(ids=np.empty(0, np.int64), scores=np.empty(0, np.float32))
