"""TrainConfig (everything a training run depends on), its presets, the learning-rate schedule and
the device a run trains on.

A config is checked when it is made: value ranges, the model name (against the registry) and
the fields its model family cannot use (UNSUPPORTED_FIELDS): a field the family has no use for
must keep its default, so no setting is ever silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossview_ros.config import check_known_keys
from crossview_training.datasets import LABEL_SETS
from crossview_training.models import list_models, model_family

LOSSES = ("infonce", "triplet", "binomial", "hybrid")
MININGS = ("none", "in_batch", "hardest", "neighbours")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def _f(default: Any, help: str) -> Any:
    """A field with its --help line (crossview-train --help lists every key with it)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to <out>/config.json."""

    data: str = _f("", "VIGOR-layout dataset root")
    labels: str = _f("original", "original (splits/) | corrected (splits__corrected/: SliceMatch's labels, real VIGOR)")
    area: str = _f("cross", "cross (train cities of dataset.json) | same (same_area_balanced_train of every city)")
    model: str = _f("small", f"crossview_training.models name: {', '.join(list_models())}")
    model_overrides: dict = _f({}, "config fields of the model (ModelConfig: backbone, dim, ...; BevConfig for bev)")
    ground_size: tuple = _f((128, 256), "(H, W) panorama input (descriptor models)")
    aerial_size: tuple = _f((128, 128), "(H, W) tile input (descriptor models)")
    pretrained_path: str = _f("", "local ImageNet backbone weights; '' = random init (descriptor models)")
    init_checkpoint: str = _f("", "fine-tune: start from this crossview-train checkpoint (same model and config)")
    epochs: int = _f(20, "passes over the training panoramas")
    batch_size: int = _f(32, "panoramas per step (all ranks together)")
    lr: float = _f(1e-3, "peak AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    warmup_steps: int = _f(100, "linear warm-up, then cosine decay to the family's floor (1 %, bev 5 % of lr)")
    loss: str = _f("infonce", "infonce (Sample4Geo) | triplet (CVM-Net) | binomial (Revisiting) | hybrid (VIGOR)")
    mining: str = _f("neighbours", "none (random batches) | in_batch (exhaustive) | hardest | neighbours (GPS-near)")
    hybrid_start_epoch: int = _f(10, "VIGOR hybrid loss: triplet only before, + IoU + offset after")
    offset_weight: float = _f(1.0, "weight of the offset regression term (VIGOR eq. 3)")
    semi_positive_prob: float = _f(0.25, "chance an item pairs the panorama with a semi-positive tile")
    rotation_deg: float = _f(0.0, "random panorama roll in +-deg (0 = keep VIGOR's north alignment)")
    photometric: float = _f(0.2, "strength of colour jitter on both views (0 = off)")
    mirror: float = _f(0.0, "bev: chance a batch's world is mirrored east-west")
    fov_sampling: float = _f(0.0, "bev: share of views cut to a random camera rig's field of view (one model for "
                                  "panoramas, forward cameras and rigs; 0 = whole panoramas only)")
    workers: int = _f(0, "DataLoader worker processes (descriptor models)")
    seed: int = _f(0, "data order, augmentation, init")
    time_budget_min: float = _f(0.0, "stop cleanly (checkpoint written) after this many minutes; 0 = none")
    max_steps: int = _f(0, "end after this many optimiser steps, the lr schedule planned to end there (the same "
                           "model on any machine, unlike a time budget); 0 = epochs x steps per epoch")
    checkpoint_every: int = _f(200, "steps between checkpoints of last.pt (besides every epoch's end)")
    val_panoramas: int = _f(200, "training-city panoramas held out and evaluated per epoch (picks best.pt)")
    threads: int = _f(0, "torch CPU threads; 0 = torch's default")
    device: str = _f("auto", "auto (cuda when available, one GPU per torchrun rank) | cpu | cuda")
    precision: str = _f("fp32", "fp32 | bf16: the forward and backward under bfloat16 autocast, the weights and the "
                                "optimiser in fp32 (faster on CPUs with AVX512-BF16 or AMX and on GPUs)")

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
        if self.labels not in LABEL_SETS:
            raise ValueError(f"labels must be one of {LABEL_SETS}, got {self.labels!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mining not in MININGS:
            raise ValueError(f"mining must be one of {MININGS}, got {self.mining!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 2 or self.epochs < 1 or not self.lr > 0:
            raise ValueError("batch_size >= 2, epochs >= 1 and lr > 0 are required")
        if self.workers < 0 or self.checkpoint_every < 1 or self.max_steps < 0:
            raise ValueError("workers >= 0, checkpoint_every >= 1 and max_steps >= 0 are required")
        check_family_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        check_known_keys(cls, values, what="train config")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


_RETRIEVAL_ONLY = "descriptor-model training only"
# Fields a model family cannot use, and why: they must keep TrainConfig's default for that family.
UNSUPPORTED_FIELDS: dict[str, dict[str, str]] = {
    "descriptor": {
        "mirror": "mirrored worlds are drawn for bev region batches only (a retrieval pair has no region)",
        "fov_sampling": "a descriptor model needs a whole panorama (cameras that are not 360° need a bev model)",
    },
    "bev": {
        "ground_size": "a bev model's panorama size is model_overrides.pano_size",
        "aerial_size": "a bev model's tile size is model_overrides.tile_px",
        "pretrained_path": "bev models train from scratch (no ImageNet backbone)",
        "loss": "bev trains by cross-entropy over the region's camera positions",
        "mining": "a bev batch is one aerial region and the panoramas standing in it",
        "hybrid_start_epoch": f"the VIGOR hybrid loss is {_RETRIEVAL_ONLY}",
        "offset_weight": "bev has no offset head (the matched cell gives the offset)",
        "semi_positive_prob": f"semi-positive pairs are {_RETRIEVAL_ONLY}",
        "workers": "bev batches are cut from in-memory mosaics by one seeded random stream, in the main process",
    },
}


def check_family_fields(config: TrainConfig) -> None:
    """ValueError naming every field set away from its default that config.model's family cannot use."""
    family = model_family(config.model)
    defaults = TrainConfig.__dataclass_fields__
    bad = []
    for name, why in UNSUPPORTED_FIELDS[family].items():
        f = defaults[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(config, name) != (tuple(default) if isinstance(default, tuple) else default):
            bad.append(f"{name}={getattr(config, name)!r} ({why})")
    if bad:
        raise ValueError(f"model {config.model!r} (family {family}) cannot use: {'; '.join(bad)}; "
                         "leave these at their defaults")


def config_keys_help() -> str:
    """One line per TrainConfig key: name, default and meaning (crossview-train --help)."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name} (default {default!r}): {f.metadata['help']}")
    return "\n".join(lines)


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
    # No validation hold-out: every panorama trains, and the time budget goes to training.
    "cpu-bev": {"model": "bev_small", "epochs": 40, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
                "photometric": 0.3, "mirror": 0.5, "time_budget_min": 30.0, "threads": 2, "checkpoint_every": 100,
                "val_panoramas": 0},
    # The same for robots: panoramas in any heading (column 0 = forward); the runtime searches the
    # bearing, so training turns each panorama at random and its features back by the known bearing.
    "cpu-bev-any-yaw": {"model": "bev_small", "epochs": 40, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
                        "photometric": 0.3, "mirror": 0.5, "rotation_deg": 180.0, "time_budget_min": 30.0,
                        "threads": 2, "checkpoint_every": 100, "val_panoramas": 0},
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
    config = TrainConfig.from_dict(values)
    train_device(config)  # device=cuda on a machine without CUDA fails here, not after loading the data
    return config


def lr_at(step: int, total: int, peak: float, warmup_steps: int, final_fraction: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to final_fraction x peak at step `total`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return peak * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * t)))


def train_device(config: TrainConfig) -> torch.device:
    """The device a rank trains on: its own GPU under torchrun (LOCAL_RANK), else cuda:0, else CPU.

    device=cuda on a machine where torch sees no GPU is an error, never a quiet CPU run.
    """
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False; use device=cpu or auto")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
