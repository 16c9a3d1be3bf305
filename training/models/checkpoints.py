"""Weights in and out: ImageNet backbone weights, checkpoints and the model hash."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from crossview_training.models.descriptor import CrossViewModel

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A weight file does not fit the model: says which keys are missing, unexpected or misshapen."""


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state_dict from a torch.save'd or .safetensors file (a {"state_dict": ...} wrapper is unwrapped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a dict of name -> tensor)")
    return state


def key_report(missing: list[str], unexpected: list[str], misshapen: list[str], limit: int = 10) -> str:
    """Which keys of a state_dict do not fit, for an error message (at most `limit` of each kind)."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            parts.append(f"{len(keys)} {label} key(s): {shown}")
    return "; ".join(parts)


def load_pretrained_backbone(model: CrossViewModel, path: str | os.PathLike) -> None:
    """Load ImageNet weights for `model.config.backbone` from a local file into both backbones.

    Accepts the timm classification model's state_dict (torch.save'd or .safetensors; the
    classifier and other layers past the last conv map are ignored) or a backbone's own
    state_dict (`model.ground_backbone.state_dict()`, keys prefixed `model.`). Strict otherwise:
    any missing, unexpected or misshapen key raises WeightsError naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pretrained weights file {path} does not exist; pass the path of a local "
                           f"{model.config.backbone} ImageNet state_dict (weights are never downloaded)")
    state = read_state_dict(path)
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    target = model.ground_backbone.model
    wanted = target.state_dict()
    with torch.device("meta"):
        full_keys = set(timm.create_model(model.config.backbone, pretrained=False).state_dict())
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - full_keys - set(wanted))
    misshapen = sorted(f"{k} {tuple(state[k].shape)} != {tuple(wanted[k].shape)}"
                       for k in set(wanted) & set(state) if state[k].shape != wanted[k].shape)
    if missing or unexpected or misshapen:
        raise WeightsError(f"{path} does not fit backbone {model.config.backbone}: "
                           f"{key_report(missing, unexpected, misshapen)}")
    subset = {k: state[k] for k in wanted}
    model.ground_backbone.model.load_state_dict(subset, strict=True)
    model.aerial_backbone.model.load_state_dict(subset, strict=True)
    log.info("loaded ImageNet weights for both %s backbones from %s (%d tensors, %d ignored past the "
             "feature level)", model.config.backbone, path, len(subset), len(state) - len(subset))


def model_hash(model: nn.Module) -> str:
    """"sha256:<hex>" over the state_dict: per key in sorted order, its name, dtype, shape and bytes.

    Same weights give the same hash whatever the device or the order modules were built in;
    any change of a weight, buffer, name or shape changes it.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write {"model_name", "model_config", "state_dict", **extra} atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model_name": model.name, "model_config": model.config.to_dict(),
               "state_dict": model.state_dict(), **extra}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict train.py writes: {"model_name", "model_config", "state_dict", ...}.

    Read with torch.load(weights_only=True): it may hold tensors, numbers, strings, lists and
    dicts only. Optional keys other tools read: "tile_size_m" (L of the offset targets) and
    "train_config" (dict), both copied into the export metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    required = ("model_name", "model_config", "state_dict")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in required):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"{path} is not a crossview checkpoint: needs keys {list(required)}, has {have}")
    return ckpt

