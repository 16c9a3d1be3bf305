"""crossview-train: train any registered model (crossview_training.models) on a VIGOR-layout dataset.

    crossview-train --preset cpu-small --data DATA --out runs/small
    crossview-train --preset cpu-bev --data DATA --out runs/bev
    crossview-train --preset vgg16-paper --data DATA --out runs/vgg --set epochs=60 lr=2e-5
    torchrun --nproc_per_node 2 -m crossview_training.train --preset cpu-small --data DATA --out runs/ddp
    crossview-train --preset vgg16-paper --data VIGOR --out runs/vigor --set labels=corrected area=same
    crossview-train --preset cpu-bev --data MY_DRIVES --out runs/ft --set area=same init_checkpoint=runs/bev/best.pt

One config (TrainConfig) from a preset, then a YAML file (--config), then --set KEY=VALUE
overrides; unknown keys raise, and so do keys the model's family cannot use. Every family runs
through the one loop below; a Recipe (crossview_training.recipe) brings the family's data, loss
and validation. The run folder gets config.json, metrics.csv / metrics.jsonl (one row per
epoch), last.pt (written atomically after every epoch, every checkpoint_every steps and when
the time budget ends) and best.pt (best validation top-1 in the 200 m scope). Re-running the
same command resumes from last.pt and reaches the same weights as an uninterrupted run.

Distributed (torchrun; gloo on the CPU, NCCL on CUDA; descriptor models): each rank encodes its
share of every batch, the embeddings are all-gathered with their gradients before the loss, so
the averaged gradients equal a single process's on the combined batch. Two limits: a batch is
cut to a multiple of the world size, and on the CPU BatchNorm layers normalise with each rank's
share only (SyncBatchNorm refuses CPU tensors; on CUDA it is used), so there the equality holds
for models without BatchNorm (ConvNeXt's LayerNorm, VGG16); a warning says so otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from crossview_training.bev_recipe import BevRecipe
from crossview_training.models import (
    WeightsError, create_model, model_family, model_hash, read_checkpoint, save_checkpoint,
)
from crossview_training.recipe import Recipe, rank_world
from crossview_training.retrieval_recipe import RetrievalRecipe
from crossview_training.train_config import (
    PRESETS, TrainConfig, build_config, config_keys_help, lr_at, train_device,
)

log = logging.getLogger("crossview_train")

RECIPES: dict[str, type[Recipe]] = {"descriptor": RetrievalRecipe, "bev": BevRecipe}
PLAN_AFTER_STEPS = 20  # steps timed before the schedule is fitted to the time budget
REPLAN_EVERY = 50  # steps between re-plans (a busy machine changes the pace)

__all__ = ["PRESETS", "RECIPES", "TrainConfig", "build_config", "create_model", "lr_at", "main", "train",
           "train_device"]


def append_metrics(out: Path, metrics: dict) -> None:
    """One row of epoch figures to metrics.jsonl and metrics.csv (header from the first row)."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    path = out / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(metrics))
        if new:
            writer.writeheader()
        writer.writerow(metrics)


