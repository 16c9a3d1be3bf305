"""crossview-train: train a CrossViewModel on a VIGOR-layout dataset.

    crossview-train --preset cpu-small --data DATA --out runs/small
    crossview-train --preset vgg16-paper --data DATA --out runs/vgg --set epochs=60 lr=2e-5
    torchrun --nproc_per_node 2 -m crossview_training.train --preset cpu-small --data DATA --out runs/ddp

One config (TrainConfig) from a preset, then a YAML file (--config), then --set KEY=VALUE
overrides; unknown keys raise. The run folder gets config.json, metrics.csv / metrics.jsonl (one
row per epoch), last.pt (written atomically after every epoch and every --checkpoint-every
steps) and best.pt. Re-running the same command resumes from last.pt and reaches the same weights
as an uninterrupted run: batches, augmentations and mining draws depend only on (seed, epoch,
step), and the optimiser, scheduler and loss state travel in the checkpoint.

Distributed (torchrun; gloo on the CPU, NCCL on CUDA): each rank encodes its share of
every batch, the embeddings are all-gathered with their gradients before the loss, so the loss is
the one of the combined batch and the averaged gradients equal a single process's on that batch.
Two limits: a batch is cut to a multiple of the world size, and on the CPU BatchNorm layers
normalise with each rank's share only (SyncBatchNorm refuses CPU tensors; on CUDA it is used), so
there the equality holds for models without BatchNorm (ConvNeXt's LayerNorm, VGG16); a warning
says so otherwise.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from crossview_ros.config import check_known_keys
from crossview_training.datasets import VigorPairs, cached_images, load_vigor_split, neighbour_batches, subset
from crossview_training.losses import SymmetricInfoNCE, binomial_loss, iou_loss, offset_loss, soft_margin_triplet
from crossview_training.mining import batch_similarities, exhaustive_in_batch, hardest_in_batch, negative_mask
from crossview_training.models import create_model, model_hash, read_checkpoint, save_checkpoint

log = logging.getLogger("crossview_train")

LOSSES = ("infonce", "triplet", "binomial", "hybrid")
MININGS = ("none", "in_batch", "hardest", "neighbours")


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to <out>/config.json."""

    data: str = ""  # VIGOR-layout dataset root
    area: str = "cross"  # cross (train cities of dataset.json) | same (same_area_balanced_train of every city)
    model: str = "small"  # crossview_training.models preset name
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields (backbone, dim, ...)
    ground_size: tuple = (128, 256)  # (H, W) panorama input
    aerial_size: tuple = (128, 128)  # (H, W) tile input
    pretrained_path: str = ""  # local ImageNet backbone weights; "" = random init
    epochs: int = 20  # passes over the training panoramas
    batch_size: int = 32  # panoramas per step (all ranks together)
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 1 % of lr
    loss: str = "infonce"  # infonce (Sample4Geo) | triplet (CVM-Net, alpha 10) | binomial (Revisiting) | hybrid (VIGOR)
    mining: str = "neighbours"  # none (random batches, all in-batch) | in_batch (exhaustive) | hardest | neighbours (GPS-near batches)
    hybrid_start_epoch: int = 10  # VIGOR: triplet only before, + IoU + offset after (cross-area 10, same-area 30)
    offset_weight: float = 1.0  # weight of the offset regression term (VIGOR eq. 3) for every loss
    semi_positive_prob: float = 0.25  # chance an item pairs the panorama with a semi-positive tile
    rotation_deg: float = 0.0  # random panorama roll in +-deg (0 = keep VIGOR's north alignment)
    photometric: float = 0.2  # strength of colour jitter on both views (0 = off)
    mirror: float = 0.0  # bev: chance a batch's world is mirrored east-west (aerial region and ground views)
    workers: int = 0  # DataLoader worker processes
    seed: int = 0  # data order, augmentation, init
    time_budget_min: float = 0.0  # stop cleanly (checkpoint written) after this many minutes; 0 = none
    checkpoint_every: int = 200  # steps between mid-epoch checkpoints
    val_panoramas: int = 200  # training-city panoramas held out of training and evaluated per epoch (picks best.pt)
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # auto (cuda when available, one GPU per torchrun rank) | cpu | cuda

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind = type(f.default)
            if kind in (int, float):
                value = getattr(self, f.name)
                try:  # YAML 1.1 (PyYAML) reads 1e-3, with no dot, as a string
                    number = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{f.name} must be a number, got {value!r}") from None
                if kind is int and not number.is_integer():
                    raise ValueError(f"{f.name} must be an integer, got {value!r}")
                setattr(self, f.name, kind(number))
        self.ground_size = tuple(int(v) for v in self.ground_size)
        self.aerial_size = tuple(int(v) for v in self.aerial_size)
        if self.area not in ("cross", "same"):
            raise ValueError(f"area must be 'cross' or 'same', got {self.area!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mining not in MININGS:
            raise ValueError(f"mining must be one of {MININGS}, got {self.mining!r}")
        if self.batch_size < 2 or self.epochs < 1 or not self.lr > 0:
            raise ValueError("batch_size >= 2, epochs >= 1 and lr > 0 are required")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        check_known_keys(cls, values, what="train config")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


PRESETS: dict[str, dict[str, Any]] = {
    # 2-core CPU, about 30 minutes on a 2-city synthetic set: small inputs, InfoNCE with
    # GPS-neighbour batches (the negatives the runtime must reject inside its scope).
    "cpu-small": {"model": "small", "ground_size": (128, 256), "aerial_size": (128, 128), "epochs": 16,
                  "batch_size": 32, "lr": 1e-3, "loss": "infonce", "mining": "neighbours",
                  "time_budget_min": 30.0, "threads": 2},
    # 2-core CPU, 30 minutes: the top-down correlation model (crossview_training.bev), which
    # learns where things lie on the ground instead of one descriptor per tile. A batch is one
    # scope-sized aerial region and up to 32 panoramas standing in it; half the batches mirror
    # the world east-west (cross-area top-1 +10 points: the model generalises, not memorises).
    "cpu-bev": {"model": "bev_small", "epochs": 40, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
                "photometric": 0.3, "mirror": 0.5, "time_budget_min": 30.0, "threads": 2, "checkpoint_every": 100},
    # The same for robots: panoramas in any heading (column 0 = forward); the runtime searches the
    # bearing, so training turns each panorama at random and its features back by the known bearing.
    "cpu-bev-any-yaw": {"model": "bev_small", "epochs": 40, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
                        "photometric": 0.3, "mirror": 0.5, "rotation_deg": 180.0, "time_budget_min": 30.0,
                        "threads": 2, "checkpoint_every": 100},
    # VIGOR section 5: VGG16 + SAFA at 640x320 / 320x320, triplet (alpha 10) then hybrid.
    "vgg16-paper": {"model": "vgg16_safa", "ground_size": (320, 640), "aerial_size": (320, 320), "epochs": 40,
                    "batch_size": 32, "lr": 1e-5, "loss": "hybrid", "mining": "in_batch",
                    "hybrid_start_epoch": 10, "semi_positive_prob": 0.0, "photometric": 0.0},
}


def build_config(preset: str | None, yaml_path: str | None, overrides: Sequence[str]) -> TrainConfig:
    """Preset, then YAML file, then KEY=VALUE overrides (values parsed as YAML scalars/lists)."""
    import yaml

    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
        values.update(PRESETS[preset])
    if yaml_path:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{yaml_path} must hold a mapping of TrainConfig keys")
        values.update(loaded)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    return TrainConfig.from_dict(values)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 1 % of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    t = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    return config.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def epoch_batches(split, config: TrainConfig, epoch: int) -> list[list[int]]:
    """The epoch's batches of panorama indices (all ranks together), deterministic in (seed, epoch)."""
    if config.mining == "neighbours":
        batches = neighbour_batches(split, config.batch_size, seed=config.seed, epoch=epoch)
    else:
        order = np.random.default_rng([config.seed, epoch, 0x0BD]).permutation(len(split))
        batches = [order[i:i + config.batch_size].tolist() for i in range(0, len(order), config.batch_size)]
    return [b for b in batches if len(b) >= 2]


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather along the batch with gradients across ranks (identity when not distributed)."""
    rank, world = _rank_world()
    if world == 1:
        return x
    if not x.requires_grad:
        chunks = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks, dim=0)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def compute_loss(model, criterion, batch: dict, config: TrainConfig, epoch: int, semi: torch.Tensor | None):
    """Loss of one (combined) batch; returns (total, parts dict)."""
    g = _gather(model.encode_ground(batch["ground"]))
    a = _gather(model.encode_aerial(batch["aerial"]))
    tiles = _gather(batch["tile"])
    covers = _gather(batch["covers"])
    mask = negative_mask(tiles, covers)
    parts: dict[str, torch.Tensor] = {}
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
        a_semi = _gather(model.encode_aerial(semi.flatten(0, 1)).view(b, k, -1))
        sim_pos = (g * a).sum(dim=1)
        sim_semi = torch.einsum("nd,nkd->nk", g, a_semi)
        parts["iou"] = iou_loss(sim_pos, sim_semi, _gather(batch["iou_pos"]), _gather(batch["iou_semi"]))
    if config.offset_weight > 0 and (config.loss != "hybrid" or hybrid):
        pred = model.offset(g, a)
        parts["offset"] = config.offset_weight * offset_loss(pred, _gather(batch["offset"]))
    return sum(parts.values()), parts


class _WithCovers:
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
            iou = self.pairs._iou[index]
            item["semi"] = torch.stack([self.pairs._tensor(np.asarray(self.pairs.sats[t]))
                                        for t in split.labels[index, 1:]])
            item["iou_pos"] = torch.tensor(float(iou[0]))
            item["iou_semi"] = torch.from_numpy(iou[1:].astype(np.float32))
        return item


def _collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_device(config: TrainConfig) -> torch.device:
    """The device a rank trains on: its own GPU under torchrun (LOCAL_RANK), else cuda:0, else CPU."""
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA GPU; use device=cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def train(config: TrainConfig, out: str | os.PathLike, *, progress: bool = True, stop_after_steps: int | None = None) -> Path:
    """Train (or resume) into `out`; returns the path of last.pt. stop_after_steps: for tests."""
    out = Path(out)
    rank, world = _rank_world()
    device = train_device(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    full = load_vigor_split(config.data, f"{config.area}_train")
    order = np.random.default_rng([config.seed, 0x7A1]).permutation(len(full))
    n_val = min(config.val_panoramas, len(full) // 5)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    split = subset(full, train_idx, f"{full.split}_fit")
    val_split = subset(full, val_idx, f"{full.split}_val{n_val}") if n_val else None
    model = create_model(config.model, pretrained_path=config.pretrained_path or None,
                         ground_size=config.ground_size, aerial_size=config.aerial_size, **config.model_overrides)
    panos, sats = cached_images(full, config.ground_size, config.aerial_size, progress=progress and rank == 0)
    pairs = VigorPairs(split, np.asarray(panos)[train_idx], sats, mean=model.config.mean, std=model.config.std,
                       semi_positive_prob=config.semi_positive_prob if config.loss != "hybrid" else 0.0,
                       rotation_deg=config.rotation_deg, photometric_strength=config.photometric, seed=config.seed)
    dataset = _WithCovers(pairs, with_semi=config.loss == "hybrid")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if world > 1:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    criterion = SymmetricInfoNCE().to(device) if config.loss == "infonce" else None
    params = list(model.parameters()) + (list(criterion.parameters()) if criterion is not None else [])
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if world > 1:  # identical start on every rank; gradients are averaged by hand below
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
        if device.type == "cpu" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            log.warning("distributed training of a model with BatchNorm: each rank normalises with its share of "
                        "the batch (SyncBatchNorm needs GPU tensors), so the result differs from one process on "
                        "the combined batch")
    steps_per_epoch = len(epoch_batches(split, config, 0))
    total_steps = steps_per_epoch * config.epochs

    epoch, step_in_epoch, global_step, best = 0, 0, 0, -1.0
    losses: list[float] = []  # this epoch's step losses so far (a resumed epoch logs the same mean)
    last = out / "last.pt"
    if last.exists():
        ckpt = read_checkpoint(last)
        ckpt["state_dict"] = {k: v.to(device) for k, v in ckpt["state_dict"].items()}
        if ckpt.get("train_config") != config.to_dict():
            raise ValueError(f"{last} was written with another config; use a new --out or the same settings")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if criterion is not None:
            criterion.load_state_dict(ckpt["criterion"])
        epoch, step_in_epoch, global_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"]), int(ckpt["global_step"])
        best = float(ckpt.get("best", -1.0))
        losses = [float(v) for v in ckpt.get("epoch_losses", [])]
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed from %s at epoch %d step %d", last, epoch, step_in_epoch)
    if rank == 0:  # written once the resume check passed: it describes last.pt
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    tile_size_m = _tile_size_m(config.data)

    def save(path: Path, **extra: Any) -> None:
        if rank != 0:
            return
        save_checkpoint(model, path, train_config=config.to_dict(), optimizer=optimizer.state_dict(),
                        criterion=criterion.state_dict() if criterion is not None else {},
                        epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step, best=best,
                        torch_rng=torch.get_rng_state(), model_hash=model_hash(model), tile_size_m=tile_size_m,
                        epoch_losses=list(losses), **extra)

    started = time.monotonic()
    stopped = False
    while epoch < config.epochs and not stopped:
        pairs.set_epoch(epoch)
        batches = epoch_batches(split, config, epoch)
        model.train()
        bar = tqdm(total=len(batches), initial=step_in_epoch, desc=f"epoch {epoch}", unit="step",
                   disable=not progress or rank != 0)
        while step_in_epoch < len(batches):
            full_batch = batches[step_in_epoch]
            indices = full_batch[: len(full_batch) // world * world][rank::world]
            batch = {k: v.to(device, non_blocking=True) for k, v in _collate([dataset[i] for i in indices]).items()}
            semi = batch.pop("semi", None)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, config)
            loss, parts = compute_loss(model, criterion, batch, config, epoch, semi)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            optimizer.step()
            losses.append(float(loss.detach()))
            step_in_epoch += 1
            global_step += 1
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            out_of_time = config.time_budget_min > 0 and time.monotonic() - started > 60 * config.time_budget_min
            if world > 1 and config.time_budget_min > 0:  # every rank must stop at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if stop_after_steps is not None and global_step >= stop_after_steps:
                save(last)
                return last
            if out_of_time:
                log.warning("time budget of %.1f min reached at epoch %d step %d; stopping (checkpoint kept)",
                            config.time_budget_min, epoch, step_in_epoch)
                stopped = True
                break
            if step_in_epoch % config.checkpoint_every == 0:
                save(last)
        bar.close()
        if stopped:
            save(last)
            break
        metrics = {"epoch": epoch, "steps": len(batches), "loss": float(np.mean(losses)) if losses else float("nan"),
                   "lr": lr_at(global_step, total_steps, config), "elapsed_min": (time.monotonic() - started) / 60}
        if rank == 0 and val_split is not None:
            metrics.update(validate(model, val_split, config))
            model.train()
        epoch += 1
        step_in_epoch = 0
        losses = []
        if rank == 0:
            _append_metrics(out, metrics)
            log.info("epoch %d: %s", metrics["epoch"], {k: round(v, 4) for k, v in metrics.items()})
            if metrics.get("val_top1_200m", -1.0) > best:
                best = metrics["val_top1_200m"]
                save(out / "best.pt")
        save(last)
    return last


def validate(model, val_split, config: TrainConfig) -> dict[str, float]:
    """Top-1 in the 200 m scope and median error on the held-out training-city panoramas."""
    from crossview_training.evaluate import evaluate, model_descriptors

    result = evaluate(val_split, model_descriptors(model, val_split, progress=False), tile_size_m=_tile_size_m(config.data))
    scope = result["scopes"]["200m"]
    err = scope.get("error_with_offset", scope["error_tile_centre"])
    return {"val_top1_all": result["recall"]["top1"], "val_top1_200m": scope["top1"],
            "val_median_m_200m": err["median_m"]}


def _tile_size_m(data: str) -> float:
    """Aerial image side in metres: dataset.json's for our data, VIGOR's 640 px x 0.114 m otherwise."""
    manifest = Path(data) / "dataset.json"
    return float(json.loads(manifest.read_text())["vigor_config"]["tile_size_m"]) if manifest.exists() else 72.96


def _append_metrics(out: Path, metrics: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    path = out / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(metrics))
        if new:
            writer.writeheader()
        writer.writerow(metrics)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crossview-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings to start from")
    p.add_argument("--config", help="YAML file of TrainConfig keys (applied after the preset)")
    p.add_argument("--data", help="VIGOR-layout dataset root (same as --set data=...)")
    p.add_argument("--out", required=True, help="run folder (resumed if it holds last.pt)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.set) + ([f"data={args.data}"] if args.data else [])
    try:
        config = build_config(args.preset, args.config, overrides)
        if not config.data:
            raise ValueError("no dataset: pass --data ROOT (a crossview-sim vigor root or real VIGOR)")
    except (ValueError, FileNotFoundError) as exc:
        print(f"crossview-train: error: {exc}", file=sys.stderr)
        return 2
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if train_device(config).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    try:
        if config.model.startswith("bev"):
            from crossview_training.bev import train_bev

            path = train_bev(config, args.out, tile_size_m=_tile_size_m(config.data), progress=not args.no_progress)
        else:
            path = train(config, args.out, progress=not args.no_progress)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
