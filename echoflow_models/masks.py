"""A parametric left-ventricle mask, for conditioning the LIFM without a drawn mask.

The LV cavity is modelled as a "bullet": half an ellipse at the apex end and a gently tapered, flat-cut
base at the mitral end. Coordinates are fractions of the image, so the same parameters work at the
image (112) and latent (28) sizes. The pipeline binarises and resizes masks itself; this returns {0, 1}.
"""

from __future__ import annotations

import math

import torch


def lv_mask(
    size: int | tuple[int, int] = 112,
    center_x: float = 0.5,
    center_y: float = 0.5,
    length: float = 0.5,
    width: float = 0.28,
    angle: float = 0.0,
    base_taper: float = 0.35,
) -> torch.Tensor:
    """float32 ``[H, W]`` mask, 1 inside the LV.

    center_x/center_y: centre of the long axis (fractions of width/height, y downwards).
    length: long-axis length, width: widest short-axis diameter (fractions of the image size).
    angle: degrees the long axis is rotated clockwise from vertical (apex up, towards the transducer).
    base_taper: how much narrower the base (mitral end) is than the widest point (0 = a plain ellipse half).
    """
    h, w = (size, size) if isinstance(size, int) else size
    if h < 2 or w < 2:
        raise ValueError(f"mask size must be at least 2x2, got {h}x{w}")
    if not (0 < length <= 2 and 0 < width <= 2):
        raise ValueError(f"length and width are fractions of the image in (0, 2], got {length}, {width}")
    if not 0 <= base_taper < 1:
        raise ValueError(f"base_taper must be in [0, 1), got {base_taper}")
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    dx, dy = x - center_x, y - center_y
    theta = math.radians(angle)
    # u: along the long axis, -1 at the apex (up when angle=0), +1 at the base; v: across it
    u = (dx * math.sin(theta) + dy * math.cos(theta)) / (length / 2)
    v = (dx * math.cos(theta) - dy * math.sin(theta)) / (width / 2)
    apex = (u <= 0) & (u * u + v * v <= 1)
    half_width = torch.sqrt(torch.clamp(1 - (u * math.sqrt(max(0.0, 1 - (1 - base_taper) ** 2))) ** 2, min=0))
    base = (u > 0) & (u <= 1) & (v.abs() <= half_width)
    return (apex | base).to(torch.float32)
