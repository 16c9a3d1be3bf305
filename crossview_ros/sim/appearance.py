"""The appearance gap: what a camera does to a rendered image, drawn per view and per shot.

Real aerial and street images of one place differ in colour response, white balance, exposure,
saturation, noise, blur and compression, and a model must learn to ignore all of them. The
renderers produce clean images; this module degrades them like a camera pipeline would, in this
order: optical blur, exposure and sensor noise (on linear intensities), white balance and
saturation, tone curve (gamma and an S-shaped contrast curve), JPEG round trip.

Every part is switched off by its neutral value (see Appearance's field comments), and
sample_appearance(enabled=...) leaves the parts not named neutral. apply_appearance is
deterministic given its rng (only the noise draws from it).

The scene itself also differs between captures: apply_season turns vegetation from summer green
towards dry straw and autumn brown, so an aerial survey and street images of another season (or
of another year) disagree on the colour of every park, lawn and tree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from crossview_ros.config import check_known_keys

PARTS = ("tone", "white_balance", "exposure", "saturation", "noise", "blur", "jpeg")
_GAMMA_LINEAR = 2.2  # sRGB-like encoding assumed for the renderers' uint8 output
_ROWS_PER_CHUNK = 512  # point operations run in row blocks to bound memory on big orthophotos


@dataclass
class Appearance:
    """One shot's camera response; the defaults change nothing."""

    gamma: float = 1.0  # tone curve exponent, out = in ** (1 / gamma); 1 = off
    contrast: float = 0.0  # S-curve strength in [-1, 1]; 0 = off, > 0 more contrast
    wb_gain_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel white balance gains; 1 = off
    exposure_ev: float = 0.0  # exposure change in stops (x 2**ev on linear intensity); 0 = off
    saturation: float = 1.0  # chroma scale around the luma; 1 = off, 0 = grey
    noise_sigma: float = 0.0  # sensor noise std in 8-bit levels at mid-grey (signal dependent); 0 = off
    blur_sigma_px: float = 0.0  # Gaussian optical blur std in pixels; 0 = off
    jpeg_quality: int = 0  # JPEG round-trip quality 1..100; 0 = off

    def __post_init__(self) -> None:
        if not self.gamma > 0.0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if not -1.0 <= self.contrast <= 1.0:
            raise ValueError(f"contrast must be in [-1, 1], got {self.contrast}")
        if len(self.wb_gain_rgb) != 3 or not all(g > 0.0 for g in self.wb_gain_rgb):
            raise ValueError(f"wb_gain_rgb must be three gains > 0, got {self.wb_gain_rgb}")
        if self.saturation < 0.0 or self.noise_sigma < 0.0 or self.blur_sigma_px < 0.0:
            raise ValueError("saturation, noise_sigma and blur_sigma_px must be >= 0")
        if not 0 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be 0 (off) or 1..100, got {self.jpeg_quality}")

    @classmethod
    def from_dict(cls, values: dict) -> Appearance:
        check_known_keys(cls, values)
        return cls(**values)


# Plausible ranges per view: (low, high) uniform draws. Aerial orthophotos are processed and
# mosaicked (desaturated, mildly blurred by resampling, little noise); street cameras are small
# sensors with auto exposure and white balance (wider swings, more noise).
_RANGES = {
    "aerial": {
        "gamma": (0.9, 1.15),
        "contrast": (-0.1, 0.25),
        "wb": 0.06,
        "exposure_ev": (-0.4, 0.3),
        "saturation": (0.7, 1.05),
        "noise_sigma": (0.5, 2.0),
        "blur_sigma_px": (0.3, 1.0),
        "jpeg_quality": (70, 95),
    },
    "ground": {
        "gamma": (0.85, 1.25),
        "contrast": (0.0, 0.4),
        "wb": 0.12,
        "exposure_ev": (-0.7, 0.7),
        "saturation": (0.85, 1.3),
        "noise_sigma": (1.0, 5.0),
        "blur_sigma_px": (0.0, 1.2),
        "jpeg_quality": (60, 95),
    },
}


def sample_appearance(rng: np.random.Generator, view: str, enabled: Iterable[str] = PARTS) -> Appearance:
    """Draw one shot's appearance for view "aerial" or "ground"; parts not in `enabled` stay off.

    Every part is drawn whether enabled or not, so switching one part off leaves the others'
    values unchanged for the same rng state.
    """
    if view not in _RANGES:
        raise ValueError(f"view must be one of {sorted(_RANGES)}, got {view!r}")
    enabled = set(enabled)
    unknown = enabled - set(PARTS)
    if unknown:
        raise ValueError(f"unknown appearance parts {sorted(unknown)}; valid parts: {list(PARTS)}")
    r = _RANGES[view]
    gamma = float(rng.uniform(*r["gamma"]))
    contrast = float(rng.uniform(*r["contrast"]))
    # white balance: a warm/cool shift (red vs blue) plus a small green/magenta tint
    temp = rng.uniform(-r["wb"], r["wb"])
    tint = rng.uniform(-r["wb"] / 3.0, r["wb"] / 3.0)
    wb = (float(1.0 + temp), float(1.0 + tint), float(1.0 - temp))
    exposure = float(rng.uniform(*r["exposure_ev"]))
    saturation = float(rng.uniform(*r["saturation"]))
    noise = float(rng.uniform(*r["noise_sigma"]))
    blur = float(rng.uniform(*r["blur_sigma_px"]))
    quality = int(rng.integers(r["jpeg_quality"][0], r["jpeg_quality"][1] + 1))
    return Appearance(
        gamma=gamma if "tone" in enabled else 1.0,
        contrast=contrast if "tone" in enabled else 0.0,
        wb_gain_rgb=wb if "white_balance" in enabled else (1.0, 1.0, 1.0),
        exposure_ev=exposure if "exposure" in enabled else 0.0,
        saturation=saturation if "saturation" in enabled else 1.0,
        noise_sigma=noise if "noise" in enabled else 0.0,
        blur_sigma_px=blur if "blur" in enabled else 0.0,
        jpeg_quality=quality if "jpeg" in enabled else 0,
    )