class _Run:
    """The loop's state: what a checkpoint holds besides the weights, and how to save and restore it."""

    def __init__(self, config: TrainConfig, recipe: Recipe, optimizer: torch.optim.Optimizer, out: Path,
                 rank: int) -> None:
        self.config, self.recipe, self.optimizer, self.out, self.rank = config, recipe, optimizer, out, rank
        self.epoch, self.step_in_epoch, self.global_step, self.best = 0, 0, 0, -1.0
        self.cap = recipe.steps_per_epoch * config.epochs  # the most steps this run may take
        if config.max_steps > 0:
            self.cap = min(self.cap, config.max_steps)
        self.total = self.cap
        self.losses: list[float] = []  # this epoch's step losses so far (a resumed epoch logs the same mean)
        self.figures: list[dict[str, float]] = []  # this epoch's per-step figures of the recipe
        self.first_step, self.planned = 0, False  # where this process started; schedule fitted to the budget yet

    def resume(self, last: Path, device: torch.device) -> None:
        ckpt = read_checkpoint(last)
        if ckpt.get("train_config") != self.config.to_dict():
            raise ValueError(f"{last} was written with another config; use a new --out or the same settings")
        self.recipe.model.load_state_dict({k: v.to(device) for k, v in ckpt["state_dict"].items()})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.recipe.restore(ckpt)
        self.epoch, self.step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        self.global_step, self.total = int(ckpt["global_step"]), int(ckpt.get("total_steps", self.total))
        self.best = float(ckpt.get("best", -1.0))
        self.losses = [float(v) for v in ckpt.get("epoch_losses", [])]
        self.figures = list(ckpt.get("epoch_figures", []))
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed from %s at epoch %d step %d", last, self.epoch, self.step_in_epoch)

    def save(self, path: Path) -> None:
        if self.rank != 0:
            return
        model = self.recipe.model
        save_checkpoint(model, path, train_config=self.config.to_dict(), optimizer=self.optimizer.state_dict(),
                        epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                        total_steps=self.total, best=self.best, torch_rng=torch.get_rng_state(),
                        model_hash=model_hash(model), tile_size_m=self.recipe.tile_size_m,
                        epoch_losses=list(self.losses), epoch_figures=list(self.figures), **self.recipe.state())

    def fit_to_budget(self, elapsed_s: float, budget_s: float) -> None:
        """Re-plan the total steps so the schedule ends with the time budget, at the pace measured so far."""
        done_here = self.global_step - self.first_step
        if done_here < PLAN_AFTER_STEPS or (self.planned and self.global_step % REPLAN_EVERY):
            return
        fit = int(self.global_step + (budget_s - elapsed_s) / (elapsed_s / done_here))
        if not self.planned or abs(fit - self.total) > 0.02 * self.total:
            log.info("time budget %.1f min: planning %d steps (was %d)", self.config.time_budget_min, fit, self.total)
            self.total = max(self.global_step + 1, min(fit, self.cap))
        self.planned = True

    def lr(self) -> float:
        c = self.config
        return lr_at(self.global_step, self.total, c.lr, c.warmup_steps, self.recipe.final_lr_fraction)

    def epoch_metrics(self, elapsed_s: float) -> dict[str, Any]:
        metrics = {"epoch": self.epoch, "steps": self.step_in_epoch,
                   "loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                   "lr": self.lr(), "elapsed_min": elapsed_s / 60}
        for key in (self.figures[0] if self.figures else {}):
            metrics[key] = float(np.mean([f[key] for f in self.figures]))
        return metrics


def init_from_checkpoint(model: torch.nn.Module, path: str, device: torch.device) -> None:
    """Fine-tuning: start from another run's weights, refused unless its model and config are this run's.

    A resumed run then replaces them with last.pt's (the config, init_checkpoint included, must match).
    """
    ckpt = read_checkpoint(path)
    mine = json.loads(json.dumps(model.config.to_dict()))
    theirs = json.loads(json.dumps(ckpt["model_config"]))
    if ckpt["model_name"] != model.name or theirs != mine:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"init_checkpoint {path} holds model {ckpt['model_name']!r} with other settings "
                         f"({', '.join(diff) or 'name'} differ) than this run's {model.name!r}; set model and "
                         "model_overrides (and the data's tile size) as the checkpoint's")
    model.load_state_dict({k: v.to(device) for k, v in ckpt["state_dict"].items()})
    log.info("starting from the weights of %s", path)


