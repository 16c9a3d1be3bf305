"""Image messages to pixels: sensor_msgs/Image arrays or CompressedImage bytes -> RGB uint8.

Refuses what would decode into a silently wrong image, with a ValueError that says what is wrong:
a wrong encoding, a panorama that is not equirectangular, a truncated JPEG/PNG, a JPEG whose data
libjpeg finds corrupt (its warnings are errors here: it would fill the rest with grey), and an
image larger than max_pixels, judged from the header before anything is decoded (a few hundred
bytes can claim 32768 x 16384 px and take gigabytes to decode).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

ARRAY_ENCODINGS = ("rgb8", "bgr8", "mono8")
MIN_PANORAMA_HEIGHT_PX = 8
DEFAULT_MAX_PIXELS = 8192 * 4096  # the largest panorama decoded: 32 Mpx, above every 360-degree camera we know
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def decode_panorama(panorama: Any, encoding: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS
                    ) -> np.ndarray:
    """Panorama -> (H, W, 3) RGB uint8 with W == 2 H; ValueError saying what is wrong.

    panorama: an (H, W, 3) rgb8/bgr8 or (H, W[, 1]) mono8 uint8 array with `encoding`
    (sensor_msgs/Image encodings), or JPEG/PNG bytes (sensor_msgs/CompressedImage data; the
    format is recognised from the bytes, `encoding` may be None or the message's format string).
    """
    rgb = decode_image(panorama, encoding, max_pixels=max_pixels)
    h, w = rgb.shape[:2]
    if w != 2 * h or h < MIN_PANORAMA_HEIGHT_PX:
        raise ValueError(f"panorama must be equirectangular, width == 2 x height >= {2 * MIN_PANORAMA_HEIGHT_PX} "
                         f"px, got {w} x {h} px")
    return rgb


def decode_image(image: Any, encoding: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any camera image as decode_panorama takes it -> (H, W, 3) RGB uint8, whatever its aspect."""
    if isinstance(image, np.ndarray) and not (image.ndim == 1 and image.dtype == np.uint8
                                              and encoding not in ARRAY_ENCODINGS):
        rgb = _from_array(image, encoding)
        _check_pixels(rgb.shape[1], rgb.shape[0], max_pixels)
    else:
        try:
            data = bytes(memoryview(image).cast("B"))
        except TypeError:
            raise ValueError(f"image must be a uint8 array or JPEG/PNG bytes, got "
                             f"{type(image).__name__}") from None
        rgb = _from_bytes(data, max_pixels)
    return np.ascontiguousarray(rgb)


def _from_array(panorama: np.ndarray, encoding: str | None) -> np.ndarray:
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
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{encoding} panorama must be (H, W, 3), got shape {panorama.shape}")
    return a[:, :, ::-1] if encoding == "bgr8" else a


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(f"panorama of {width} x {height} px is larger than max_panorama_pixels {max_pixels} "
                         f"({width * height} px); refused before decoding")


def _from_bytes(data: bytes, max_pixels: int) -> np.ndarray:
    """JPEG through libjpeg-turbo (simplejpeg) in strict mode, PNG through OpenCV, both size-checked first."""
    body = data.rstrip(b"\x00")  # some drivers pad compressed frames with zeros
    if body.startswith(_JPEG_SOI):
        import simplejpeg

        if not body.endswith(_JPEG_EOI):
            raise ValueError(f"JPEG panorama is truncated (no end-of-image marker after {len(data)} bytes)")
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(body)
        except ValueError as exc:
            raise ValueError(f"JPEG panorama has a corrupt header ({len(data)} bytes): libjpeg says {exc}") from None
        _check_pixels(width, height, max_pixels)
        try:
            return simplejpeg.decode_jpeg(body, colorspace="RGB", strict=True)
        except ValueError as exc:
            raise ValueError(f"JPEG panorama is corrupt ({len(data)} bytes): libjpeg says {exc}") from None
    if body.startswith(_PNG_SIGNATURE):
        import cv2

        if not body.endswith(_PNG_IEND):
            raise ValueError(f"PNG panorama is truncated (no IEND chunk after {len(data)} bytes)")
        if len(body) < 24 or body[12:16] != b"IHDR":
            raise ValueError("PNG panorama is corrupt: its first chunk is not IHDR")
        width, height = struct.unpack(">II", body[16:24])
        _check_pixels(width, height, max_pixels)
        try:
            bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:
            raise ValueError(f"PNG panorama cannot be decoded ({exc})") from None
        if bgr is None:
            raise ValueError(f"PNG panorama is corrupt: OpenCV cannot decode its {len(data)} bytes")
        return bgr[:, :, ::-1]
    raise ValueError(f"compressed panorama is neither JPEG nor PNG ({len(data)} bytes, starts with "
                     f"{data[:4].hex() or 'nothing'})")
