"""Reads flat-shape scenes back from pixels, with no model: the quality measurer of `benchmarks/quality.py`.

Every pixel is classified to its nearest palette colour; the background is the commonest colour on the border. The
rest, opened (thin bits removed), falls into connected parts, and each part covering enough pixels is an object:
- its colour is the commonest inside it;
- its shape is a triangle where its mass sits low in its box (an apex-up triangle's centroid is two thirds of the
  way down, a circle's or a square's halfway), else the circle or the square, whichever template drawn in its
  bounding box overlaps it better (intersection over union); read from the whole part or from its colour's pixels
  alone, whichever fits better.
A part is read whole so that the rims blurry edges leave (an orange triangle drawn with a reddish edge, red next to
yellow reading as orange) belong to their object: read colour by colour, a rim took the tip off a triangle, which
then fitted the circle better, or itself read as a second object. Where a part is no one shape (no template fits,
or its box is far from square, as every object's box is), it is two objects that blur joined, read colour by colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLORS, SHAPES, Scene, draw_shape, palette_array

MIN_AREA = 0.03  # an object covers at least this fraction of the image
MIN_IOU = 0.55  # and overlaps its best template at least this well
# An apex-up triangle's centroid is 2/3 of the way down its box, a circle's or a square's halfway: blurred and rounded
# as samples draw them, triangles measured 0.56-0.61, where their outline fitted the circle or the square as well.
TRIANGLE_CENTROID = 0.55
MAX_ASPECT = 1.4  # an object's box is square; a part wider or taller than this is objects joined
POSITION_TOLERANCE = 0.12  # largest distance of a found centre from the expected one, fraction of the image side


@dataclass(frozen=True)
class FoundShape:
    """An object read from pixels: colour, shape, bounding-box centre (fractions of the side), area fraction, IoU."""

    color: str
    shape: str
    center: tuple[float, float]
    area: float
    iou: float


@dataclass(frozen=True)
class FoundScene:
    background: str
    shapes: tuple[FoundShape, ...]  # largest first


def as_rgb_array(image) -> np.ndarray:
    """float32 [H, W, 3] in 0..255 from a PIL image, a uint8 array [H, W, 3] or a float tensor/array [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    return np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0


def color_labels(rgb: np.ndarray) -> np.ndarray:
    """Index into COLORS of every pixel's nearest palette colour, [H, W]."""
    distances = ((rgb[:, :, None, :] - palette_array()[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def _shifted(mask: np.ndarray, reduce) -> np.ndarray:
    """`reduce` (np.logical_and / np.logical_or) of the mask and its four neighbours (edges padded with False)."""
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        out = reduce(out, padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]])
    return out


def opened(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion then dilation `radius` times: removes parts thinner than about 2 * radius + 1 pixels."""
    for _ in range(radius):
        mask = _shifted(mask, np.logical_and)
    for _ in range(radius):
        mask = _shifted(mask, np.logical_or)
    return mask


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected parts of a boolean mask, largest first (label propagation: each pixel takes its neighbours'
    max id)."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        padded = np.pad(labels, 1)
        neighbours = np.stack([padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
                               for dy, dx in ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))])
        spread = np.where(mask, neighbours.max(0), 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    ids, counts = np.unique(labels[mask], return_counts=True)
    return [labels == ids[k] for k in np.argsort(-counts, kind="stable")]


def _templates(box: tuple[float, float, float, float], size: tuple[int, int]) -> dict[str, np.ndarray]:
    masks = {}
    for shape in SHAPES:
        canvas = Image.new("L", size, 0)
        draw_shape(ImageDraw.Draw(canvas), shape, box, 255)
        masks[shape] = np.asarray(canvas) > 0
    return masks


def classify_shape(mask: np.ndarray) -> tuple[str, float, tuple[float, float, float, float]]:
    """(shape, IoU with its template, pixel box) for a boolean object mask [H, W]: a triangle where the mask's mass
    sits low in its box (TRIANGLE_CENTROID), else the better fitting of circle and square."""
    ys, xs = np.nonzero(mask)
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    box = (float(x0), float(y0), float(x1), float(y1))
    templates = _templates(box, (mask.shape[1], mask.shape[0]))
    ious = {shape: float((template & mask).sum() / max((template | mask).sum(), 1)) for shape, template in templates.items()}
    low = (ys.mean() - y0) / max(y1 - y0, 1.0) >= TRIANGLE_CENTROID
    shape = "triangle" if low else max(("circle", "square"), key=ious.__getitem__)
    return shape, ious[shape], box


def read_scene(image) -> FoundScene:
    """The background colour and the objects of an image (see the module docstring)."""
    labels = color_labels(as_rgb_array(image))
    height, width = labels.shape
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = int(np.bincount(border, minlength=len(COLORS)).argmax())
    radius = max(1, round(min(height, width) / 64))
    found = []
    for part in components(opened(labels != background, radius)):
        if part.mean() < MIN_AREA:
            break
        whole = _object(part, labels)
        if whole is not None:
            core = _colored(part, labels, COLORS.index(whole.color), radius)
            found.append(whole if core is None or core.iou <= whole.iou else core)
            continue
        found += [item for index in np.unique(labels[part])
                  if (item := _colored(part, labels, int(index), radius)) is not None]
    found.sort(key=lambda item: -item.area)
    return FoundScene(COLORS[background], tuple(found))


def _colored(part: np.ndarray, labels: np.ndarray, index: int, radius: int) -> FoundShape | None:
    """The object that the pixels of one colour in a part show (their largest piece, opened), if any."""
    pieces = components(opened(part & (labels == index), radius))
    return _object(pieces[0], labels) if pieces else None


def _object(mask: np.ndarray, labels: np.ndarray) -> FoundShape | None:
    """The object a part shows, or None where it is too small, fits no template or its box is far from square."""
    height, width = mask.shape
    area = mask.sum() / (height * width)
    if area < MIN_AREA:
        return None
    shape, iou, (x0, y0, x1, y1) = classify_shape(mask)
    if iou < MIN_IOU or max(x1 - x0 + 1, y1 - y0 + 1) > MAX_ASPECT * min(x1 - x0 + 1, y1 - y0 + 1):
        return None
    inside = _shifted(mask, np.logical_and)
    colors = labels[inside if inside.any() else mask]
    center = ((x0 + x1 + 1) / 2 / width, (y0 + y1 + 1) / 2 / height)
    return FoundShape(COLORS[int(np.bincount(colors).argmax())], shape, center, float(area), iou)


def main_object(found: FoundScene) -> FoundShape | None:
    """The dominant non-background object (largest), or None when nothing reads as a shape."""
    return found.shapes[0] if found.shapes else None


def scene_matches(found: FoundScene, expected: Scene) -> bool:
    """The same background and exactly the expected objects: colour, shape, and centre within POSITION_TOLERANCE."""
    if found.background != expected.background or len(found.shapes) != len(expected.shapes):
        return False
    by_color = {item.color: item for item in found.shapes}
    for item in expected.shapes:
        seen = by_color.get(item.color)
        if seen is None or seen.shape != item.shape:
            return False
        if max(abs(seen.center[0] - item.center[0]), abs(seen.center[1] - item.center[1])) > POSITION_TOLERANCE:
            return False
    return True


def result_matches(task_type: str, found: FoundScene, expected: Scene) -> bool:
    """Whether a result does what its instruction asked: a text-to-image prompt names its object's colour and shape
    and the background, not a place (the main object and the background); an edit or a composition the exact scene."""
    if task_type == "t2i":
        main, want = main_object(found), expected.shapes[0]
        same_object = main is not None and (main.color, main.shape) == (want.color, want.shape)
        return same_object and found.background == expected.background
    return scene_matches(found, expected)
