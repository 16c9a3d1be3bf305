"""Recipe of the descriptor family: (panorama, tile) pairs, retrieval losses with in-batch mining.

Batches, augmentations and mining draws depend only on (seed, epoch, step), and the loss's own
state (InfoNCE's temperature) travels in the checkpoint, so a resumed run reaches the same weights.
Distributed: each rank encodes its share of every batch and the embeddings are all-gathered with
their gradients before the loss, so the loss is the one of the combined batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from crossview_training.datasets import VigorPairs, VigorSplit, cached_images, neighbour_batches
from crossview_training.evaluate import Descriptors, model_descriptors
from crossview_training.losses import SymmetricInfoNCE, binomial_loss, iou_loss, offset_loss, soft_margin_triplet
from crossview_training.mining import batch_similarities, exhaustive_in_batch, hardest_in_batch, negative_mask
from crossview_training.models import create_model
from crossview_training.recipe import Recipe, gather
from crossview_training.train_config import TrainConfig

log = logging.getLogger("crossview_train")


def epoch_batches(split: VigorSplit, config: TrainConfig, epoch: int) -> list[list[int]]:
    """The epoch's batches of panorama indices (all ranks together), deterministic in (seed, epoch)."""
    if config.mining == "neighbours":
        batches = neighbour_batches(split, config.batch_size, seed=config.seed, epoch=epoch)
    else:
        order = np.random.default_rng([config.seed, epoch, 0x0BD]).permutation(len(split))
        batches = [order[i:i + config.batch_size].tolist() for i in range(0, len(order), config.batch_size)]
    return [b for b in batches if len(b) >= 2]


def compute_loss(model, criterion, batch: dict, config: TrainConfig, epoch: int, semi: Tensor | None):
    """Loss of one (combined) batch; returns (total, parts dict)."""
    g = gather(model.encode_ground(batch["ground"]))
    a = gather(model.encode_aerial(batch["aerial"]))
    tiles = gather(batch["tile"])
    covers = gather(batch["covers"])
    mask = negative_mask(tiles, covers)
    parts: dict[str, Tensor] = {}
    hybrid = config.loss == "hybrid" and epoch >= config.hybrid_start_epoch
    if config.loss == "infonce":
        parts["retrieval"] = criterion(g, a, neg_mask=mask)
    elif config.loss == "binomial":
        parts["retrieval"] = binomial_loss(*batch_similarities(g, a, neg_mask=mask))
    else:
        mine = hardest_in_batch if config.mining == "hardest" else exhaustive_in_batch
        parts["retrieval"] = soft_margin_triplet(*mine(g, a, neg_mask=mask))
    if hybrid and semi is not None:
        b, k = semi.shape[:2]
        a_semi = gather(model.encode_aerial(semi.flatten(0, 1)).view(b, k, -1))
        sim_pos = (g * a).sum(dim=1)
        sim_semi = torch.einsum("nd,nkd->nk", g, a_semi)
        parts["iou"] = iou_loss(sim_pos, sim_semi, gather(batch["iou_pos"]), gather(batch["iou_semi"]))
    if config.offset_weight > 0 and (config.loss != "hybrid" or hybrid):
        pred = model.offset(g, a)
        parts["offset"] = config.offset_weight * offset_loss(pred, gather(batch["offset"]))
    return sum(parts.values()), parts


class PairsWithCovers(torch.utils.data.Dataset):
    """Adds each item's four tile ids (and the hybrid loss's semi-positive inputs) to VigorPairs items."""

    def __init__(self, pairs: VigorPairs, with_semi: bool) -> None:
        self.pairs, self.with_semi = pairs, with_semi

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        item = self.pairs[index]
        split = self.pairs.split
        item["covers"] = torch.from_numpy(split.labels[index].astype(np.int64))
        if self.with_semi:
            iou = self.pairs.iou[index]
            item["semi"] = torch.stack([self.pairs.image_tensor(np.asarray(self.pairs.sats[t]))
                                        for t in split.labels[index, 1:]])
            item["iou_pos"] = torch.tensor(float(iou[0]))
            item["iou_semi"] = torch.from_numpy(iou[1:].astype(np.float32))
        return item


def collate(items: list[dict]) -> dict:
    """Stack a batch's items key by key."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class RetrievalRecipe(Recipe):
    """Descriptor models (crossview_training.models.descriptor) trained by retrieval losses."""

    family = "descriptor"
    final_lr_fraction = 0.01

    def __init__(self, config: TrainConfig, device: torch.device, *, rank: int = 0, world: int = 1,
                 progress: bool = True) -> None:
        super().__init__(config, device, rank=rank, world=world, progress=progress)
        model = create_model(config.model, pretrained_path=config.pretrained_path or None,
                             ground_size=config.ground_size, aerial_size=config.aerial_size, **config.model_overrides)
        panos, sats = cached_images(self.full, config.ground_size, config.aerial_size, progress=progress and rank == 0)
        self.pairs = VigorPairs(self.split, np.asarray(panos)[self.train_idx], sats, mean=model.config.mean,
                                std=model.config.std,
                                semi_positive_prob=config.semi_positive_prob if config.loss != "hybrid" else 0.0,
                                rotation_deg=config.rotation_deg, photometric_strength=config.photometric,
                                seed=config.seed)
        self.dataset = PairsWithCovers(self.pairs, with_semi=config.loss == "hybrid")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            if world > 1:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        self.criterion = SymmetricInfoNCE().to(device) if config.loss == "infonce" else None
        self.steps_per_epoch = len(epoch_batches(self.split, config, 0))
        self.batches: list[list[int]] = []
        self.loader: Iterator[dict] | None = None

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + (list(self.criterion.parameters()) if self.criterion is not None else [])

    def _rank_share(self, batch: list[int]) -> list[int]:
        """This rank's items of a batch cut to a multiple of the world size."""
        return batch[: len(batch) // self.world * self.world][self.rank::self.world]

    def start_epoch(self, epoch: int, first_step: int) -> int:
        self.pairs.set_epoch(epoch)
        self.batches = epoch_batches(self.split, self.config, epoch)
        self.loader = None
        if self.config.workers > 0:  # items depend on (seed, epoch, index) only: the same in any process
            shares = [self._rank_share(b) for b in self.batches[first_step:]]
            self.loader = iter(DataLoader(self.dataset, batch_sampler=shares, num_workers=self.config.workers,
                                          collate_fn=collate))
        return len(self.batches)

    def step(self, epoch: int, step_in_epoch: int) -> tuple[Tensor, dict[str, float]]:
        if self.loader is not None:
            items = next(self.loader)
        else:
            items = collate([self.dataset[i] for i in self._rank_share(self.batches[step_in_epoch])])
        batch = {k: v.to(self.device, non_blocking=True) for k, v in items.items()}
        semi = batch.pop("semi", None)
        loss, _ = compute_loss(self.model, self.criterion, batch, self.config, epoch, semi)
        return loss, {}

    def descriptors(self, split: VigorSplit) -> Descriptors:
        return model_descriptors(self.model, split, progress=False)

    def state(self) -> dict[str, Any]:
        return {"criterion": self.criterion.state_dict() if self.criterion is not None else {}}

    def restore(self, ckpt: dict[str, Any]) -> None:
        if self.criterion is not None:
            self.criterion.load_state_dict(ckpt["criterion"])
