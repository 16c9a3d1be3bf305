"""The BEV correlation model: its config, fixed ground-plane geometry and the two CNNs.

Conventions in the package docstring (crossview_training.bev).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossview_ros.config import check_known_keys
from crossview_ros.matchers.bev_view import ground_plane_pixels
from crossview_ros.tiles import VIGOR_TILE_SIZE_M

STRIDE = 4  # input pixels per feature cell side (aerial and BEV)
# correlate: kernels up to this many cells a side go by direct convolution, larger ones by FFT.
# Forward and backward on one CPU core, the recipe's shapes: the direct way is 2.3x faster at 16 cells
# and 1.2x at 20; the FFT 1.2x faster at 24 and 1.9x at 32 (benchmarks/bench_bev_correlate.py).
DIRECT_MAX_KERNEL = 20
VIGOR_BEARING_DEG = 180.0  # forward bearing of a VIGOR panorama (north in its middle column)

@dataclass
class BevConfig:
    """Geometry and size of a BEV correlation model; stored in checkpoints and model.json."""

    pano_size: tuple = (320, 640)  # (H, W) panorama input, width = 2 x height
    tile_px: int = 160  # aerial input side, px
    tile_size_m: float = VIGOR_TILE_SIZE_M  # aerial input side, m (VIGOR's L): res_m = tile_size_m / tile_px
    kernel_cells: int = 16  # BEV side in feature cells (x STRIDE px x res_m: +-14.6 m at VIGOR's L)
    camera_height_m: float = 2.0  # camera above the ground for the ground-plane projection, m
    channels: int = 32  # width of the first CNN stages (the last doubles it)
    feature_dim: int = 16  # channels of the matched features
    mean: tuple = (0.5, 0.5, 0.5)  # input normalisation (images scaled to 0..1 first)
    std: tuple = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        self.pano_size = tuple(int(v) for v in self.pano_size)
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if self.pano_size[1] != 2 * self.pano_size[0]:
            raise ValueError(f"pano_size must be (H, 2H), got {self.pano_size}")
        if self.tile_px % (2 * STRIDE) or self.kernel_cells < 2 or self.kernel_cells % 2:
            raise ValueError("tile_px must be a multiple of 8 and kernel_cells an even number >= 2")
        if not (self.tile_size_m > 0 and self.camera_height_m > 0):
            raise ValueError("tile_size_m and camera_height_m must be > 0")

    @property
    def res_m(self) -> float:
        """Metres per aerial/BEV input pixel."""
        return self.tile_size_m / self.tile_px

    @property
    def cell_m(self) -> float:
        """Metres per feature cell."""
        return self.res_m * STRIDE

    @property
    def block_cells(self) -> int:
        """Side of a tile's central half-block in cells: its descriptor covers block_cells^2 cells."""
        return self.tile_px // STRIDE // 2

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BevConfig:
        check_known_keys(cls, values, what="BEV model config")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def conv_stack(cin: int, c: int, out: int) -> nn.Sequential:
    """Six 3x3 conv-BN-ReLU blocks (two of stride 2: STRIDE) and a 1x1 projection to `out` channels."""
    def block(i: int, o: int, s: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
    return nn.Sequential(*block(cin, c), *block(c, c, 2), *block(c, c), *block(c, 2 * c, 2), *block(2 * c, 2 * c),
                         *block(2 * c, 2 * c), nn.Conv2d(2 * c, out, 1))


def bev_sampling_grid(config: BevConfig, side: int | None = None) -> Tensor:
    """(1, S, S, 2) grid_sample coordinates into a panorama padded by one column on each side.

    BEV pixel (row, col): x right, y forward of the camera, at res_m; ground point at camera
    height h seen at azimuth atan2(x, y) clockwise from forward and depression atan(h / d).
    S is the model's BEV side (kernel_cells x STRIDE) unless given.
    """
    h_px, w_px = config.pano_size
    side = config.kernel_cells * STRIDE if side is None else int(side)
    row, col = ground_plane_pixels(config.pano_size, config.res_m, side, config.camera_height_m)
    row, col = torch.from_numpy(row), torch.from_numpy(col) + 1.0  # +1: the padded column on the left
    gx = (col + 0.5) / (w_px + 2) * 2 - 1  # align_corners=False
    gy = (row + 0.5) / h_px * 2 - 1
    return torch.stack([gx, gy], dim=-1).float()[None]


def project_ground(pano: Tensor, grid: Tensor) -> Tensor:
    """(B, 3, H, W) panoramas sampled at a bev_sampling_grid: (B, 3, S, S) ground-plane views."""
    padded = torch.cat([pano[..., -1:], pano, pano[..., :1]], dim=-1)
    return F.grid_sample(padded, grid.expand(pano.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="border", align_corners=False)


def circle_mask(cells: int) -> Tensor:
    """(1, 1, K, K) 1 inside the BEV's inscribed circle: corners are lost when it rotates."""
    c = torch.arange(cells, dtype=torch.float32) + 0.5 - cells / 2
    return (torch.hypot(c[:, None], c[None, :]) <= cells / 2).float()[None, None]


def rotation_grid(bearing_rad: Tensor, cells: int, scale: float = 1.0) -> Tensor:
    """affine_grid that turns camera-frame maps (up = forward) into north-up maps for the bearings.

    scale < 1 samples the central part of a larger input (cells / input side) while turning it.
    """
    cos, sin = torch.cos(bearing_rad) * scale, torch.sin(bearing_rad) * scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], -2)
    return F.affine_grid(theta.float(), [len(bearing_rad), 1, cells, cells], align_corners=False)


