"""crossview-export: a trained CrossViewModel to ONNX graphs plus the metadata the runtime reads.

`export_onnx(model, out_dir)` writes into out_dir:

  ground.onnx   image (B, 3, Hg, Wg) -> descriptor (B, D) L2-normalised, features (B, C, hg, wg)
  aerial.onnx   image (B, 3, Ha, Wa) -> descriptor (B, D) L2-normalised, features (B, C, ha, wa)
  offset.onnx   ground (B, D), aerial (B, D) -> offset (B, 2) = (dE, dN) / L (VIGOR section 4.3)
  model.json    format "crossview_ros.model" v1: preprocessing, sizes, descriptor size, tile size L,
                model hash, model and training config, sha256 of each graph, parity figures

Opset >= 17, batch axis dynamic (H and W are fixed: SAFA's FC layers act on the flattened map).
Every graph passes onnx.checker and is compared with PyTorch through onnxruntime's CPU provider
on random inputs at batch 1 and 3, and on real images when given; outputs must agree within
TOLERANCES (np.allclose semantics: |onnx - torch| <= atol + rtol |torch|; the features atol also grows
with the map's largest value, FEATURE_ATOL_PER_SCALE), else nothing is written.
Graphs are exported and checked in a scratch folder inside out_dir, moved into place, and
model.json is written last, atomically, so a model.json always describes the files beside it.

The runtime reads model.json without torch (crossview_ros/engines.py): keep it self-describing.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossview_ros.atomic import write_json_atomic
from crossview_ros.model_meta import sha256_file
from crossview_training.models import (
    CrossViewModel, WeightsError, model_from_checkpoint, model_hash, read_checkpoint,
)

log = logging.getLogger(__name__)

PROG = "crossview-export"
FORMAT = "crossview_ros.model"
FORMAT_VERSION = 1
METADATA = "model.json"
GRAPHS = ("ground.onnx", "aerial.onnx", "offset.onnx")
MIN_OPSET = 17
LAYOUT = "NCHW RGB float32 0..1 then normalised"
PARITY_BATCHES = (1, 3)  # random-input batch sizes run through each graph (1 and >1: the batch axis is dynamic)
MAX_CHECK_IMAGES = 4  # real images per view taken from --check-images
# Output -> (atol, rtol). Measured with random weights on all five presets at 64x128 / 64x64 and on
# "small" at 320x640 / 320x320: max abs error <= 3e-7 on descriptors, <= 2e-8 on offsets, <= 5e-5
# on feature maps; the bounds leave room for the larger activations of trained weights.
TOLERANCES: dict[str, tuple[float, float]] = {
    "descriptor": (1e-4, 0.0),
    "features": (1e-3, 1e-3),
    "offset": (1e-4, 1e-3),
}


class ExportError(RuntimeError):
    """Export refused or failed a check; the message says what and how to fix it."""


class _EncoderGraph(nn.Module):
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


class _OffsetGraph(nn.Module):
    """The offset head as a graph: (ground, aerial) descriptors -> offset."""

    def __init__(self, model: CrossViewModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ground: Tensor, aerial: Tensor) -> Tensor:
        """ground (B, D), aerial (B, D) -> (B, 2) = (dE, dN) / L."""
        return self.model.offset(ground, aerial)


def read_metadata(out_dir: str | os.PathLike, *, verify_files: bool = True) -> dict[str, Any]:
    """model.json of an export; with verify_files the graphs must exist and match their sha256."""
    out_dir = Path(out_dir)
    path = out_dir / METADATA
    if not path.is_file():
        raise ExportError(f"{path} not found: not a crossview model export (run `{PROG} onnx`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}; re-export with `{PROG} onnx --overwrite`") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} is format {meta.get('format')!r} v{meta.get('format_version')}, "
                          f"expected {FORMAT!r} v{FORMAT_VERSION}")
    if verify_files:
        for name, digest in meta["onnx"]["files"].items():
            graph = out_dir / name
            if not graph.is_file():
                raise ExportError(f"{graph} listed in {path} is missing; re-export with `{PROG} onnx --overwrite`")
            if sha256_file(graph) != digest:
                raise ExportError(f"{graph} does not match the sha256 in {path} (changed or half-written); "
                                  f"re-export with `{PROG} onnx --overwrite`")
    return meta


def _check_target(out_dir: Path, new_hash: str, overwrite: bool) -> None:
    """Refuse to replace another model's export (or an unknown one) unless overwrite."""
    if overwrite or not out_dir.exists():
        return
    if (out_dir / METADATA).is_file():
        try:
            old_hash = read_metadata(out_dir, verify_files=False).get("model_hash")
        except ExportError as exc:
            raise ExportError(f"{out_dir} holds an unreadable export ({exc}); pass --overwrite to replace it") from exc
        if old_hash != new_hash:
            raise ExportError(f"{out_dir} holds the export of another model ({old_hash}, this one is {new_hash}); "
                              "choose another --out or pass --overwrite to replace it")
        return
    present = [name for name in GRAPHS if (out_dir / name).exists()]
    if present:
        raise ExportError(f"{out_dir} holds {', '.join(present)} without {METADATA} (unknown model); "
                          "choose another --out or pass --overwrite to replace them")


