"""Top-down correlation localizer: the panorama's ground projected to a bird's-eye view (BEV) and
matched densely against aerial features, for CPU training in minutes.

Why not a global descriptor: inside a 200 m scope the tiles that must be told apart are the
neighbours of the right one, and a 2-core CPU cannot train a retrieval network that separates
them in 30 minutes (docs/results.md: 2.7 % top-1). Matching *where* things are on the ground is
far easier to learn: the panorama's lower half is projected onto the ground plane (camera height
known), a small CNN turns it into a K x K grid of features around the camera, another CNN turns
aerial images into features at the same metres per cell, and their correlation scores every
candidate camera position at once (OrienterNet-style, with the geometry fixed instead of learned).

Conventions
- Panorama: equirectangular, column 0 = camera forward, azimuth increasing clockwise seen from
  above. VIGOR panoramas have north in the middle column: their forward bearing is 180 deg.
- BEV features come out in the camera frame (up = forward) and are rotated to north-up by the
  camera's bearing (clockwise from north) before matching; at run time the bearing is searched.
- Aerial: north-up, `tile_px` square for `tile_size_m`; features at stride 4. The tiles of a tile
  set overlap by 50 %, so the central half-block of every tile's features tiles the plane: a tile's
  descriptor is that block, and a scope's blocks side by side are its feature map.
- Scores: mean cosine over the kernel's valid (inside the BEV circle) cells, in [-1, 1].

Training (crossview_training.bev_recipe, run by crossview_training.train): each step cuts an aerial region the size of a search scope (REGION_PX,
233 m at VIGOR's L) from a city's tile mosaic and takes up to batch_size panoramas whose cameras
stand in it; each must find its camera's cell among every position of the region (cross-entropy
over all of them), which is the run-time question: the neighbouring cells are the metre-level
negatives, the rest of the region the look-alike places of the scope. One aerial pass serves the
whole batch, and the ground-plane views are projected once before training (view_bank), so a
step costs little more than the aerial CNN; the correlation runs by FFT, whose cost barely grows
with the view.

Modules: model (BevConfig, BevModel and the fixed geometry), data (city mosaics, ground-view
banks, training batches), scoring (tile descriptors and scores, as the runtime computes them).
"""

from crossview_training.bev.data import (
    REGION_PX, BevBatch, CityMosaic, CitySplit, batch_loss, build_mosaics, jitter, normalise, sample_batch, to_tensor,
    unit_images, view_bank, view_bank_side, views_at,
)
from crossview_training.bev.model import (
    STRIDE, VIGOR_BEARING_DEG, BevConfig, BevModel, bev_sampling_grid, circle_mask, project_ground, rotation_grid,
)
from crossview_training.bev.scoring import bev_similarity, block_mosaic, score_blocks, tile_blocks

__all__ = [
    "REGION_PX", "STRIDE", "VIGOR_BEARING_DEG", "BevBatch", "BevConfig", "BevModel", "CityMosaic", "CitySplit",
    "batch_loss", "bev_sampling_grid", "bev_similarity", "block_mosaic", "build_mosaics", "circle_mask", "jitter",
    "normalise", "project_ground", "rotation_grid", "sample_batch", "score_blocks", "tile_blocks", "to_tensor",
    "unit_images", "view_bank", "view_bank_side", "views_at",
]
