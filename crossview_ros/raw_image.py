"""sensor_msgs/Image as numbers: one decoder for the node (nodes/convert) and the bag reader (bag/drive),
without rclpy or rosbags (any object with the message's fields)."""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}  # raw panorama encodings the localizer takes


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8) -> (H, W, 3) or (H, W) uint8 view; ValueError saying what is wrong.

    Row padding (step > width x channels) is dropped; the data must hold exactly step x height bytes.
    """
    encoding = str(msg.encoding)
    channels = IMAGE_CHANNELS.get(encoding)
    if channels is None:
        raise ValueError(f"image encoding {encoding!r} is not supported; use one of {sorted(IMAGE_CHANNELS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image is empty ({width} x {height} px)")
    if step < width * channels:
        raise ValueError(f"image step {step} B is smaller than width x channels = {width * channels} B")
    data = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if data.size != step * height:
        raise ValueError(f"image data holds {data.size} B, but step x height = {step * height} B")
    rows = data.reshape(height, step)[:, :width * channels]
    return rows.reshape(height, width, channels) if channels > 1 else rows
