"""Panorama messages to pixels: sensor_msgs/Image arrays or CompressedImage bytes -> RGB uint8.

Refuses what would decode into a silently wrong image (truncated JPEG/PNG, wrong encoding, a
panorama that is not equirectangular) with a ValueError that says what is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ARRAY_ENCODINGS = ("rgb8", "bgr8", "mono8")
MIN_PANORAMA_HEIGHT_PX = 8
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def decode_panorama(panorama: Any, encoding: str | None = None) -> np.ndarray:
    """Panorama -> (H, W, 3) RGB uint8 with W == 2 H; ValueError saying what is wrong.

    panorama: an (H, W, 3) rgb8/bgr8 or (H, W[, 1]) mono8 uint8 array with `encoding`
    (sensor_msgs/Image encodings), or JPEG/PNG bytes (sensor_msgs/CompressedImage data; the
    format is recognised from the bytes, `encoding` may be None or the message's format string).
    A JPEG without its end marker or a PNG without IEND is refused as truncated: OpenCV would
    decode it into a partly grey image without complaint.
    """
    import cv2

    if isinstance(panorama, np.ndarray) and not (panorama.ndim == 1 and panorama.dtype == np.uint8
                                                 and encoding not in ARRAY_ENCODINGS):
        if encoding not in ARRAY_ENCODINGS:
            raise ValueError(f"an array panorama needs encoding one of {ARRAY_ENCODINGS}, got {encoding!r}")
        if panorama.dtype != np.uint8:
            raise ValueError(f"{encoding} panorama must be uint8, got {panorama.dtype}")
        a = panorama
        if encoding == "mono8":
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            if a.ndim != 2:
                raise ValueError(f"mono8 panorama must be (H, W) or (H, W, 1), got shape {panorama.shape}")
            rgb = np.repeat(a[:, :, None], 3, axis=2)
        else:
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"{encoding} panorama must be (H, W, 3), got shape {panorama.shape}")
            rgb = a[:, :, ::-1] if encoding == "bgr8" else a
    else:
        try:
            data = bytes(memoryview(panorama).cast("B"))
        except TypeError:
            raise ValueError(f"panorama must be a uint8 array or JPEG/PNG bytes, got "
                             f"{type(panorama).__name__}") from None
        body = data.rstrip(b"\x00")  # some drivers pad compressed frames with zeros
        if body.startswith(_JPEG_SOI):
            if not body.endswith(_JPEG_EOI):
                raise ValueError(f"JPEG panorama is truncated (no end-of-image marker after {len(data)} bytes)")
        elif body.startswith(_PNG_SIGNATURE):
            if not body.endswith(_PNG_IEND):
                raise ValueError(f"PNG panorama is truncated (no IEND chunk after {len(data)} bytes)")
        else:
            raise ValueError(f"compressed panorama is neither JPEG nor PNG ({len(data)} bytes, starts with "
                             f"{data[:4].hex() or 'nothing'})")
        try:
            bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:
            raise ValueError(f"compressed panorama cannot be decoded ({exc})") from None
        if bgr is None:
            raise ValueError(f"compressed panorama is corrupt: OpenCV cannot decode its {len(data)} bytes")
        rgb = bgr[:, :, ::-1]
    h, w = rgb.shape[:2]
    if w != 2 * h or h < MIN_PANORAMA_HEIGHT_PX:
        raise ValueError(f"panorama must be equirectangular, width == 2 x height >= {2 * MIN_PANORAMA_HEIGHT_PX} "
                         f"px, got {w} x {h} px")
    return np.ascontiguousarray(rgb)
