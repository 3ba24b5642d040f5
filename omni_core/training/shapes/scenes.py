"""Scenes of flat shapes on a flat background: what the synthetic data draws and what the quality measurer checks.

A scene is a background colour and up to two objects (colour, shape, size, centre). Rendering is exact and aliased
(every pixel is a palette colour), so a clean render is its own ground truth for the measurer in `measure.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours, far apart in RGB so a blurry sample still lands nearest its intended colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 130, 10),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
# Side of the shape's bounding box as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.34, "large": 0.56}
# Where a shape's centre sits, as fractions of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
# A pair of objects sits side by side at this size.
PAIR_SIZE = 0.4


@dataclass(frozen=True)
class Shape:
    """One object: palette colour name, shape name, bounding-box side and centre as fractions of the image side."""

    color: str
    shape: str
    size: float
    center: tuple[float, float]

    def words(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background colour and the objects drawn on it, in drawing order (objects never share a colour)."""

    background: str
    shapes: tuple[Shape, ...]


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """The outline of a square or an apex-up triangle filling `box` (x0, y0, x1, y1); None for a circle."""
    x0, y0, x1, y1 = box
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Draw one filled shape into `box` on `draw` (aliased: every pixel is either `fill` or untouched)."""
    polygon = shape_polygon(shape, box)
    if polygon is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(polygon, fill=fill)


def shape_box(item: Shape, resolution: int) -> tuple[float, float, float, float]:
    """The pixel bounding box (x0, y0, x1, y1) of `item` in a `resolution`-pixel square image."""
    half = item.size * resolution / 2
    cx, cy = item.center[0] * resolution, item.center[1] * resolution
    return (cx - half, cy - half, cx + half - 1, cy + half - 1)


def render(scene: Scene, resolution: int) -> Image.Image:
    """The scene as an RGB image `resolution` pixels square."""
    image = Image.new("RGB", (resolution, resolution), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for item in scene.shapes:
        draw_shape(draw, item.shape, shape_box(item, resolution), PALETTE[item.color])
    return image


def palette_array() -> np.ndarray:
    """The palette as float32 [len(COLORS), 3] in 0..255, rows in COLORS order."""
    return np.array([PALETTE[name] for name in COLORS], dtype=np.float32)
