"""The OmniGen2 Shapes Scene node: a picture of the synthetic shapes the bundled default model was trained on, and
its caption, so that edit and in-context workflows run on a fresh install with no image of the user's own."""

from __future__ import annotations

import numpy as np
import torch

from omni_core.errors import InvalidInputError
from omni_core.training.shapes.scenes import COLORS, POSITIONS, SHAPES, SIZES, Scene, Shape, render

from . import bridge


class OmniGen2ShapesScene:
    TITLE = "OmniGen2 Shapes Scene"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "color": (list(COLORS), {"default": "red", "tooltip": "The shape's colour."}),
                "shape": (list(SHAPES), {"default": "circle", "tooltip": "Circle, square or apex-up triangle."}),
                "size": (list(SIZES), {"default": "large", "tooltip": "small: a third of the side, large: over half."}),
                "position": (list(POSITIONS), {"default": "center", "tooltip": "Where the shape's centre sits."}),
                "background": (list(COLORS), {"default": "blue", "tooltip": "Must differ from the shape's colour."}),
                "resolution": ("INT", {"default": 64, "min": 16, "max": 1024, "step": 16,
                                       "tooltip": "Side of the square picture; the bundled model was trained at 64."}),
            }
        }

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "caption")
    OUTPUT_TOOLTIPS = ("The scene, drawn exactly (every pixel a palette colour).",
                       "Its caption in the training data's words, e.g. 'a large red circle on a blue background'.")
    FUNCTION = "draw"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = ("Draws one flat shape on a flat background, as the synthetic data of the bundled default model: a "
                   "reference image for trying edits and in-context generation without downloads.")

    def draw(self, color, shape, size, position, background, resolution):
        if color == background:
            raise InvalidInputError(f"color and background are both '{color}': pick a background that differs from the shape.")
        item = Shape(color, shape, SIZES[size], POSITIONS[position])
        pixels = np.asarray(render(Scene(background, (item,)), resolution), dtype=np.float32) / 255.0
        image = bridge.to_comfy_image(torch.from_numpy(pixels).permute(2, 0, 1)[None])
        return (image, f"a {size} {item.words()} on a {background} background")
