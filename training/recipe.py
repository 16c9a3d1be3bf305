"""The per-family part of a training run (Recipe) and what the families share.

crossview_training.train.train owns the run: seed, device, optimiser, the lr_at schedule,
checkpoints and resume, time budget, progress bar, metrics and best.pt. A Recipe supplies what
differs between model families: the model and its data, the batches of an epoch, the loss of one
step, the descriptors validation scores, and the state its batches depend on for an exact resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from crossview_training.datasets import VigorSplit, dataset_tile_size_m, load_vigor_split, subset
from crossview_training.evaluate import Descriptors, evaluate
from crossview_training.train_config import TrainConfig


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: Tensor) -> Tensor:
    """All-gather along the batch with gradients across ranks (identity when not distributed)."""
    rank, world = rank_world()
    if world == 1:
        return x
    if not x.requires_grad:
        chunks = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks, dim=0)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


class Recipe(ABC):
    """What one model family brings to the training loop; built once per run, on its device.

    Attributes set by __init__: config, device, rank, world, progress, tile_size_m (L of the
    data), full (the training split), split (its panoramas that train), val_split (the held-out
    ones, None when val_panoramas is 0), train_idx (indices of `split` in `full`).
    Subclasses set `model` (on the device) and `steps_per_epoch` in theirs.
    """

    family: str = ""
    final_lr_fraction: float = 0.01  # lr_at decays to this share of the peak
    fit_schedule_to_budget: bool = False  # re-plan the total steps so the cosine ends with the time budget
    model: nn.Module
    steps_per_epoch: int

    def __init__(self, config: TrainConfig, device: torch.device, *, rank: int = 0, world: int = 1,
                 progress: bool = True) -> None:
        self.config, self.device, self.rank, self.world, self.progress = config, device, rank, world, progress
        self.tile_size_m = dataset_tile_size_m(config.data)
        self.full = load_vigor_split(config.data, f"{config.area}_train", labels=config.labels)
        order = np.random.default_rng([config.seed, 0x7A1]).permutation(len(self.full))
        n_val = min(config.val_panoramas, len(self.full) // 5)
        val_idx, self.train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        self.split = subset(self.full, self.train_idx, f"{self.full.split}_fit")
        self.val_split = subset(self.full, val_idx, f"{self.full.split}_val{n_val}") if n_val else None

    def parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser trains (the model's parameters unless the loss has some too)."""
        return list(self.model.parameters())

    @abstractmethod
    def start_epoch(self, epoch: int, first_step: int) -> int:
        """Prepare epoch `epoch` from step `first_step` on (0 unless resumed mid-epoch); its number of steps."""

    @abstractmethod
    def step(self, epoch: int, step_in_epoch: int) -> tuple[Tensor, dict[str, float]]:
        """Loss of one step (model in training mode) and per-step figures logged beside it (e.g. accuracy)."""

    @abstractmethod
    def descriptors(self, split: VigorSplit) -> Descriptors:
        """The model's scores on `split` in evaluate's form (validation)."""

    def state(self) -> dict[str, Any]:
        """Extra checkpoint entries the run needs for an exact resume."""
        return {}

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Take back what state() wrote, from a checkpoint."""

    def validate(self) -> dict[str, float]:
        """Top-1 in the 200 m scope and median error on the held-out training-city panoramas."""
        result = evaluate(self.val_split, self.descriptors(self.val_split), tile_size_m=self.tile_size_m)
        scope = result["scopes"]["200m"]
        err = scope.get("error_with_offset", scope["error_tile_centre"])
        return {"val_top1_all": result["recall"]["top1"], "val_top1_200m": scope["top1"],
                "val_median_m_200m": err["median_m"]}
