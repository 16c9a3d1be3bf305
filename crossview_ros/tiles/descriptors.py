"""Tile descriptors on disk: descriptors.f16.npy (L2-normalised float16 rows, memory-mapped)
stamped in meta.json with the model and a fingerprint, written atomically and checked at open."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from crossview_ros.tiles.config import TileSetError
from crossview_ros.tiles.layout import DESCRIPTORS_FILE, META_FILE, fsync_dir

log = logging.getLogger(__name__)

_MIB = 1 << 20


def replace_file(src: Path, dst: Path) -> None:
    """os.replace, kept as one function so tests can simulate a crash between two renames."""
    os.replace(src, dst)


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return shape, fortran, dtype, f.tell()


def descriptor_fingerprint(path: str | Path) -> str:
    """Cheap fingerprint of a descriptors file: sha256 of its size, .npy header, first and last MiB.

    It catches a file swapped without meta.json (a crash between the two renames of
    write_descriptors, another model's file copied in), not bit rot in the middle of big files.
    """
    path = Path(path)
    _, _, _, offset = _npy_header(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(offset))
        h.update(f.read(_MIB))
        tail = max(offset + _MIB, size - _MIB)
        if tail < size:
            f.seek(tail)
            h.update(f.read())
    return "sha256-headtail:" + h.hexdigest()


def open_descriptors(path: Path, meta: dict[str, Any], mmap: bool) -> np.ndarray | None:
    """The set's descriptors (read-only), or None when meta.json lists none; TileSetError when
    the file does not match meta.json (missing, wrong shape or dtype, other fingerprint)."""
    desc = meta.get("descriptors")
    file = path / DESCRIPTORS_FILE
    if desc is None:
        if file.exists():
            log.warning("%s exists but meta.json lists no descriptors (interrupted "
                        "write_descriptors?); ignoring it", file)
        return None
    fix = "recompute the descriptors (TileSet.write_descriptors) for this set"
    if not file.is_file():
        raise TileSetError(f"{file} is missing but meta.json lists descriptors; {fix}")
    count, dim = int(meta["count"]), int(desc["dim"])
    if desc.get("dtype") != "float16" or desc.get("count") != count:
        raise TileSetError(f"{path / META_FILE}: descriptors must be float16 with count {count}; {fix}")
    try:
        shape, fortran, dtype, offset = _npy_header(file)
    except (OSError, ValueError) as exc:
        raise TileSetError(f"{file} is not a readable .npy file ({exc}); {fix}") from exc
    if shape != (count, dim) or dtype != np.dtype("<f2") or fortran:
        raise TileSetError(
            f"{file} holds {dtype} {shape}{' (Fortran order)' if fortran else ''}, meta.json says "
            f"float16 ({count}, {dim}); {fix}"
        )
    if file.stat().st_size != offset + count * dim * 2:
        raise TileSetError(f"{file} is truncated or padded ({file.stat().st_size} bytes); {fix}")
    if descriptor_fingerprint(file) != desc["fingerprint"]:
        raise TileSetError(
            f"{file} does not match the fingerprint in meta.json (interrupted write_descriptors, "
            f"or a file from another run); {fix}"
        )
    if mmap:
        return np.load(file, mmap_mode="r")
    arr = np.load(file)
    arr.flags.writeable = False
    return arr


def _check_descriptor_array(arr: Any, model_hash: str, tiles: int) -> tuple[int, int]:
    """(count, dim) of a descriptor array fit for a set of `tiles` tiles; ValueError otherwise."""
    if not isinstance(model_hash, str) or not model_hash.strip():
        raise ValueError(f"model_hash must be a non-empty string, got {model_hash!r}")
    if not hasattr(arr, "shape") or len(arr.shape) != 2:
        raise ValueError(f"descriptors must be a 2-D array (N, D), got shape {getattr(arr, 'shape', None)}")
    count, dim = int(arr.shape[0]), int(arr.shape[1])
    if count != tiles or dim < 1:
        raise ValueError(
            f"descriptors have shape {arr.shape}; this set needs ({tiles}, D>=1), one row per tile id")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"descriptors must be numeric, got dtype {arr.dtype}")
    return count, dim


def _write_normalised(tmp: Path, arr: Any, count: int, dim: int) -> None:
    """Write the rows L2-normalised as a float16 .npy in 32 MiB blocks, fsynced; refuses
    non-finite and all-zero rows."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, dim))
    chunk = max(1, (32 * _MIB) // (8 * dim))
    for start in range(0, count, chunk):
        block = np.asarray(arr[start:start + chunk], dtype=np.float64)
        if not np.all(np.isfinite(block)):
            bad = start + int(np.argmax(~np.all(np.isfinite(block), axis=1)))
            raise ValueError(f"descriptor row {bad} holds NaN or infinity")
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        if np.any(norm == 0.0):
            bad = start + int(np.argmin(norm))
            raise ValueError(f"descriptor row {bad} is all zeros (cannot be normalised)")
        out[start:start + chunk] = block / norm
    out.flush()
    del out
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def write_descriptor_file(path: Path, meta: dict[str, Any], descriptors: Any, model_hash: str,
                          tiles: int) -> dict[str, Any]:
    """Store (N, D) descriptors of the set at `path` (N = tiles) and return its new meta.json.

    Atomic: the .npy and the new meta.json are written to temporary names and renamed, the
    .npy first; a crash between the renames is caught at open by the fingerprint.
    Refuses (ValueError) a wrong row count, non-finite values and all-zero rows.
    """
    count, dim = _check_descriptor_array(descriptors, model_hash, tiles)
    tmp = path / f".{DESCRIPTORS_FILE}.tmp-{os.getpid()}"
    meta_tmp = path / f".{META_FILE}.tmp-{os.getpid()}"
    try:
        _write_normalised(tmp, descriptors, count, dim)
        meta = dict(meta)
        meta["descriptors"] = {
            "model_hash": model_hash, "dim": dim, "count": count, "dtype": "float16",
            "fingerprint": descriptor_fingerprint(tmp),
        }
        with open(meta_tmp, "wb") as f:
            f.write((json.dumps(meta, indent=2) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        replace_file(tmp, path / DESCRIPTORS_FILE)
        replace_file(meta_tmp, path / META_FILE)
        fsync_dir(path)
    finally:
        for leftover in (tmp, meta_tmp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return meta
