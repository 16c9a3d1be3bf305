"""How orthophotos are cut into tiles (TilingConfig), VIGOR's tile side, and the tile-set error."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossview_ros.config import check_known_keys

RESAMPLING_NAMES = ("nearest", "bilinear", "cubic", "average", "lanczos")
IMAGE_FORMATS = ("jpg", "png")


# VIGOR's aerial image side: 640 px at 0.114 m. The default tile side everywhere (sim, training,
# tiles); a model records the side it was trained on in model.json, and a tile set must match it.
VIGOR_TILE_SIZE_M = 72.96


def min_inside_for(matching: str) -> float:
    """TilingConfig.min_inside for a model family: bev models match only a tile's central half, so
    edge tiles padded beyond it serve them; descriptor models encode the whole tile, padding included."""
    return 0.5 if matching == "bev" else 1.0


class TileSetError(RuntimeError):
    """A tile set or its inputs are unusable; the message says what is wrong and how to fix it."""


@dataclass
class TilingConfig:
    """How orthophotos are cut into tiles; defaults reproduce VIGOR's aerial images."""

    tile_size_m: float = VIGOR_TILE_SIZE_M  # side L in metres
    tile_px: int = 640  # side in pixels; ground sampling distance = tile_size_m / tile_px
    overlap: float = 0.5  # fraction shared by neighbours; VIGOR 0.5: every point in four tiles
    image_format: str = "jpg"  # "jpg" (uint8 RGB) or "png" (lossless, keeps uint16)
    jpeg_quality: int = 95  # 1..100, only used for "jpg"
    resampling: str = "bilinear"  # nearest | bilinear | cubic | average | lanczos (GDAL names)
    # Side of the centred square, as a share of the tile side, that must lie inside the imagery: 1 = the
    # whole tile; 0.5 = the central half a bev model stores (edge tiles then pad the rest black, and a walk
    # near the edge of the imagery keeps its coverage); descriptor models see the padding: keep 1 for them.
    min_inside: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise TileSetError naming the first bad value."""
        L = self.tile_size_m
        if isinstance(L, bool) or not isinstance(L, (int, float)) or not math.isfinite(L) or L <= 0:
            raise TileSetError(f"tile_size_m must be a finite number > 0 (metres), got {L!r}")
        px = self.tile_px
        if isinstance(px, bool) or not isinstance(px, (int, np.integer)) or not 8 <= px <= 16384:
            raise TileSetError(f"tile_px must be an int in 8..16384, got {px!r}")
        ov = self.overlap
        if isinstance(ov, bool) or not isinstance(ov, (int, float)) or not 0.0 <= ov < 1.0:
            raise TileSetError(f"overlap must be in [0, 1) (0.5 = VIGOR), got {ov!r}")
        if self.image_format not in IMAGE_FORMATS:
            raise TileSetError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        q = self.jpeg_quality
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100:
            raise TileSetError(f"jpeg_quality must be an int in 1..100, got {q!r}")
        m = self.min_inside
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < m <= 1.0:
            raise TileSetError(f"min_inside must be in (0, 1] (1 = whole tiles, 0.5 = the central half), got {m!r}")
        if self.resampling not in RESAMPLING_NAMES:
            raise TileSetError(f"resampling must be one of {RESAMPLING_NAMES}, got {self.resampling!r}")

    @property
    def gsd_m(self) -> float:
        """Ground sampling distance of the tiles, metres per pixel."""
        return float(self.tile_size_m) / int(self.tile_px)

    @property
    def stride_m(self) -> float:
        """Distance between neighbouring tile centres."""
        return float(self.tile_size_m) * (1.0 - float(self.overlap))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile_size_m": float(self.tile_size_m), "tile_px": int(self.tile_px),
            "overlap": float(self.overlap), "image_format": self.image_format,
            "jpeg_quality": int(self.jpeg_quality), "resampling": self.resampling,
            "min_inside": float(self.min_inside),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TilingConfig:
        """Strict: unknown keys raise, so a typo never silently falls back to a default."""
        check_known_keys(cls, values, error=TileSetError)
        return cls(**values)

