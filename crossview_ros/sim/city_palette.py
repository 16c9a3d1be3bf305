"""Colour palettes (RGB) of the synthetic city's roofs, façades, cars, trees and ground.

Colours are drawn from these lists and jittered per object; texture noise is added later, so
what tells places apart is layout and shape, not a flat colour.
"""

from __future__ import annotations

import numpy as np

FLAT_ROOF_RGB = np.array([
    (150, 150, 148), (178, 176, 170), (200, 199, 194), (215, 214, 208), (96, 96, 100), (72, 72, 75),
    (165, 156, 140), (140, 131, 120), (120, 125, 131), (186, 180, 165), (128, 118, 110), (160, 165, 170),
], np.float32)
PITCHED_ROOF_RGB = np.array([
    (158, 84, 62), (135, 72, 55), (118, 80, 62), (82, 82, 88), (92, 97, 108), (140, 60, 50),
    (104, 94, 86), (70, 70, 74), (165, 110, 80),
], np.float32)
FACADE_RGB = np.array([
    (150, 76, 56), (172, 102, 72), (200, 186, 160), (212, 202, 182), (160, 160, 158), (226, 222, 214),
    (110, 100, 92), (188, 170, 140), (140, 120, 100), (96, 98, 104),
], np.float32)
GLASS_RGB = np.array([(88, 118, 140), (92, 128, 122), (70, 84, 100), (120, 140, 150), (60, 66, 74)], np.float32)
CAR_RGB = np.array([
    (235, 235, 232), (240, 240, 238), (20, 20, 22), (30, 32, 36), (150, 152, 155), (175, 178, 180),
    (95, 98, 102), (30, 55, 120), (140, 25, 25), (180, 30, 30), (40, 70, 50), (200, 170, 60), (110, 80, 60),
], np.float32)
CAR_P = np.array([0.12, 0.11, 0.11, 0.09, 0.12, 0.1, 0.1, 0.07, 0.05, 0.04, 0.03, 0.03, 0.03])
TREE_RGB = np.array([
    (58, 92, 42), (70, 105, 48), (48, 78, 40), (84, 112, 56), (62, 98, 58), (92, 118, 62), (54, 86, 54),
], np.float32)
AUTUMN_RGB = np.array([(150, 120, 50), (170, 95, 40), (130, 110, 60), (110, 100, 50), (160, 140, 70)], np.float32)
GRASS_RGB = (92, 128, 62)
KERB_RGB = (196, 194, 188)
