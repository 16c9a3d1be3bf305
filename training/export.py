"""crossview-export: a trained model of either family to ONNX graphs plus the model.json the runtime reads.

`export_onnx(model, out_dir)` dispatches on the model:

  descriptor models (crossview_training.export_descriptor): ground.onnx, aerial.onnx, offset.onnx
  bev models (crossview_training.export_bev): ground.onnx, aerial.onnx, match.onnx

and writes model.json beside them: format "crossview_ros.model" (the schema's names come from
crossview_ros.model_meta), preprocessing, sizes, descriptor size, tile size L, model hash, model
and training config, sha256 of each graph, parity figures. `export_checkpoint(ckpt, out)` does
the same from a checkpoint of crossview-train (what `crossview-export onnx` runs).

Opset >= 17, batch axis dynamic (H and W are fixed: SAFA's FC layers act on the flattened map).
Every graph is compared with PyTorch through onnxruntime's CPU provider on random inputs at batch
1 and 3, and on real images when given; outputs must agree within TOLERANCES, else nothing is
written. Graphs are exported and checked in a scratch folder inside out_dir, moved into place,
and model.json is written last, atomically, so a model.json always describes the files beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossview_ros.model_meta import GRAPHS, METADATA_FILE
from crossview_training.bev.model import BevModel
from crossview_training.export_bev import export_bev_onnx
from crossview_training.export_common import (
    FEATURE_ATOL_PER_SCALE, MAX_CHECK_IMAGES, MIN_OPSET, PROG, TOLERANCES, ExportError, read_metadata,
)
from crossview_training.export_descriptor import export_descriptor_onnx
from crossview_training.models import CrossViewModel, WeightsError, model_from_checkpoint, read_checkpoint

log = logging.getLogger(__name__)

__all__ = ["FEATURE_ATOL_PER_SCALE", "GRAPHS", "MAX_CHECK_IMAGES", "MIN_OPSET", "TOLERANCES", "ExportError",
           "export_checkpoint", "export_onnx", "main", "read_metadata"]


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, opset: int = MIN_OPSET,
                check_images: str | os.PathLike | None = None, overwrite: bool = False,
                tile_size_m: float | None = None, train_config: dict[str, Any] | None = None,
                seed: int = 0) -> Path:
    """Export a model of either family and its model.json into out_dir (module docstring); returns out_dir.

    Refuses (ExportError) an out_dir that holds another model's export unless overwrite; the
    same model's export is replaced. `tile_size_m` is L of a descriptor model's offset targets
    (a bev model carries its own: a different value is refused). The model is not modified.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}: the runtime needs opset >= {MIN_OPSET}")
    if isinstance(model, BevModel):
        if tile_size_m is not None and abs(tile_size_m - model.config.tile_size_m) > 1e-9:
            raise ExportError(f"tile_size_m {tile_size_m} differs from the bev model's own "
                              f"{model.config.tile_size_m} (its geometry is built on it)")
        was_training = model.training
        try:
            return export_bev_onnx(copy.deepcopy(model).to(device="cpu", dtype=torch.float32), out_dir,
                                   opset=opset, overwrite=overwrite, check_images=check_images,
                                   train_config=train_config, seed=seed)
        finally:
            model.train(was_training)
    if isinstance(model, CrossViewModel):
        return export_descriptor_onnx(model, out_dir, opset=opset, check_images=check_images, overwrite=overwrite,
                                      tile_size_m=tile_size_m, train_config=train_config, seed=seed)
    raise ExportError(f"cannot export a {type(model).__name__}: not a model of crossview_training.models")


def export_checkpoint(checkpoint: Path, out: Path, *, check_images: Path | None = None,
                      overwrite: bool = False, opset: int = MIN_OPSET, tile_size_m: float | None = None) -> Path:
    """Export the model of a crossview-train checkpoint (either family) into `out`; returns `out`.

    L of the offsets comes from `tile_size_m`, else the checkpoint's tile_size_m (a warning when
    neither has it); the checkpoint's train_config is copied into model.json.
    """
    ckpt = read_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, source=f"checkpoint {checkpoint}")
    if tile_size_m is None and ckpt.get("tile_size_m") is not None:
        tile_size_m = float(ckpt["tile_size_m"])
    if tile_size_m is None and isinstance(model, CrossViewModel):
        log.warning("no tile size L recorded (checkpoint has no tile_size_m, no --tile-size-m): the runtime "
                    "cannot turn offsets into metres without it")
    train_config = ckpt.get("train_config")
    return export_onnx(model, out, opset=opset, check_images=check_images, overwrite=overwrite,
                       tile_size_m=tile_size_m,
                       train_config=json.loads(json.dumps(train_config, default=str)) if train_config else None)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export a trained crossview model for the runtime.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{onnx}")
    o = sub.add_parser(
        "onnx", help="a checkpoint's model (descriptor or bev) to ONNX graphs, with model.json",
        description="Write DIR/ground.onnx, aerial.onnx and offset.onnx (descriptor models) or match.onnx "
                    "(bev models), opset >= 17 with a dynamic batch, and DIR/model.json (preprocessing, sizes, "
                    "descriptor size, tile size, model hash, sha256 of each graph). Each graph must match "
                    "PyTorch through onnxruntime (CPU) on random inputs, and on real images with --check-images.",
    )
    o.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint written by crossview-train")
    o.add_argument("--out", required=True, metavar="DIR", help="export directory (created if missing)")
    o.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset, >= {MIN_OPSET} (default {MIN_OPSET})")
    o.add_argument("--check-images", metavar="DIR",
                   help="VIGOR city folder whose panorama/ and satellite/ images (first "
                        f"{MAX_CHECK_IMAGES} of each) join the parity check")
    o.add_argument("--tile-size-m", type=float, metavar="L",
                   help="tile side L in metres that the offset is normalised by (default: the checkpoint's "
                        "tile_size_m, else unrecorded)")
    o.add_argument("--overwrite", action="store_true",
                   help="replace an export of another model in DIR (default: refuse)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-export; returns the exit code (2 for bad input or a failed check)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export_checkpoint(Path(args.checkpoint), Path(args.out), check_images=args.check_images,
                                overwrite=args.overwrite, opset=args.opset, tile_size_m=args.tile_size_m)
    except (ExportError, WeightsError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(out / METADATA_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
