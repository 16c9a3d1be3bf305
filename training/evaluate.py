"""crossview-eval: retrieval and metre-level evaluation on a VIGOR-layout split.

Figures (VIGOR section 5 and Table 8; CVM-Net's top-1 %):
- recall top-1/5/10/1 % over every aerial image of the split's cities, counting only the
  positive as a hit (VIGOR's "retrieval"), and the hit rate (top-1 is the positive or one of the
  three semi-positives);
- metre-level error of the predicted position against the panorama's position from its file
  name: the centre of the top-1 tile, and, with a model's offset head, that centre plus the
  regressed offset; mean, median and % under 1/5/10/25/50 m;
- the search-scope study: a noisy GNSS fix per panorama (uniform +-100 m per axis, seeded), and
  retrieval only among tiles whose centre lies within 1000/500/200 m of it ("all" = the whole
  gallery), with the raw GNSS error beside;
- heading error (median, % under 5/10 deg, share of ~180 deg flips) once a heading estimate is
  given.

Non-learned baselines (`--baseline`) show how hard the data is: `histogram` (colour histograms of
the panorama's ground half and the tile) and `polar` (the tile polar-sampled around its centre
against the panorama's ground half, both tiny and normalised, aligned because both are north-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crossview_ros.tiles import VIGOR_TILE_SIZE_M
from crossview_training.bev.model import BevModel
from crossview_training.bev.scoring import bev_similarity
from crossview_training.datasets import (
    LABEL_SETS, VigorSplit, cached_images, dataset_tile_size_m, load_vigor_split,
)
from crossview_training.models import load_checkpoint

log = logging.getLogger(__name__)

SCOPES_M = (None, 1000.0, 500.0, 200.0)  # None = every tile (VIGOR Table 8 columns)
THRESHOLDS_M = (1.0, 5.0, 10.0, 25.0, 50.0)
GNSS_HALF_WIDTH_M = 100.0  # VIGOR's noisy-GPS protocol: uniform per axis


@dataclass
class Descriptors:
    ground: np.ndarray | None  # (N, D) L2-normalised
    aerial: np.ndarray | None  # (M, D) L2-normalised
    offset_fn: object = None  # callable(ground_idx (K,), tile_idx (K,)) -> (K, 2) (dE, dN)/L, or None
    similarity: np.ndarray | None = None  # (N, M) scores given directly (models that match densely); else ground @ aerial.T


def recall_at_k(similarity: np.ndarray, positive: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Share of queries whose positive is among the k most similar (ties counted pessimistically)."""
    pos_score = similarity[np.arange(len(positive)), positive]
    rank = (similarity > pos_score[:, None]).sum(axis=1) + (similarity == pos_score[:, None]).sum(axis=1) - 1
    return {k: float(np.mean(rank < k)) for k in ks}


def error_stats(errors_m: np.ndarray) -> dict[str, float]:
    """Mean, median and share under each threshold of metric errors."""
    e = np.asarray(errors_m, np.float64)
    out = {"mean_m": float(e.mean()), "median_m": float(np.median(e))}
    for t in THRESHOLDS_M:
        out[f"under_{t:g}m"] = float(np.mean(e < t))
    return out


def noisy_fixes(pano_en: np.ndarray, seed: int, half_width_m: float = GNSS_HALF_WIDTH_M) -> np.ndarray:
    """VIGOR's noisy GNSS: the true position plus uniform +-half_width_m per axis (seeded)."""
    rng = np.random.default_rng([seed, 0x6E55])
    return pano_en + rng.uniform(-half_width_m, half_width_m, size=pano_en.shape)


