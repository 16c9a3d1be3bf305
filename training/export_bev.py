"""Export of the bev family: ground.onnx, aerial.onnx and match.onnx with model.json (matching kind "bev").

  ground.onnx   panorama (B, 3, H, W) -> camera-frame BEV features flattened, and (B, C, K, K)
  aerial.onnx   tile (B, 3, T, T) -> its central feature block flattened (the tile set's descriptor),
                and the full feature map
  match.onnx    ground (1, C, K, K), padded aerial map (1, C, H, W) -> scores (1, R, H', W')
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossview_ros.atomic import write_json_atomic
from crossview_ros.model_meta import (
    AERIAL_GRAPH, BEV_GRAPHS, GROUND_GRAPH, MATCH_GRAPH, METADATA_FILE, MODEL_FORMAT, MODEL_FORMAT_VERSION,
    OFFSET_GRAPH, sha256_file,
)
from crossview_training.bev.model import STRIDE, BevModel, rotation_grid
from crossview_training.export_common import (
    LAYOUT, PARITY_BATCHES, ExportError, check_target, compare, export_graph, load_check_images,
)
from crossview_training.models import model_hash

log = logging.getLogger(__name__)

MATCH_ROTATIONS = 36  # camera bearings searched at run time (10 deg apart; refined by a parabola)
MATCH_STRIDE = 2  # positions scored by match.onnx: every other cell (refined at stride 1 near the peak)


class BevGroundGraph(nn.Module):
    """panorama -> (camera-frame features flattened, camera-frame features (B, C, K, K))."""

    def __init__(self, model: BevModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.model.ground_features(image)
        return feats.flatten(1), feats


class BevAerialGraph(nn.Module):
    """tile -> (central block flattened: the tile set's descriptor, full feature map)."""

    def __init__(self, model: BevModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.model.aerial_features(image)
        return self.model.block(feats).flatten(1), feats


class MatchGraph(nn.Module):
    """(ground (1, C, K, K) camera frame, padded aerial map (1, C, H, W)) -> scores (1, R, H', W').

    scores[0, r, i, j]: mean cosine with the camera facing bearing r x 360 / R (clockwise from
    north) and standing on the corner of cell (STRIDE_M i, STRIDE_M j) of the unpadded map.
    """

    def __init__(self, model: BevModel, rotations: int, stride: int) -> None:
        super().__init__()
        self.model = model
        self.stride = stride
        bearings = torch.arange(rotations, dtype=torch.float64) * 2 * math.pi / rotations
        self.register_buffer("grid", rotation_grid(bearings, model.config.kernel_cells), persistent=False)

    def forward(self, ground: Tensor, aerial_map: Tensor) -> Tensor:
        kernels = F.grid_sample(ground[:1].expand(self.grid.shape[0], -1, -1, -1), self.grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False) * self.model.mask
        return F.conv2d(aerial_map, kernels, stride=self.stride) / self.model.mask.sum()


def pad_map(features: Tensor, k: int) -> Tensor:
    """An aerial feature map padded so that position (i, j) puts the camera on the corner of cell (i, j)."""
    return F.pad(features, (k // 2, k // 2 - 1, k // 2, k // 2 - 1))


def _export_graphs(model: BevModel, work: Path, opset: int) -> MatchGraph:
    """The three graphs into `work`; returns the match graph (parity runs it)."""
    cfg = model.config
    c, k = cfg.feature_dim, cfg.kernel_cells
    pano = torch.zeros(1, 3, *cfg.pano_size)
    sat = torch.zeros(1, 3, cfg.tile_px, cfg.tile_px)
    export_graph(BevGroundGraph(model), (pano,), work / GROUND_GRAPH, opset, ["image"], ["descriptor", "features"])
    export_graph(BevAerialGraph(model), (sat,), work / AERIAL_GRAPH, opset, ["image"], ["descriptor", "features"])
    match = MatchGraph(model, MATCH_ROTATIONS, MATCH_STRIDE).eval()  # export restores the mode it finds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(match, (torch.zeros(1, c, k, k), torch.zeros(1, c, 3 * k, 3 * k)), str(work / MATCH_GRAPH),
                          dynamo=False, opset_version=opset, input_names=["ground", "aerial_map"],
                          output_names=["scores"], do_constant_folding=True,
                          dynamic_axes={"ground": {0: "batch"}, "aerial_map": {0: "batch", 2: "h", 3: "w"},
                                        "scores": {0: "batch", 2: "h_out", 3: "w_out"}})
    return match


def bev_parity(work: Path, model: BevModel, match: MatchGraph, images: dict[str, Tensor] | None,
               seed: int) -> dict[str, Any]:
    """Every graph in onnxruntime (CPU) against PyTorch on random inputs (and check images); max abs errors."""
    import onnxruntime as ort

    cfg = model.config
    k = cfg.kernel_cells
    gen = torch.Generator().manual_seed(seed)
    sessions = {f: ort.InferenceSession(str(work / f), providers=["CPUExecutionProvider"]) for f in BEV_GRAPHS}
    worst: dict[str, dict[str, float]] = {f: {} for f in BEV_GRAPHS}
    cases = [(f"random batch {b}", torch.randn(b, 3, *cfg.pano_size, generator=gen),
              torch.randn(b, 3, cfg.tile_px, cfg.tile_px, generator=gen)) for b in PARITY_BATCHES]
    if images:
        cases.append(("check images", images.get("ground", torch.empty(0)), images.get("aerial", torch.empty(0))))
    for where, x, y in cases:
        refs = {}
        for f, graph, inp in ((GROUND_GRAPH, BevGroundGraph(model), x), (AERIAL_GRAPH, BevAerialGraph(model), y)):
            if inp.numel() == 0:
                continue
            with torch.no_grad():
                refs[f] = graph(inp)
            got = sessions[f].run(["descriptor", "features"], {"image": inp.numpy()})
            for name, g, r in zip(("descriptor", "features"), got, refs[f]):
                worst[f][name] = max(worst[f].get(name, 0.0), compare(name, g, r.numpy(), f, where))
        if len(refs) < 2:
            continue
        ground, aerial = refs[GROUND_GRAPH][1][:1], pad_map(refs[AERIAL_GRAPH][1][:1], k)
        with torch.no_grad():
            m_ref = match(ground, aerial)
        (got,) = sessions[MATCH_GRAPH].run(["scores"], {"ground": ground.numpy(), "aerial_map": aerial.numpy()})
        worst[MATCH_GRAPH]["scores"] = max(worst[MATCH_GRAPH].get("scores", 0.0),
                                           compare("features", got, m_ref.numpy(), MATCH_GRAPH, where))
    return {"provider": "CPUExecutionProvider", "onnxruntime_version": ort.__version__,
            "checked_on": [where for where, _, _ in cases],
            "check_images": {view: int(t.shape[0]) for view, t in (images or {}).items()},
            "files": {f: {o: {"max_abs_err": e} for o, e in outs.items()} for f, outs in worst.items()}}


def bev_metadata(model: BevModel, digest: str, opset: int, files: dict[str, str], parity: dict[str, Any],
                 train_config: dict[str, Any] | None) -> dict[str, Any]:
    """model.json of a bev export (matching.kind "bev")."""
    cfg = model.config
    c, k = cfg.feature_dim, cfg.kernel_cells
    side = cfg.tile_px // STRIDE
    image = {"mean": list(cfg.mean), "std": list(cfg.std), "layout": LAYOUT}
    d = c * cfg.block_cells ** 2
    return {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "model_hash": digest, "name": model.name,
        "config": cfg.to_dict(), "train_config": train_config,
        "matching": {"kind": "bev", "rotations": MATCH_ROTATIONS, "match_stride": MATCH_STRIDE,
                     "kernel_cells": k, "block_cells": cfg.block_cells, "cell_m": cfg.cell_m,
                     "tile_size_m": cfg.tile_size_m, "camera_height_m": cfg.camera_height_m,
                     "logit_scale": float(model.logit_scale.detach()),
                     "meaning": "descriptor of a tile = its central feature block (C, b, b) flattened; "
                                "the blocks of a 50 % overlap tile set tile the plane; match.onnx scores "
                                "camera positions (cell corners, every match_stride cells) and bearings"},
        "inputs": {"ground": {"size": list(cfg.pano_size), **image},
                   "aerial": {"size": [cfg.tile_px, cfg.tile_px], **image}},
        "descriptor_dim": d,
        "outputs": {
            "descriptor": {"dim": d, "dtype": "float32", "l2_normalised": False,
                           "similarity": "correlation with the rotated ground features (match.onnx)"},
            "ground_features": {"shape": [c, k, k], "stride_px": STRIDE},
            "aerial_features": {"shape": [c, side, side], "stride_px": STRIDE},
            "offset": {"tile_size_m": cfg.tile_size_m, "meaning": "from the matched position"},
        },
        "onnx": {
            "opset": opset, "dynamic_axes": {"batch": 0}, "files": files,
            "graphs": {
                GROUND_GRAPH: {"inputs": {"image": ["batch", 3, *cfg.pano_size]},
                               "outputs": {"descriptor": ["batch", c * k * k], "features": ["batch", c, k, k]}},
                AERIAL_GRAPH: {"inputs": {"image": ["batch", 3, cfg.tile_px, cfg.tile_px]},
                               "outputs": {"descriptor": ["batch", d], "features": ["batch", c, side, side]}},
                MATCH_GRAPH: {"inputs": {"ground": ["batch", c, k, k], "aerial_map": ["batch", c, "h", "w"]},
                              "outputs": {"scores": ["batch", MATCH_ROTATIONS, "h_out", "w_out"]}},
            },
        },
        "parity": parity,
        "exported_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch_version": torch.__version__,
    }


def export_bev_onnx(model: BevModel, out_dir: str | os.PathLike, *, opset: int, overwrite: bool = False,
                    check_images: str | os.PathLike | None = None, train_config: dict[str, Any] | None = None,
                    seed: int = 0) -> Path:
    """ground.onnx, aerial.onnx, match.onnx and model.json into out_dir (a CPU float32 model, eval mode)."""
    cfg = model.config
    model = model.eval()
    digest = model_hash(model)
    out_dir = Path(out_dir)
    check_target(out_dir, digest, overwrite)
    images = (load_check_images(check_images, cfg.pano_size, (cfg.tile_px, cfg.tile_px), cfg.mean, cfg.std)
              if check_images is not None else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        match = _export_graphs(model, work, opset)
        if model_hash(model) != digest:
            raise ExportError("the model's weights changed during export; this is a bug in the export wrappers")
        parity = bev_parity(work, model, match, images, seed)
        files = {f: sha256_file(work / f) for f in BEV_GRAPHS}
        meta = bev_metadata(model, digest, opset, files, parity, train_config)
        (out_dir / METADATA_FILE).unlink(missing_ok=True)
        (out_dir / OFFSET_GRAPH).unlink(missing_ok=True)  # a descriptor export's graph that no longer belongs
        for f in BEV_GRAPHS:
            os.replace(work / f, out_dir / f)
        write_json_atomic(out_dir / METADATA_FILE, meta, sort_keys=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s (%s) to %s", model.name, digest, out_dir)
    return out_dir