def apply_appearance(
    image: np.ndarray, appearance: Appearance, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Return a new (H, W, 3) or (H, W) uint8 image seen through `appearance`.

    rng feeds the sensor noise only; an int seeds a new generator and None means seed 0, so the
    result is always reproducible.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"apply_appearance needs an (H, W, 3) or (H, W) uint8 image, got {img.dtype} {img.shape}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(0 if rng is None else rng)
    a = appearance
    out = np.ascontiguousarray(img).copy()
    if a.blur_sigma_px > 0.0:
        sigma = a.blur_sigma_px
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    if _has_point_ops(a):
        for r0 in range(0, out.shape[0], _ROWS_PER_CHUNK):
            block = out[r0 : r0 + _ROWS_PER_CHUNK]
            block[...] = _point_ops(block, a, rng)
    if a.jpeg_quality > 0:
        out = _jpeg_round_trip(out, int(a.jpeg_quality))
    return out


def _has_point_ops(a: Appearance) -> bool:
    return (
        a.gamma != 1.0
        or a.contrast != 0.0
        or tuple(a.wb_gain_rgb) != (1.0, 1.0, 1.0)
        or a.exposure_ev != 0.0
        or a.saturation != 1.0
        or a.noise_sigma > 0.0
    )


def _point_ops(block: np.ndarray, a: Appearance, rng: np.random.Generator) -> np.ndarray:
    x = (block.astype(np.float32) / 255.0) ** _GAMMA_LINEAR  # to linear intensity
    if a.exposure_ev != 0.0:
        x *= np.float32(2.0**a.exposure_ev)
    if a.noise_sigma > 0.0:
        # Poisson-Gaussian sensor noise, sigma given in 8-bit levels at mid-grey (0.5 encoded),
        # converted to linear units through the encoding's slope there
        mid = 0.5**_GAMMA_LINEAR
        sigma_lin = a.noise_sigma / 255.0 * _GAMMA_LINEAR * mid / 0.5
        std = sigma_lin * np.sqrt(0.2 + 0.8 * np.clip(x, 0.0, None) / mid)
        x += (rng.standard_normal(x.shape, dtype=np.float32) * std).astype(np.float32)
    if x.ndim == 3:
        if tuple(a.wb_gain_rgb) != (1.0, 1.0, 1.0):
            x *= np.asarray(a.wb_gain_rgb, np.float32)
        if a.saturation != 1.0:
            luma = x @ np.array([0.2126, 0.7152, 0.0722], np.float32)
            x = luma[..., None] + np.float32(a.saturation) * (x - luma[..., None])
    x = np.clip(x, 0.0, 1.0) ** np.float32(1.0 / _GAMMA_LINEAR)  # back to the encoded scale
    if a.gamma != 1.0:
        x = x ** np.float32(1.0 / a.gamma)
    if a.contrast != 0.0:
        # blend with a smoothstep S-curve (contrast > 0) or its inverse (contrast < 0)
        s = x * x * (3.0 - 2.0 * x)
        x = x + np.float32(a.contrast) * (s - x)
    return np.clip(x * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    bgr = image[..., ::-1] if image.ndim == 3 else image
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for an image of shape {image.shape}")
    flag = cv2.IMREAD_COLOR if image.ndim == 3 else cv2.IMREAD_GRAYSCALE
    dec = cv2.imdecode(buf, flag)
    return np.ascontiguousarray(dec[..., ::-1]) if image.ndim == 3 else dec


# Where dry vegetation's colour goes, per channel, relative to the pixel's luma (straw / brown).
_DRY_TINT_RGB = np.array([1.35, 1.1, 0.55], np.float32)


def apply_season(image: np.ndarray, season: float) -> np.ndarray:
    """Vegetation of `image` (H, W, 3) uint8 seen in another season: 0 = summer (unchanged), 1 = dry.

    Green-dominant pixels (how much green exceeds red and blue sets the weight, so edges blend)
    move towards a straw tint of their own luma: texture and shading stay, the hue changes.
    """
    if not 0.0 <= season <= 1.0:
        raise ValueError(f"season must be in [0, 1], got {season}")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"apply_season needs an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    if season == 0.0:
        return img.copy()
    out = np.empty_like(img)
    for r0 in range(0, img.shape[0], _ROWS_PER_CHUNK):
        x = img[r0 : r0 + _ROWS_PER_CHUNK].astype(np.float32)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        greenness = (g - np.maximum(r, b)) / np.maximum(g, 1.0)  # > 0 where green dominates
        weight = np.float32(season) * np.clip(greenness / 0.15, 0.0, 1.0)
        luma = x @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        dry = luma[..., None] * _DRY_TINT_RGB
        y = x + weight[..., None] * (dry - x)
        out[r0 : r0 + _ROWS_PER_CHUNK] = np.clip(y + 0.5, 0.0, 255.0).astype(np.uint8)
    return out
