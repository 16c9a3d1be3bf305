"""Images to encoder inputs, exactly as training fed them (size and normalisation from model.json)."""

from __future__ import annotations

import numpy as np

from crossview_ros.model_meta import ImageInput, ModelMeta


def _preprocess(rgb: np.ndarray, spec: ImageInput, view: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"{view} image must be an (H, W, 3) RGB array, got "
                         f"{getattr(rgb, 'shape', type(rgb).__name__)}")
    if rgb.dtype == np.uint8:
        full_scale = 255.0
    elif rgb.dtype == np.uint16:
        full_scale = 65535.0  # 16-bit PNG tiles: same 0..1 range
    else:
        raise ValueError(f"{view} image must be uint8 (or uint16), got {rgb.dtype}")
    # Same steps as training's image cache and dataset: INTER_AREA resize of the integer image,
    # then 0..1, then (x - mean) / std in float32.
    rgb = _resize(rgb, spec.size_hw)
    x = rgb.astype(np.float32).transpose(2, 0, 1) / np.float32(full_scale)
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(((x - mean) / std)[None])


def _resize(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The integer image at an encoder's input size (INTER_AREA, as training's image cache)."""
    import cv2

    h, w = size_hw
    return rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def fit_ground_input(meta: ModelMeta, rgb: np.ndarray) -> np.ndarray:
    """A panorama resized to the ground encoder's input exactly as preprocess_ground resizes it (uint8)."""
    return _resize(rgb, meta.ground.size_hw)


def preprocess_ground(meta: ModelMeta, rgb: np.ndarray) -> np.ndarray:
    """Panorama (H, W, 3) RGB uint8 with W == 2 H, any size -> (1, 3, Hg, Wg) float32 for encode_ground."""
    if isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[1] != 2 * rgb.shape[0]:
        raise ValueError(f"panorama must be equirectangular with width == 2 * height, got "
                         f"{rgb.shape[1]} x {rgb.shape[0]} px")
    return _preprocess(rgb, meta.ground, "ground")


def preprocess_aerial(meta: ModelMeta, rgb: np.ndarray) -> np.ndarray:
    """Aerial tile (H, W, 3) RGB uint8 (uint16 scaled by 65535), any size -> (1, 3, Ha, Wa) float32."""
    return _preprocess(rgb, meta.aerial, "aerial")
