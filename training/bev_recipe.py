"""Recipe of the bev family: scope-sized aerial regions and the panoramas standing in them.

Each step cuts an aerial region (REGION_PX) from a city's tile mosaic and takes up to batch_size
panoramas whose cameras stand in it; each must find its camera's cell among every position of
the region (cross-entropy over all of them). The ground-plane views are projected once (view_bank).
Batches come from one numpy stream seeded by the run's seed; its state travels in the checkpoint,
so a resumed run draws the same batches. With a time budget the schedule is re-planned to end
with it (measured on the first 20 steps), so a short budget still anneals.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossview_training.bev.data import REGION_PX, BevBatch, batch_loss, build_mosaics, sample_batch, view_bank
from crossview_training.bev.fov import mask_bank
from crossview_training.bev.model import STRIDE
from crossview_training.datasets import VigorSplit, cached_images
from crossview_training.evaluate import Descriptors, bev_descriptors
from crossview_training.models import create_model
from crossview_training.recipe import Recipe
from crossview_training.train_config import TrainConfig


FOV_MASKS = 512  # random camera rigs whose masks fov_sampling draws from


class BevRecipe(Recipe):
    """BEV correlation models (crossview_training.bev) trained on region batches."""

    family = "bev"
    final_lr_fraction = 0.05
    fit_schedule_to_budget = True

    def __init__(self, config: TrainConfig, device: torch.device, *, rank: int = 0, world: int = 1,
                 progress: bool = True) -> None:
        if world > 1:
            raise ValueError("bev training runs in one process (a batch is one aerial region); "
                             "run it without torchrun")
        super().__init__(config, device, rank=rank, world=world, progress=progress)
        model = create_model(config.model, **{"tile_size_m": self.tile_size_m, **dict(config.model_overrides)})
        cfg = model.config
        self.tile_size_m = cfg.tile_size_m  # the model's L (model_overrides may set it): offsets refer to it
        panos, sats = cached_images(self.full, cfg.pano_size, (cfg.tile_px, cfg.tile_px), progress=progress)
        self.bank = view_bank(cfg, panos, progress=progress)
        self.pano_en, sat_en = self.full.metric_positions()
        self.mosaics = build_mosaics(self.full, np.asarray(sats), sat_en, cfg)
        smallest = min(min(m.image.shape[:2]) for m in self.mosaics.values())
        self.region_px = min(REGION_PX, smallest // STRIDE * STRIDE)  # small (test) cities: the whole city
        if self.region_px < cfg.kernel_cells * STRIDE + STRIDE:
            raise ValueError(f"cities of {config.data} are too small for a {cfg.kernel_cells}-cell BEV")
        self.model = model.to(device)
        self.steps_per_epoch = max(1, len(self.train_idx) // config.batch_size)
        self.rng = np.random.default_rng([config.seed, 0xBE7])
        self.fov = None
        if config.fov_sampling > 0:
            self.fov = (mask_bank(cfg, FOV_MASKS, config.seed, progress=progress), config.fov_sampling)

    def start_epoch(self, epoch: int, first_step: int) -> int:
        return self.steps_per_epoch

    def step(self, epoch: int, step_in_epoch: int) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        batch = sample_batch(self.rng, self.bank, self.pano_en, self.full.pano_city, self.train_idx, self.mosaics,
                             self.model.config, batch_size=c.batch_size, region_px=self.region_px,
                             rotation_deg=c.rotation_deg, photometric=c.photometric, mirror=c.mirror, fov=self.fov)
        d = self.device
        batch = BevBatch(views=batch.views.to(d), bearing_rad=batch.bearing_rad.to(d), region=batch.region.to(d),
                         target=batch.target.to(d), cells=None if batch.cells is None else batch.cells.to(d))
        loss, acc = batch_loss(self.model, batch)
        return loss, {"acc": acc}

    def descriptors(self, split: VigorSplit) -> Descriptors:
        return bev_descriptors(self.model, split, progress=False)

    def state(self) -> dict[str, Any]:
        return {"numpy_rng": json.dumps(self.rng.bit_generator.state)}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