class BevModel(nn.Module):
    """Ground (panorama -> BEV features) and aerial (image -> feature map) encoders, not shared."""

    def __init__(self, config: BevConfig, name: str = "bev_small") -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.ground_cnn = conv_stack(3, config.channels, config.feature_dim)
        self.aerial_cnn = conv_stack(3, config.channels, config.feature_dim)
        self.register_buffer("bev_grid", bev_sampling_grid(config), persistent=False)
        self.register_buffer("mask", circle_mask(config.kernel_cells), persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))

    def bev_image(self, pano: Tensor) -> Tensor:
        """(B, 3, H, W) normalised panorama -> (B, 3, S, S) ground-plane view, camera frame."""
        return project_ground(pano, self.bev_grid)

    def ground_features(self, pano: Tensor) -> Tensor:
        """(B, C, K, K) unit features of the ground around the camera, camera frame, zero outside the circle."""
        return self.bev_features(self.bev_image(pano))

    def bev_features(self, bev: Tensor) -> Tensor:
        """ground_features from the ground-plane view (B, 3, S, S) itself (training precomputes views)."""
        return F.normalize(self.ground_cnn(bev), dim=1) * self.mask

    def aerial_features(self, image: Tensor) -> Tensor:
        """(B, C, h, w) unit features of north-up aerial images, one per STRIDE x STRIDE pixels."""
        return F.normalize(self.aerial_cnn(image), dim=1)

    def north_up(self, ground: Tensor, bearing_rad: Tensor) -> Tensor:
        """Rotate camera-frame features by each camera's forward bearing (clockwise from north)."""
        grid = rotation_grid(bearing_rad.to(ground.device), ground.shape[-1])
        return F.grid_sample(ground, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * self.mask

    def correlate(self, ground_north: Tensor, aerial: Tensor) -> Tensor:
        """(Q, C, K, K) x (T, C, h, w) -> (T, Q, h-K+1, w-K+1) mean cosine over the circle's cells.

        conv2d(aerial, ground_north) in float32 whatever the autocast (the runtime's match graph is
        that convolution); by FFT, the same numbers, for kernels over DIRECT_MAX_KERNEL cells, whose
        cost then hardly depends on K. Positions where the kernel fits inside the map do not wrap.
        """
        k = ground_north.shape[-1]
        if k <= DIRECT_MAX_KERNEL:
            with torch.autocast(aerial.device.type, enabled=False):
                # contiguous: a channels-last map from the CNN sends the weight gradient down a slow path
                out = F.conv2d(aerial.float().contiguous(), ground_north.float().contiguous())
            return out / self.mask.sum()
        h, w = aerial.shape[-2:]
        fa = torch.fft.rfft2(aerial, s=(h, w))
        fg = torch.fft.rfft2(ground_north, s=(h, w))
        out = torch.fft.irfft2(torch.einsum("tcij,qcij->tqij", fa, fg.conj()), s=(h, w))
        return out[..., :h - k + 1, :w - k + 1] / self.mask.sum()

    def block(self, aerial: Tensor) -> Tensor:
        """The central half-block of tile feature maps: the tile's descriptor, (B, C, b, b)."""
        b = self.config.block_cells
        o = (aerial.shape[-1] - b) // 2
        return aerial[..., o:o + b, o:o + b]