def load_check_images(folder: str | os.PathLike, model: CrossViewModel,
                      limit: int = MAX_CHECK_IMAGES) -> dict[str, Tensor]:
    """Real inputs for the parity check from a VIGOR city folder: panorama/ and satellite/ images.

    Each image: RGB, resized to the model's input size (cv2 INTER_AREA), scaled to 0..1 and
    normalised with the config's mean/std -> {"ground": (N, 3, Hg, Wg), "aerial": (M, 3, Ha, Wa)}.
    """
    import cv2

    folder = Path(folder)
    cfg = model.config
    out: dict[str, Tensor] = {}
    for view, sub, size in (("ground", "panorama", cfg.ground_size), ("aerial", "satellite", cfg.aerial_size)):
        files = sorted(p for p in (folder / sub).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
        batch = []
        for path in files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ExportError(f"cannot decode check image {path}")
            rgb = cv2.cvtColor(cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            x = (rgb.astype(np.float32) / 255.0 - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
            batch.append(x.transpose(2, 0, 1))
        if batch:
            out[view] = torch.from_numpy(np.stack(batch))
    if not out:
        raise ExportError(f"no check images in {folder}: expected a VIGOR city folder with panorama/ and/or "
                          "satellite/ holding .jpg/.png files")
    return out


# Unnormalised feature maps of a trained network reach hundreds: float32 sums then differ between
# backends in proportion to the map's scale, so their atol grows with it.
FEATURE_ATOL_PER_SCALE = 1e-5


def _compare(name: str, got: np.ndarray, want: np.ndarray, graph: str, where: str) -> float:
    atol, rtol = TOLERANCES[name]
    if name == "features" and want.size:
        atol += FEATURE_ATOL_PER_SCALE * float(np.max(np.abs(want)))
    if got.shape != want.shape:
        raise ExportError(f"{graph} output {name} has shape {got.shape}, PyTorch gives {want.shape} ({where})")
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    if not np.allclose(got, want, atol=atol, rtol=rtol):
        raise ExportError(f"{graph} output {name} differs from PyTorch beyond atol {atol:g}, rtol {rtol:g} "
                          f"({where}): max abs error {err:.3g}")
    return err


def _parity(work: Path, model: CrossViewModel, images: dict[str, Tensor] | None, seed: int) -> dict[str, Any]:
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
        for view, graph, x in (("ground", "ground.onnx", pano), ("aerial", "aerial.onnx", sat)):
            if x.numel() == 0:
                continue
            with torch.no_grad():
                desc, feats = model.ground_outputs(x) if view == "ground" else model.aerial_outputs(x)
            got_desc, got_feats = sessions[graph].run(["descriptor", "features"], {"image": x.numpy()})
            record(graph, "descriptor", _compare("descriptor", got_desc, desc.numpy(), graph, where))
            record(graph, "features", _compare("features", got_feats, feats.numpy(), graph, where))
            descs[view] = desc
        n = min(len(descs.get("ground", ())), len(descs.get("aerial", ())))
        if n == 0:
            continue
        g, a = descs["ground"][:n], descs["aerial"][:n]
        with torch.no_grad():
            want = model.offset(g, a)
        (got,) = sessions["offset.onnx"].run(["offset"], {"ground": g.numpy(), "aerial": a.numpy()})
        record("offset.onnx", "offset", _compare("offset", got, want.numpy(), "offset.onnx", where))

    return {
        "provider": "CPUExecutionProvider",
        "onnxruntime_version": ort.__version__,
        "checked_on": [where for where, _, _ in cases],
        "check_images": {view: int(x.shape[0]) for view, x in (images or {}).items()},
        "files": {graph: {out: {"atol": TOLERANCES[out][0], "rtol": TOLERANCES[out][1], "max_abs_err": err}
                          for out, err in outs.items()} for graph, outs in worst.items()},
    }


def _export_graph(module: nn.Module, args: tuple[Tensor, ...], path: Path, opset: int,
                  inputs: list[str], outputs: list[str]) -> None:
    import onnx

    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript and keeps the batch axis
        # symbolic through dynamic_axes; torch warns that it is the legacy path, and timm's
        # shape asserts raise TracerWarnings that do not apply to fixed-size inputs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module.eval(), args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
            output_names=outputs, dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))
    graph_opset = max(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                      if o.domain in ("", "ai.onnx"))
    if graph_opset < MIN_OPSET:
        raise ExportError(f"{path.name} came out with opset {graph_opset} < {MIN_OPSET}")


def _export_all(model: CrossViewModel, work: Path, opset: int) -> None:
    cfg = model.config
    pano = torch.zeros(1, 3, *cfg.ground_size)
    sat = torch.zeros(1, 3, *cfg.aerial_size)
    desc = torch.zeros(1, cfg.dim)
    encoder_outputs = ["descriptor", "features"]
    _export_graph(_EncoderGraph(model, "ground"), (pano,), work / "ground.onnx", opset, ["image"], encoder_outputs)
    _export_graph(_EncoderGraph(model, "aerial"), (sat,), work / "aerial.onnx", opset, ["image"], encoder_outputs)
    _export_graph(_OffsetGraph(model), (desc, desc), work / "offset.onnx", opset, ["ground", "aerial"], ["offset"])


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
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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
                "ground.onnx": encoder_io(cfg.ground_size, model.ground_feature_shape),
                "aerial.onnx": encoder_io(cfg.aerial_size, model.aerial_feature_shape),
                "offset.onnx": {"inputs": {"ground": ["batch", d], "aerial": ["batch", d]},
                                "outputs": {"offset": ["batch", 2]}},
            },
        },
        "parity": parity,
        "exported_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "onnx_version": onnx.__version__,
    }