def _prepare(config: TrainConfig, progress: bool) -> tuple[Recipe, torch.optim.Optimizer, int, int]:
    """Seed, threads, device; the family's recipe (model and data) and the optimiser."""
    rank, world = rank_world()
    device = train_device(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    recipe = RECIPES[model_family(config.model)](config, device, rank=rank, world=world, progress=progress)
    if config.init_checkpoint:
        init_from_checkpoint(recipe.model, config.init_checkpoint, device)
    optimizer = torch.optim.AdamW(recipe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if world > 1:  # identical start on every rank; gradients are averaged by hand in the loop
        for t in recipe.model.state_dict().values():
            dist.broadcast(t, 0)
        if device.type == "cpu" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                        for m in recipe.model.modules()):
            log.warning("distributed training of a model with BatchNorm: each rank normalises with its share of "
                        "the batch (SyncBatchNorm needs GPU tensors), so the result differs from one process on "
                        "the combined batch")
    return recipe, optimizer, rank, world


def train(config: TrainConfig, out: str | os.PathLike, *, progress: bool = True,
          stop_after_steps: int | None = None) -> Path:
    """Train (or resume) into `out`; returns the path of last.pt. stop_after_steps: for tests.

    The one loop of every family (module docstring); kept in one piece because the order of its
    steps (lr, loss, all-reduce, budget, checkpoints, metrics) is what makes resume exact.
    """
    out = Path(out)
    recipe, optimizer, rank, world = _prepare(config, progress)
    device, params = recipe.device, recipe.parameters()
    run = _Run(config, recipe, optimizer, out, rank)
    last = out / "last.pt"
    if last.exists():
        run.resume(last, device)
    if rank == 0:  # written once the resume check passed: it describes last.pt
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    started = time.monotonic()
    budget_s = 60 * config.time_budget_min
    run.first_step = run.global_step
    stopped = finished = False
    while run.epoch < config.epochs and not (stopped or finished):
        n_steps = recipe.start_epoch(run.epoch, run.step_in_epoch)
        recipe.model.train()
        bar = tqdm(total=n_steps, initial=run.step_in_epoch, desc=f"epoch {run.epoch}", unit="step",
                   disable=not progress or rank != 0)
        while run.step_in_epoch < n_steps:
            for group in optimizer.param_groups:
                group["lr"] = run.lr()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                loss, figures = recipe.step(run.epoch, run.step_in_epoch)
            loss = loss.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            optimizer.step()
            run.losses.append(float(loss.detach()))
            run.figures.append(figures)
            run.step_in_epoch += 1
            run.global_step += 1
            bar.update()
            bar.set_postfix(loss=f"{np.mean(run.losses[-20:]):.3f}",
                            **{k: f"{np.mean([f[k] for f in run.figures[-20:]]):.2f}" for k in figures})
            elapsed = time.monotonic() - started
            if recipe.fit_schedule_to_budget and budget_s > 0:
                run.fit_to_budget(elapsed, budget_s)
            out_of_time = budget_s > 0 and elapsed > budget_s
            if world > 1 and budget_s > 0:  # every rank must stop at the same step
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if stop_after_steps is not None and run.global_step >= stop_after_steps:
                run.save(last)
                return last
            if out_of_time:
                log.warning("time budget of %.1f min reached at epoch %d step %d; stopping (checkpoint kept)",
                            config.time_budget_min, run.epoch, run.step_in_epoch)
                stopped = True
                break
            if (recipe.fit_schedule_to_budget or config.max_steps > 0) and run.global_step >= run.total:
                finished = True  # the planned schedule has ended
                break
            if run.global_step % config.checkpoint_every == 0:
                run.save(last)
        bar.close()
        if stopped:
            run.save(last)
            break
        metrics = run.epoch_metrics(time.monotonic() - started)
        if rank == 0 and recipe.val_split is not None:
            metrics.update(recipe.validate())
            recipe.model.train()
        run.epoch += 1
        run.step_in_epoch = 0
        run.losses, run.figures = [], []
        if rank == 0:
            append_metrics(out, metrics)
            log.info("epoch %d: %s", metrics["epoch"], {k: round(v, 4) for k, v in metrics.items()})
            if metrics.get("val_top1_200m", -1.0) > run.best:
                run.best = metrics["val_top1_200m"]
                run.save(out / "best.pt")
        run.save(last)
    return last


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossview-train", description=__doc__,
                                epilog="--set keys (TrainConfig):\n" + config_keys_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings to start from")
    p.add_argument("--config", help="YAML file of TrainConfig keys (applied after the preset)")
    p.add_argument("--data", help="VIGOR-layout dataset root (same as --set data=...)")
    p.add_argument("--out", required=True, help="run folder (resumed if it holds last.pt)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides (keys below)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-train; 2 for a bad config (printed), 0 when the run ends."""
    args = _parser().parse_args(argv)
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
        path = train(config, args.out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, WeightsError) as exc:  # the data or init_checkpoint do not fit
        print(f"crossview-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