def scoped_top1(similarity: np.ndarray, sat_en: np.ndarray, sat_city: np.ndarray, fix_en: np.ndarray,
                pano_city: np.ndarray, scope_m: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 tile per query among tiles within scope_m of its fix (same city); -1 when none.

    Returns (top1 (N,), candidates per query (N,)). Ties resolved by the lowest tile index.
    """
    n = similarity.shape[0]
    top1 = np.full(n, -1, np.int64)
    count = np.zeros(n, np.int64)
    for i in range(n):
        ok = sat_city == pano_city[i]
        if scope_m is not None:
            ok &= np.hypot(sat_en[:, 0] - fix_en[i, 0], sat_en[:, 1] - fix_en[i, 1]) <= scope_m
        idx = np.flatnonzero(ok)
        count[i] = len(idx)
        if len(idx):
            top1[i] = idx[int(np.argmax(similarity[i, idx]))]
    return top1, count


def evaluate(split: VigorSplit, desc: Descriptors, *, tile_size_m: float, seed: int = 0,
             heading_error_deg: np.ndarray | None = None) -> dict:
    """Every figure of the module docstring for one split and one set of descriptors."""
    sim = desc.similarity if desc.similarity is not None else desc.ground @ desc.aerial.T
    positive = split.labels[:, 0]
    m = sim.shape[1]
    ks = (1, 5, 10, max(1, math.ceil(m / 100)))
    rec = recall_at_k(sim, positive, ks)
    top1_all = np.argmax(sim, axis=1)
    hit = np.mean([top1_all[i] in split.labels[i] for i in range(len(split))])
    pano_en, sat_en = split.metric_positions()
    fix_en = noisy_fixes(pano_en, seed)
    result = {
        "split": split.split, "cities": list(split.cities), "panoramas": len(split), "tiles": m,
        "recall": {"top1": rec[1], "top5": rec[5], "top10": rec[10], "top1%": rec[ks[3]], "top1%_k": ks[3]},
        "hit_rate": float(hit),
        "gnss": {"protocol": f"uniform +-{GNSS_HALF_WIDTH_M:g} m per axis", **error_stats(np.hypot(*(fix_en - pano_en).T))},
        "scopes": {},
    }
    for scope in SCOPES_M:
        top1, count = scoped_top1(sim, sat_en, split.sat_city, fix_en, split.pano_city, scope)
        found = top1 >= 0
        centre = np.where(found[:, None], sat_en[np.maximum(top1, 0)], fix_en)
        row = {
            "top1": float(np.mean(top1 == positive)),
            "hit_rate": float(np.mean([top1[i] in split.labels[i] for i in range(len(split))])),
            "candidates_mean": float(count.mean()),
            "positive_in_scope": float(np.mean([
                scope is None or np.hypot(*(sat_en[positive[i]] - fix_en[i])) <= scope for i in range(len(split))])),
            "error_tile_centre": error_stats(np.hypot(*(centre - pano_en).T)),
        }
        if desc.offset_fn is not None and found.any():
            offset = np.zeros((len(split), 2))
            offset[found] = desc.offset_fn(np.flatnonzero(found), top1[found])
            refined = centre + offset * tile_size_m
            row["error_with_offset"] = error_stats(np.hypot(*(refined - pano_en).T))
        result["scopes"]["all" if scope is None else f"{scope:g}m"] = row
    if heading_error_deg is not None:
        h = np.abs(np.asarray(heading_error_deg, np.float64))
        result["heading"] = {"median_deg": float(np.median(h)), "under_5deg": float(np.mean(h < 5)),
                             "under_10deg": float(np.mean(h < 10)), "flip_share": float(np.mean(h > 150))}
    return result


def markdown_table(result: dict, title: str) -> str:
    """The figures as Markdown: one row per scope, raw GNSS beside."""
    lines = [f"### {title}", "",
             f"{result['panoramas']} panoramas, {result['tiles']} tiles ({', '.join(result['cities'])}). "
             f"Over all tiles: top-1 {100 * result['recall']['top1']:.1f} %, top-5 {100 * result['recall']['top5']:.1f} %, "
             f"top-10 {100 * result['recall']['top10']:.1f} %, top-1 % {100 * result['recall']['top1%']:.1f} %, "
             f"hit rate {100 * result['hit_rate']:.1f} %.", "",
             "| scope | candidates | top-1 % | hit rate % | median m (tile) | median m (offset) | mean m | <5 m % | <10 m % | <25 m % | <50 m % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["scopes"].items():
        tile, off = row["error_tile_centre"], row.get("error_with_offset")
        err = off or tile
        off_median = f"{off['median_m']:.1f}" if off else "-"
        lines.append(
            f"| {name} | {row['candidates_mean']:.0f} | {100 * row['top1']:.1f} | {100 * row['hit_rate']:.1f} | "
            f"{tile['median_m']:.1f} | {off_median} | {err['mean_m']:.1f} | {100 * err['under_5m']:.1f} | "
            f"{100 * err['under_10m']:.1f} | {100 * err['under_25m']:.1f} | {100 * err['under_50m']:.1f} |")
    g = result["gnss"]
    lines.append(f"| raw GNSS ({g['protocol']}) | - | - | - | {g['median_m']:.1f} | - | {g['mean_m']:.1f} | "
                 f"{100 * g['under_5m']:.1f} | {100 * g['under_10m']:.1f} | {100 * g['under_25m']:.1f} | "
                 f"{100 * g['under_50m']:.1f} |")
    if "heading" in result:
        h = result["heading"]
        lines += ["", f"Heading: median {h['median_deg']:.1f} deg, <5 deg {100 * h['under_5deg']:.1f} %, "
                      f"<10 deg {100 * h['under_10deg']:.1f} %, ~180 deg flips {100 * h['flip_share']:.1f} %."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- baselines


def _l2n(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def histogram_descriptors(panos: np.ndarray, sats: np.ndarray, bins: int = 8) -> Descriptors:
    """Joint RGB histograms (bins^3, square-rooted) of the panorama's ground half and the tile."""
    def hist(images: np.ndarray) -> np.ndarray:
        q = (np.asarray(images, np.uint16) * bins // 256).astype(np.int64)
        code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        out = np.zeros((len(images), bins ** 3), np.float32)
        for i in range(len(images)):
            out[i] = np.bincount(code[i].ravel(), minlength=bins ** 3)
        return np.sqrt(out / out.sum(axis=1, keepdims=True))

    h = panos.shape[1]
    return Descriptors(_l2n(hist(panos[:, h // 2:])), _l2n(hist(sats)))


def polar_descriptors(panos: np.ndarray, sats: np.ndarray, size: tuple[int, int] = (8, 32)) -> Descriptors:
    """The tile polar-sampled around its centre vs the panorama's ground half, tiny and normalised.

    Row r of the polar image is distance (far at the top, like a panorama's rows just below the
    horizon), column c the azimuth of the panorama's column c (north in the middle, clockwise).
    """
    import cv2

    rows, cols = size
    s = sats.shape[1]
    az = (np.arange(cols) + 0.5) / cols * 2 * np.pi - np.pi  # bearing: -pi at column 0 (south), 0 mid (north)
    radius = (1.0 - (np.arange(rows) + 0.5) / rows) * (s / 2)
    x = (s / 2 + radius[:, None] * np.sin(az)[None, :]).astype(np.float32)
    y = (s / 2 - radius[:, None] * np.cos(az)[None, :]).astype(np.float32)
    polar = np.stack([cv2.remap(np.ascontiguousarray(img), x, y, cv2.INTER_AREA) for img in sats])
    h = panos.shape[1]
    ground = np.stack([cv2.resize(np.ascontiguousarray(p[h // 2:]), (cols, rows), interpolation=cv2.INTER_AREA)
                       for p in panos])
    return Descriptors(_l2n(ground.reshape(len(ground), -1)), _l2n(polar.reshape(len(polar), -1)))


BASELINES = {"histogram": histogram_descriptors, "polar": polar_descriptors}


# --------------------------------------------------------------------------- models


def model_descriptors(model, split: VigorSplit, *, batch_size: int = 32, progress: bool = True,
                      use_offset: bool = True) -> Descriptors:
    """Encode a split's panoramas and tiles with a CrossViewModel (eval mode, no grad)."""
    import torch

    cfg = model.config
    device = next(model.parameters()).device
    panos, sats = cached_images(split, tuple(cfg.ground_size), tuple(cfg.aerial_size), progress=progress)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)

    def encode(images: np.ndarray, fn, desc: str) -> np.ndarray:
        out = []
        for s in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
            # np.array: a writable copy of the read-only memmap rows (torch warns on read-only arrays)
            x = torch.from_numpy(np.array(images[s:s + batch_size])).to(device).permute(0, 3, 1, 2).float() / 255.0
            out.append(fn((x - mean) / std).cpu())
        return torch.cat(out).numpy()

    model.eval()
    with torch.no_grad():
        g = encode(panos, model.encode_ground, "encode panoramas")
        a = encode(sats, model.encode_aerial, "encode tiles")

    def offset_fn(gi: np.ndarray, ti: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.offset(torch.from_numpy(g[gi]).to(device), torch.from_numpy(a[ti]).to(device)).cpu().numpy()

    return Descriptors(g, a, offset_fn if use_offset else None)


def bev_descriptors(model, split: VigorSplit, *, progress: bool = True) -> Descriptors:
    """A BEV correlation model's tile scores and in-tile offsets, in the Descriptors form."""
    cfg = model.config
    panos, sats = cached_images(split, cfg.pano_size, (cfg.tile_px, cfg.tile_px), progress=progress)
    sim, offsets = bev_similarity(model, split, np.asarray(panos), np.asarray(sats), progress=progress)
    return Descriptors(None, None, offset_fn=lambda gi, ti: offsets[gi, ti], similarity=sim)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crossview-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="VIGOR-layout dataset root (real VIGOR or crossview-sim vigor)")
    p.add_argument("--split", default="cross_test", choices=("same_test", "cross_test", "same_train", "cross_train"),
                   help="split to evaluate (default cross_test)")
    p.add_argument("--labels", default="original", choices=LABEL_SETS,
                   help="original (splits/) or corrected (splits__corrected/, SliceMatch's; real VIGOR)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="model checkpoint written by crossview-train")
    what.add_argument("--baseline", choices=sorted(BASELINES), help="a non-learned baseline instead of a model")
    p.add_argument("--tile-size-m", type=float, default=None,
                   help=f"aerial image side in metres (default: from dataset.json, else VIGOR's {VIGOR_TILE_SIZE_M})")
    p.add_argument("--seed", type=int, default=0, help="seed of the noisy GNSS fixes (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default 32)")
    p.add_argument("--out", help="folder for eval.json and eval.md (default: print only)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        split = load_vigor_split(args.data, args.split, labels=args.labels)
        tile_size_m = args.tile_size_m or dataset_tile_size_m(args.data)
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint)
            if isinstance(model, BevModel):
                desc = bev_descriptors(model, split, progress=not args.no_progress)
            else:
                desc = model_descriptors(model, split, batch_size=args.batch_size, progress=not args.no_progress)
            title = f"{Path(args.checkpoint).name} on {args.split}"
        else:
            panos, sats = cached_images(split, (128, 256), (128, 128), progress=not args.no_progress)
            desc = BASELINES[args.baseline](np.asarray(panos), np.asarray(sats))
            title = f"baseline {args.baseline} on {args.split}"
    except (FileNotFoundError, ValueError) as exc:
        print(f"crossview-eval: error: {exc}", file=sys.stderr)
        return 2
    result = evaluate(split, desc, tile_size_m=tile_size_m, seed=args.seed)
    result["title"] = title
    table = markdown_table(result, title)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("eval.json", json.dumps(result, indent=2)), ("eval.md", table)):
            tmp = out / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(text)
            os.replace(tmp, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
