"""Export of the descriptor family: ground/aerial encoders and the offset head to ONNX, with model.json.

  ground.onnx   image (B, 3, Hg, Wg) -> descriptor (B, D) L2-normalised, features (B, C, hg, wg)
  aerial.onnx   image (B, 3, Ha, Wa) -> descriptor (B, D) L2-normalised, features (B, C, ha, wa)
  offset.onnx   ground (B, D), aerial (B, D) -> offset (B, 2) = (dE, dN) / L (VIGOR section 4.3)
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crossview_ros.atomic import write_json_atomic
from crossview_ros.model_meta import (
    AERIAL_GRAPH, GRAPHS, GROUND_GRAPH, METADATA_FILE, MODEL_FORMAT, MODEL_FORMAT_VERSION, OFFSET_GRAPH, sha256_file,
)
from crossview_training.export_common import (
    LAYOUT, MIN_OPSET, PARITY_BATCHES, TOLERANCES, ExportError, check_target, compare, export_graph, load_check_images,
)
from crossview_training.models import CrossViewModel, model_hash

log = logging.getLogger(__name__)


class EncoderGraph(nn.Module):
    """One view's encoder as a graph: image -> (descriptor, features)."""

    def __init__(self, model: CrossViewModel, view: str) -> None:
        super().__init__()
        self.model = model
        self.view = view

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image (B, 3, H, W) -> descriptor (B, D), features (B, C, h, w)."""
        if self.view == "ground":
            return self.model.ground_outputs(image)
        return self.model.aerial_outputs(image)


class OffsetGraph(nn.Module):
    """The offset head as a graph: (ground, aerial) descriptors -> offset."""

    def __init__(self, model: CrossViewModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ground: Tensor, aerial: Tensor) -> Tensor:
        """ground (B, D), aerial (B, D) -> (B, 2) = (dE, dN) / L."""
        return self.model.offset(ground, aerial)


def descriptor_parity(work: Path, model: CrossViewModel, images: dict[str, Tensor] | None, seed: int) -> dict[str, Any]:
    """Run each graph in onnxruntime (CPU) and PyTorch on the same inputs; max abs error per output."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    sessions = {name: ort.InferenceSession(str(work / name), providers=["CPUExecutionProvider"]) for name in GRAPHS}
    worst: dict[str, dict[str, float]] = {name: {} for name in GRAPHS}

    def record(graph: str, output: str, err: float) -> None:
        worst[graph][output] = max(worst[graph].get(output, 0.0), err)

    cases: list[tuple[str, Tensor, Tensor]] = []
    for b in PARITY_BATCHES:
        cases.append((f"random batch {b}", torch.randn(b, 3, *cfg.ground_size, generator=gen),
                      torch.randn(b, 3, *cfg.aerial_size, generator=gen)))
    if images:
        cases.append(("check images", images.get("ground", torch.empty(0)), images.get("aerial", torch.empty(0))))

    for where, pano, sat in cases:
        descs = {}
        for view, graph, x in (("ground", GROUND_GRAPH, pano), ("aerial", AERIAL_GRAPH, sat)):
            if x.numel() == 0:
                continue
            with torch.no_grad():
                desc, feats = model.ground_outputs(x) if view == "ground" else model.aerial_outputs(x)
            got_desc, got_feats = sessions[graph].run(["descriptor", "features"], {"image": x.numpy()})
            record(graph, "descriptor", compare("descriptor", got_desc, desc.numpy(), graph, where))
            record(graph, "features", compare("features", got_feats, feats.numpy(), graph, where))
            descs[view] = desc
        n = min(len(descs.get("ground", ())), len(descs.get("aerial", ())))
        if n == 0:
            continue
        g, a = descs["ground"][:n], descs["aerial"][:n]
        with torch.no_grad():
            want = model.offset(g, a)
        (got,) = sessions[OFFSET_GRAPH].run(["offset"], {"ground": g.numpy(), "aerial": a.numpy()})
        record(OFFSET_GRAPH, "offset", compare("offset", got, want.numpy(), OFFSET_GRAPH, where))

    return {
        "provider": "CPUExecutionProvider",
        "onnxruntime_version": ort.__version__,
        "checked_on": [where for where, _, _ in cases],
        "check_images": {view: int(x.shape[0]) for view, x in (images or {}).items()},
        "files": {graph: {out: {"atol": TOLERANCES[out][0], "rtol": TOLERANCES[out][1], "max_abs_err": err}
                          for out, err in outs.items()} for graph, outs in worst.items()},
    }


