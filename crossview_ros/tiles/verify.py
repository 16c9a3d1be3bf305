"""Checking a tile set's files: cheaply when it opens, fully on demand (`crossview-tiles verify`).

Opening a set checks what costs one directory listing: every tile has its image file. The full
check decodes every image (size and channels as meta.json says) and reads every descriptor row
(finite, unit length as written), which is what a build or an encode runs when it finishes and
what to run after copying a set or when a disk is suspect.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from crossview_ros.tiles.config import TileSetError
from crossview_ros.tiles.layout import IMAGES_DIR, REBUILD_HINT, image_name

if TYPE_CHECKING:
    from crossview_ros.tiles.tile_set import TileSet

UNIT_NORM_TOLERANCE = 1e-2  # float16 rows written unit-length read back within about 1e-3
DESCRIPTOR_BLOCK_ROWS = 65536  # rows read at a time by the full check
MAX_LISTED = 10  # problems named in a message; the count says how many there are


def check_images_present(path: Path, image_format: str, count: int) -> None:
    """TileSetError when a tile's image file is missing: one listing of images/, no decoding."""
    images = path / IMAGES_DIR
    if not images.is_dir():
        raise TileSetError(f"{images} is missing; {REBUILD_HINT}")
    present = set(os.listdir(images))
    missing = [i for i in range(count) if image_name(i, image_format) not in present]
    if missing:
        raise TileSetError(f"{len(missing)} of {count} tile images are missing in {images} (tile ids "
                           f"{_listed(missing)}); {REBUILD_HINT}")


@dataclass
class VerifyReport:
    """What the full check found: the tiles whose image or descriptor row is bad, with why."""

    path: Path
    tiles: int
    images_checked: int = 0
    descriptor_rows_checked: int = 0
    bad_images: dict[int, str] = field(default_factory=dict)
    bad_descriptor_rows: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad_images and not self.bad_descriptor_rows

    def summary(self) -> str:
        """One line for a log or a terminal."""
        parts = [f"{self.path}: {self.tiles} tiles, {self.images_checked} images and "
                 f"{self.descriptor_rows_checked} descriptor rows checked"]
        if self.bad_images:
            parts.append(f"{len(self.bad_images)} bad images ({_first(self.bad_images)})")
        if self.bad_descriptor_rows:
            parts.append(f"{len(self.bad_descriptor_rows)} bad descriptor rows ({_first(self.bad_descriptor_rows)})")
        return "; ".join(parts) + ("; OK" if self.ok else f"; {REBUILD_HINT} (images) or re-encode "
                                                          "with crossview-tiles encode --overwrite (descriptors)")

    def raise_if_bad(self) -> None:
        if not self.ok:
            raise TileSetError(self.summary())


def verify_tile_set(tile_set: TileSet, *, images: bool = True, descriptors: bool = True,
                    progress: bool = False) -> VerifyReport:
    """Decode every tile image and read every descriptor row; a report, never an exception for bad tiles."""
    report = VerifyReport(tile_set.path, len(tile_set))
    if images and tile_set.image_format is not None:
        for i in _progress(range(len(tile_set)), progress, "verify images"):
            try:
                tile_set.image(i)
            except TileSetError as exc:
                report.bad_images[i] = str(exc).split(";")[0]
            report.images_checked += 1
    if descriptors and tile_set.descriptors is not None:
        report.descriptor_rows_checked = _check_rows(tile_set.descriptors, report.bad_descriptor_rows)
    return report


def _check_rows(desc: np.ndarray, bad: dict[int, str]) -> int:
    """Every row finite and of unit length (as write_descriptors stores them); returns the rows read."""
    for start in range(0, desc.shape[0], DESCRIPTOR_BLOCK_ROWS):
        block = np.asarray(desc[start:start + DESCRIPTOR_BLOCK_ROWS], dtype=np.float32)
        finite = np.all(np.isfinite(block), axis=1)
        norm = np.linalg.norm(np.where(np.isfinite(block), block, 0.0), axis=1)
        for j in np.flatnonzero(~finite):
            bad[start + int(j)] = "NaN or infinity"
        for j in np.flatnonzero(finite & (np.abs(norm - 1.0) > UNIT_NORM_TOLERANCE)):
            bad[start + int(j)] = f"norm {norm[j]:.4f}, not 1"
    return int(desc.shape[0])


def _progress(items: range, progress: bool, desc: str) -> Iterator[int]:
    return iter(tqdm(items, desc=desc, unit="tile", disable=not progress))


def _listed(ids: list[int]) -> str:
    head = ", ".join(str(i) for i in ids[:MAX_LISTED])
    return head + (f", ... ({len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else "")


def _first(problems: dict[int, str]) -> str:
    ids = sorted(problems)
    return "; ".join(f"tile {i}: {problems[i]}" for i in ids[:3]) + (" ..." if len(ids) > 3 else "")