def export_onnx(model: CrossViewModel, out_dir: str | os.PathLike, *, opset: int = MIN_OPSET,
                check_images: str | os.PathLike | None = None, overwrite: bool = False,
                tile_size_m: float | None = None, train_config: dict[str, Any] | None = None,
                seed: int = 0) -> Path:
    """Export the three graphs and model.json into out_dir (module docstring); returns out_dir.

    Refuses (ExportError) an out_dir that holds another model's export unless overwrite; the
    same model's export is replaced. `tile_size_m` is L of the offset targets, recorded so the
    runtime can turn the offset into metres. The model is not modified (a CPU copy is exported
    when it lives elsewhere).
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}: the runtime needs opset >= {MIN_OPSET}")
    if getattr(model, "name", "").startswith("bev"):
        from crossview_training.bev import export_bev_onnx

        return export_bev_onnx(copy.deepcopy(model).cpu().float(), out_dir, opset=opset, overwrite=overwrite,
                               train_config=train_config, seed=seed)
    if tile_size_m is not None and not tile_size_m > 0:
        raise ExportError(f"tile_size_m must be positive, got {tile_size_m}")
    out_dir = Path(out_dir)
    source, was_training = model, model.training
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    try:
        model.eval()
        digest = model_hash(model)
        _check_target(out_dir, digest, overwrite)
        images = load_check_images(check_images, model) if check_images is not None else None
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
        try:
            _export_all(model, work, opset)
            if model_hash(model) != digest:
                raise ExportError("the model's weights changed during export (a module ran in training "
                                  "mode); this is a bug in the export wrappers")
            parity = _parity(work, model, images, seed)
            files = {name: sha256_file(work / name) for name in GRAPHS}
            meta = _metadata(model, digest, opset, files, parity, tile_size_m, train_config)
            (out_dir / METADATA).unlink(missing_ok=True)  # no stale metadata ever describes new graphs
            for name in GRAPHS:
                os.replace(work / name, out_dir / name)
            write_json_atomic(out_dir / METADATA, meta, sort_keys=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        source.train(was_training)
    log.info("exported %s (%s) to %s", model.name, digest, out_dir)
    return out_dir


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export a trained crossview model for the runtime.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{onnx}")
    o = sub.add_parser(
        "onnx", help="ground/aerial encoders and the offset head to ONNX, with model.json",
        description="Write DIR/ground.onnx, aerial.onnx, offset.onnx (opset >= 17, dynamic batch) and "
                    "DIR/model.json (preprocessing, sizes, descriptor size, tile size, model hash, sha256 "
                    "of each graph). Each graph passes onnx.checker and must match PyTorch through "
                    "onnxruntime (CPU) on random inputs, and on real images with --check-images.",
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


def _cmd_onnx(args: argparse.Namespace) -> int:
    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, source=f"checkpoint {args.checkpoint}")
    tile_size_m = args.tile_size_m if args.tile_size_m is not None else ckpt.get("tile_size_m")
    train_config = ckpt.get("train_config")
    if tile_size_m is None:
        log.warning("no tile size L recorded (checkpoint has no tile_size_m, no --tile-size-m): the runtime "
                    "cannot turn offsets into metres without it")
    out = export_onnx(model, args.out, opset=args.opset, check_images=args.check_images, overwrite=args.overwrite,
                      tile_size_m=None if tile_size_m is None else float(tile_size_m),
                      train_config=json.loads(json.dumps(train_config, default=str)) if train_config else None)
    print(out / METADATA)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of crossview-export; returns the exit code (2 for bad input or a failed check)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"onnx": _cmd_onnx}[args.command](args)
    except (ExportError, WeightsError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