def _export_graphs(model: CrossViewModel, work: Path, opset: int) -> None:
    cfg = model.config
    pano = torch.zeros(1, 3, *cfg.ground_size)
    sat = torch.zeros(1, 3, *cfg.aerial_size)
    desc = torch.zeros(1, cfg.dim)
    encoder_outputs = ["descriptor", "features"]
    export_graph(EncoderGraph(model, "ground"), (pano,), work / GROUND_GRAPH, opset, ["image"], encoder_outputs)
    export_graph(EncoderGraph(model, "aerial"), (sat,), work / AERIAL_GRAPH, opset, ["image"], encoder_outputs)
    export_graph(OffsetGraph(model), (desc, desc), work / OFFSET_GRAPH, opset, ["ground", "aerial"], ["offset"])


def _metadata(model: CrossViewModel, digest: str, opset: int, files: dict[str, str], parity: dict[str, Any],
              tile_size_m: float | None, train_config: dict[str, Any] | None) -> dict[str, Any]:
    import onnx
    import timm

    cfg = model.config
    d = cfg.dim

    def image_input(size: tuple[int, int]) -> dict[str, Any]:
        return {"size": list(size), "mean": list(cfg.mean), "std": list(cfg.std), "layout": LAYOUT}

    def encoder_io(size: tuple[int, int], feat: tuple[int, int, int]) -> dict[str, Any]:
        return {"inputs": {"image": ["batch", 3, *size]},
                "outputs": {"descriptor": ["batch", d], "features": ["batch", *feat]}}

    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_hash": digest,
        "name": model.name,
        "config": cfg.to_dict(),
        "train_config": train_config,
        "inputs": {"ground": image_input(cfg.ground_size), "aerial": image_input(cfg.aerial_size)},
        "descriptor_dim": d,
        "outputs": {
            "descriptor": {"dim": d, "dtype": "float32", "l2_normalised": True,
                           "similarity": "cosine (dot product of the normalised descriptors)"},
            "ground_features": {"shape": list(model.ground_feature_shape), "stride_px": model.feature_stride},
            "aerial_features": {"shape": list(model.aerial_feature_shape), "stride_px": model.feature_stride},
            "offset": {"shape": [2], "meaning": "(dE, dN) / L of the camera relative to the tile centre, "
                                                "east and north (VIGOR section 4.3)",
                       "tile_size_m": tile_size_m},
        },
        "onnx": {
            "opset": opset,
            "dynamic_axes": {"batch": 0},
            "files": files,
            "graphs": {
                GROUND_GRAPH: encoder_io(cfg.ground_size, model.ground_feature_shape),
                AERIAL_GRAPH: encoder_io(cfg.aerial_size, model.aerial_feature_shape),
                OFFSET_GRAPH: {"inputs": {"ground": ["batch", d], "aerial": ["batch", d]},
                                "outputs": {"offset": ["batch", 2]}},
            },
        },
        "parity": parity,
        "exported_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "onnx_version": onnx.__version__,
    }


def export_descriptor_onnx(model: CrossViewModel, out_dir: str | os.PathLike, *, opset: int = MIN_OPSET,
                check_images: str | os.PathLike | None = None, overwrite: bool = False,
                tile_size_m: float | None = None, train_config: dict[str, Any] | None = None,
                seed: int = 0) -> Path:
    """Export the three graphs and model.json into out_dir (module docstring); returns out_dir.

    Refuses (ExportError) an out_dir that holds another model's export unless overwrite; the
    same model's export is replaced. `tile_size_m` is L of the offset targets, recorded so the
    runtime can turn the offset into metres. The model is not modified (a CPU copy is exported
    when it lives elsewhere).
    """
    if tile_size_m is not None and not tile_size_m > 0:
        raise ExportError(f"tile_size_m must be positive, got {tile_size_m}")
    out_dir = Path(out_dir)
    source, was_training = model, model.training
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    try:
        model.eval()
        digest = model_hash(model)
        check_target(out_dir, digest, overwrite)
        cfg = model.config
        images = (load_check_images(check_images, cfg.ground_size, cfg.aerial_size, cfg.mean, cfg.std)
                  if check_images is not None else None)
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
        try:
            _export_graphs(model, work, opset)
            if model_hash(model) != digest:
                raise ExportError("the model's weights changed during export (a module ran in training "
                                  "mode); this is a bug in the export wrappers")
            parity = descriptor_parity(work, model, images, seed)
            files = {name: sha256_file(work / name) for name in GRAPHS}
            meta = _metadata(model, digest, opset, files, parity, tile_size_m, train_config)
            (out_dir / METADATA_FILE).unlink(missing_ok=True)  # no stale metadata ever describes new graphs
            for name in GRAPHS:
                os.replace(work / name, out_dir / name)
            write_json_atomic(out_dir / METADATA_FILE, meta, sort_keys=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        source.train(was_training)
    log.info("exported %s (%s) to %s", model.name, digest, out_dir)
    return out_dir
