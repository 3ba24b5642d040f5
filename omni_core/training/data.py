"""OmniGen2's training data: jsonl lines of {task_type, instruction, input_images, output_image}, checked line by line.

Each error names the file and line and what to fix, before any model is loaded. Image sizes are read from the
file headers only (no decoding), so the batch plan (`order.py`) knows every output size up front.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import PIL.Image

from ..condition import check_reference_count
from ..errors import InvalidInputError, OmniGen2Error
from ..image_processing import fit_reference_size

TASK_TYPES = ("t2i", "edit", "in_context")
KEYS = {"task_type", "instruction", "input_images", "output_image"}


class TrainingDataError(OmniGen2Error, ValueError):
    """A jsonl line of the training data cannot be used (bad JSON, missing key, wrong type, missing image)."""


@dataclass(frozen=True)
class TrainingItem:
    """One training example: where it came from (`source` = "file:line"), its prompt and image files."""

    source: str
    task_type: str
    instruction: str
    input_images: tuple[Path, ...]
    output_image: Path


def _image_path(value: object, folder: Path, where: str, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise TrainingDataError(f"{where}: {what} must be a path string, got {value!r}.")
    path = Path(value) if Path(value).is_absolute() else folder / value
    if not path.is_file():
        raise TrainingDataError(f"{where}: {what} '{value}' does not exist (looked for {path}).")
    return path


def parse_line(text: str, folder: Path, where: str) -> TrainingItem:
    """One jsonl line as a TrainingItem, or a TrainingDataError naming `where` (file:line) and the problem."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainingDataError(f"{where}: not valid JSON ({error.msg} at column {error.colno}).") from error
    if not isinstance(record, dict):
        raise TrainingDataError(f"{where}: each line must be a JSON object, got {type(record).__name__}.")
    unknown = sorted(set(record) - KEYS)
    if unknown:
        raise TrainingDataError(f"{where}: unknown key(s) {unknown}; a line takes {sorted(KEYS)}.")
    for key in ("task_type", "instruction", "output_image"):
        if key not in record:
            raise TrainingDataError(f"{where}: missing key '{key}'.")
    task_type, instruction = record["task_type"], record["instruction"]
    if task_type not in TASK_TYPES:
        raise TrainingDataError(f"{where}: task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}.")
    if not isinstance(instruction, str):
        raise TrainingDataError(f"{where}: instruction must be a string, got {instruction!r}.")
    inputs = record.get("input_images") or []
    if not isinstance(inputs, list):
        raise TrainingDataError(f"{where}: input_images must be a list of paths, got {inputs!r}.")
    try:
        check_reference_count(len(inputs), "input_images")
    except InvalidInputError as error:
        raise TrainingDataError(f"{where}: {error}") from None
    if task_type == "t2i" and inputs:
        raise TrainingDataError(f"{where}: a t2i line has no input_images; use task_type edit or in_context.")
    if task_type != "t2i" and not inputs:
        raise TrainingDataError(f"{where}: a {task_type} line needs input_images.")
    return TrainingItem(
        source=where,
        task_type=task_type,
        instruction=instruction,
        input_images=tuple(_image_path(p, folder, where, f"input_images[{j}]") for j, p in enumerate(inputs)),
        output_image=_image_path(record["output_image"], folder, where, "output_image"),
    )


def read_jsonl(paths: Sequence[str | Path], task_types: Sequence[str] = TASK_TYPES) -> list[TrainingItem]:
    """Every item of the jsonl files whose task type is one of `task_types`, in file order (blank lines skipped)."""
    items = []
    for path in map(Path, paths):
        if not path.is_file():
            raise TrainingDataError(f"training data '{path}' does not exist (data.jsonl).")
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if text.strip():
                items.append(parse_line(text, path.parent, f"{path}:{number}"))
    if not items:
        raise TrainingDataError(f"the training data {', '.join(map(str, paths))} holds no items.")
    items = [item for item in items if item.task_type in task_types]
    if not items:
        raise TrainingDataError(f"the training data {', '.join(map(str, paths))} holds no {' or '.join(task_types)} "
                                "items (data.task_types).")
    return items


def image_size(path: Path, where: str) -> tuple[int, int]:
    """(height, width) from the image header, or a TrainingDataError naming the item."""
    try:
        with PIL.Image.open(path) as image:
            return image.height, image.width
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise TrainingDataError(f"{where}: '{path}' is not a readable image ({error}).") from error


def output_size(item: TrainingItem, max_pixels: int, max_side_length: int) -> tuple[int, int]:
    """The processed (height, width) the output image trains at (the official preprocessing's size rule)."""
    height, width = fit_reference_size(*image_size(item.output_image, item.source), max_pixels, max_side_length)
    if min(height, width) == 0:
        raise TrainingDataError(f"{item.source}: output_image is smaller than 16 pixels a side after resizing.")
    return height, width
