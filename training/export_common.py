"""What both exporters share: checks of the target folder, graph export with onnx.checker, the
parity tolerances, check images and reading an export's model.json back.

Outputs must agree with PyTorch within TOLERANCES (np.allclose semantics: |onnx - torch| <= atol +
rtol |torch|; the features atol also grows with the map's largest value, FEATURE_ATOL_PER_SCALE).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossview_ros.model_meta import (
    BEV_GRAPHS, GRAPHS, METADATA_FILE, MODEL_FORMAT, MODEL_FORMAT_VERSION, sha256_file,
)

PROG = "crossview-export"
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
# Unnormalised feature maps of a trained network reach hundreds: float32 sums then differ between
# backends in proportion to the map's scale, so their atol grows with it.
FEATURE_ATOL_PER_SCALE = 1e-5


class ExportError(RuntimeError):
    """Export refused or failed a check; the message says what and how to fix it."""



def read_metadata(out_dir: str | os.PathLike, *, verify_files: bool = True) -> dict[str, Any]:
    """model.json of an export; with verify_files the graphs must exist and match their sha256."""
    out_dir = Path(out_dir)
    path = out_dir / METADATA_FILE
    if not path.is_file():
        raise ExportError(f"{path} not found: not a crossview model export (run `{PROG} onnx`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}; re-export with `{PROG} onnx --overwrite`") from exc
    if meta.get("format") != MODEL_FORMAT or meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ExportError(f"{path} is format {meta.get('format')!r} v{meta.get('format_version')}, "
                          f"expected {MODEL_FORMAT!r} v{MODEL_FORMAT_VERSION}")
    if verify_files:
        for name, digest in meta["onnx"]["files"].items():
            graph = out_dir / name
            if not graph.is_file():
                raise ExportError(f"{graph} listed in {path} is missing; re-export with `{PROG} onnx --overwrite`")
            if sha256_file(graph) != digest:
                raise ExportError(f"{graph} does not match the sha256 in {path} (changed or half-written); "
                                  f"re-export with `{PROG} onnx --overwrite`")
    return meta


def check_target(out_dir: Path, new_hash: str, overwrite: bool) -> None:
    """Refuse to replace another model's export (or an unknown one) unless overwrite."""
    if overwrite or not out_dir.exists():
        return
    if (out_dir / METADATA_FILE).is_file():
        try:
            old_hash = read_metadata(out_dir, verify_files=False).get("model_hash")
        except ExportError as exc:
            raise ExportError(f"{out_dir} holds an unreadable export ({exc}); pass --overwrite to replace it") from exc
        if old_hash != new_hash:
            raise ExportError(f"{out_dir} holds the export of another model ({old_hash}, this one is {new_hash}); "
                              "choose another --out or pass --overwrite to replace it")
        return
    present = [name for name in dict.fromkeys(GRAPHS + BEV_GRAPHS) if (out_dir / name).exists()]
    if present:
        raise ExportError(f"{out_dir} holds {', '.join(present)} without {METADATA_FILE} (unknown model); "
                          "choose another --out or pass --overwrite to replace them")



def load_check_images(folder: str | os.PathLike, ground_hw: tuple[int, int], aerial_hw: tuple[int, int],
                      mean: tuple[float, ...], std: tuple[float, ...],
                      limit: int = MAX_CHECK_IMAGES) -> dict[str, Tensor]:
    """Real inputs for the parity check from a VIGOR city folder: panorama/ and satellite/ images.

    Each image: RGB, resized to the input size of the model (cv2 INTER_AREA), scaled to 0..1 and
    normalised with the config's mean/std -> {"ground": (N, 3, Hg, Wg), "aerial": (M, 3, Ha, Wa)}.
    """
    import cv2

    folder = Path(folder)
    out: dict[str, Tensor] = {}
    for view, sub, size in (("ground", "panorama", ground_hw), ("aerial", "satellite", aerial_hw)):
        files = sorted(p for p in (folder / sub).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
        batch = []
        for path in files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ExportError(f"cannot decode check image {path}")
            rgb = cv2.cvtColor(cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            x = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
            batch.append(x.transpose(2, 0, 1))
        if batch:
            out[view] = torch.from_numpy(np.stack(batch))
    if not out:
        raise ExportError(f"no check images in {folder}: expected a VIGOR city folder with panorama/ and/or "
                          "satellite/ holding .jpg/.png files")
    return out




def compare(name: str, got: np.ndarray, want: np.ndarray, graph: str, where: str) -> float:
    """Max abs error of one output against PyTorch; ExportError beyond its tolerance or on a shape mismatch."""
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



def export_graph(module: nn.Module, args: tuple[Tensor, ...], path: Path, opset: int,
                  inputs: list[str], outputs: list[str]) -> None:
    """torch.onnx.export with a dynamic batch axis, then onnx.checker and the opset floor."""
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

