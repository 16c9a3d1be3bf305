"""Field-of-view sampling: training views that see only what a real camera rig would see.

One model serves a panorama, a forward camera and a surround rig (crossview_ros.camera): at run
time the ground cells no camera sees are zeroed before the correlation. Training shows the
model the same: a share of each batch's views is cut to a random rig's visibility, the view's
pixels black outside it (as the composed panorama is) and its feature cells weighted by the
share they see (crossview_ros.matchers.bev_view: the runtime's own nearest_ground_pixels and cell_share).

The rigs drawn: one pinhole camera (50-130° wide, pitched 0-30° down, any yaw), two to four
pinholes spread around the robot, or one fisheye (150-210°); optical centres 1-2.5 m high.
The masks are made once (a bank) and drawn per view: the visibility depends on geometry only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from crossview_ros.camera import Camera, CameraModel, CameraMount, CameraRig
from crossview_ros.matchers.bev_view import cell_share, nearest_ground_pixels
from crossview_training.bev.model import STRIDE, BevConfig

MASK_PANO_HW = (160, 320)  # visibility is geometry: a coarse panorama grid is enough to draw it


def random_rig(rng: np.random.Generator) -> list[Camera]:
    """One rig of the kinds the module docstring names."""
    height = float(rng.uniform(1.0, 2.5))
    kind = rng.choice(["pinhole", "rig", "fisheye"], p=[0.5, 0.3, 0.2])
    yaw0 = float(rng.uniform(0.0, 360.0))
    if kind == "fisheye":
        model = CameraModel.fisheye(400, 400, float(rng.uniform(150.0, 210.0)))
        return [Camera("fisheye", model, CameraMount(height_m=height, yaw_deg=yaw0,
                                                     pitch_deg=float(rng.uniform(0.0, 40.0))))]
    count = 1 if kind == "pinhole" else int(rng.integers(2, 5))
    cams = []
    for i in range(count):
        model = CameraModel.pinhole(320, int(rng.choice([180, 240, 320])), float(rng.uniform(50.0, 130.0)))
        cams.append(Camera(f"cam{i}", model, CameraMount(height_m=height, yaw_deg=yaw0 + 360.0 * i / count,
                                                         pitch_deg=float(rng.uniform(0.0, 30.0)))))
    return cams


@dataclass
class MaskBank:
    """Per drawn rig: the view's pixel mask (N, S, S) and its cells' seen share (N, K, K)."""

    pixels: np.ndarray
    cells: np.ndarray

    def draw(self, rng: np.random.Generator, count: int) -> tuple[Tensor, Tensor]:
        """(count, 1, S, S) pixel masks and (count, 1, K, K) cell weights of random rigs."""
        pick = rng.integers(len(self.pixels), size=count)
        return (torch.from_numpy(self.pixels[pick][:, None]).float(), torch.from_numpy(self.cells[pick][:, None]))


def mask_bank(config: BevConfig, count: int, seed: int, progress: bool = False) -> MaskBank:
    """`count` random rigs' masks for the model's ground-plane view (same geometry as the runtime)."""
    rng = np.random.default_rng([seed, 0xF0F])
    k = config.kernel_cells
    side = k * STRIDE
    nearest = nearest_ground_pixels(MASK_PANO_HW, res_m=config.res_m, side=side, height_m=config.camera_height_m)
    pixels = np.empty((count, side, side), np.uint8)
    cells = np.empty((count, k, k), np.float32)
    for i in tqdm(range(count), desc="camera masks", unit="rig", disable=not progress):
        vis = CameraRig(random_rig(rng), MASK_PANO_HW, config.camera_height_m).visibility
        pixels[i] = vis[nearest]
        cells[i] = cell_share(pixels[i], k, STRIDE)
    return MaskBank(pixels, cells)
