"""The one model registry: every preset of every family is created by create_model(name, **overrides).

Families (FAMILIES):
- "descriptor": Siamese encoders to one L2-normalised descriptor space plus an offset head
  (crossview_training.models.descriptor; presets in MODELS, ModelConfig overrides);
- "bev": the top-down correlation model (crossview_training.bev; BevConfig overrides).

timm-style: register_model(name, family, config_class, model_class, preset) adds a name;
create_model builds `model_class(config_class.from_dict({**preset, **overrides}), name=name)`, so a
checkpoint's (model_name, model_config) rebuilds the same model (model_from_checkpoint).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from crossview_training.bev.model import BevConfig, BevModel
from crossview_training.models.checkpoints import (
    WeightsError, key_report, load_pretrained_backbone, model_hash, read_checkpoint, read_state_dict, save_checkpoint,
)
from crossview_training.models.descriptor import (
    AGGREGATORS, BACKBONE_ALIASES, IMAGENET_MEAN, IMAGENET_STD, MODELS, SAFA, CrossViewModel, GeM, GeMFC, ModelConfig,
    NetVLAD, OffsetHead, create_backbone, polar_grid, resolve_backbone,
)

log = logging.getLogger(__name__)

FAMILIES = ("descriptor", "bev")


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: its family, how its config and model are built, and its preset values."""

    name: str
    family: str
    config_class: type
    model_class: type
    preset: Mapping[str, Any]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, family: str, config_class: type, model_class: type,
                   preset: Mapping[str, Any] | None = None) -> ModelEntry:
    """Add `name` to the registry (a name is registered once; the family must be one of FAMILIES)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid families: {', '.join(FAMILIES)}")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    entry = ModelEntry(name, family, config_class, model_class, dict(preset or {}))
    _REGISTRY[name] = entry
    return entry


for _name, _preset in MODELS.items():
    register_model(_name, "descriptor", ModelConfig, CrossViewModel, _preset)
# Geometry and widths of BevConfig's defaults: VIGOR's tile, a 16-cell (+-14.6 m) view, 32 channels.
register_model("bev_small", "bev", BevConfig, BevModel)


def list_models(family: str | None = None) -> list[str]:
    """Names accepted by create_model, sorted; only those of `family` when given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid families: {', '.join(FAMILIES)}")
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; unknown names raise ValueError listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_family(name: str) -> str:
    """Family of a registered name (ValueError listing the valid names otherwise)."""
    return model_entry(name).family


def create_model(name: str, *, pretrained_path: str | os.PathLike | None = None, **overrides: Any) -> nn.Module:
    """The one factory: preset `name` with config `overrides`; ImageNet weights from a local file.

    Descriptor models: with `pretrained_path`, both backbones load that file strictly
    (load_pretrained_backbone); without it they stay randomly initialised and a log line says so.
    Nothing is downloaded. BEV models train from scratch: a pretrained_path is refused.
    """
    entry = model_entry(name)
    config = entry.config_class.from_dict({**entry.preset, **overrides})
    if entry.family == "bev" and pretrained_path is not None:
        raise ValueError(f"model {name!r} (family bev) has no ImageNet backbone; pretrained_path must be unset")
    model = entry.model_class(config, name=name)
    if entry.family == "descriptor":
        if pretrained_path is None:
            log.info("no ImageNet weights given (pretrained_path=None): %s backbones randomly initialised",
                     config.backbone)
        else:
            load_pretrained_backbone(model, pretrained_path)
    return model


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint dict describes and load its weights strictly (eval mode).

    The family comes from the registered name; names outside the registry (a custom descriptor
    model) are descriptor models, as every checkpoint was before the bev family existed.
    """
    name = str(ckpt["model_name"])
    entry = _REGISTRY.get(name)
    config_class, model_class = (entry.config_class, entry.model_class) if entry else (ModelConfig, CrossViewModel)
    model = model_class(config_class.from_dict(dict(ckpt["model_config"])), name=name)
    state = ckpt["state_dict"]
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    misshapen = sorted(f"{k} {tuple(state[k].shape)} != {tuple(wanted[k].shape)}"
                       for k in set(wanted) & set(state) if state[k].shape != wanted[k].shape)
    if missing or unexpected or misshapen:
        raise WeightsError(f"{source} does not fit its model config ({name}): "
                           f"{key_report(missing, unexpected, misshapen)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Model of a checkpoint file (read_checkpoint), weights loaded strictly, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path), source=f"checkpoint {path}")


__all__ = [
    "AGGREGATORS", "BACKBONE_ALIASES", "FAMILIES", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "CrossViewModel", "GeM",
    "GeMFC", "ModelConfig", "ModelEntry", "NetVLAD", "OffsetHead", "SAFA", "WeightsError", "create_backbone",
    "create_model", "key_report", "list_models", "load_checkpoint", "load_pretrained_backbone",
    "model_entry", "model_family", "model_from_checkpoint", "model_hash", "polar_grid", "read_checkpoint",
    "read_state_dict", "register_model", "resolve_backbone", "save_checkpoint",
]
