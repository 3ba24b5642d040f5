"""The pictures the Comfy Registry and ComfyUI's template browser show: a .jpg beside each example workflow (same
name) and the pack's icon (icon.png, square).

A bundled-model template's thumbnail is the picture the workflow draws, from a run of the bundled model at the
workflow's own settings (`run_directly`: the engine, which the real-server tests hold equal to ComfyUI's output); the
icon is four such pictures. The other workflows need the OmniGen2 release, which no test machine has: their thumbnail
is a card naming the task and saying so, not a picture passed off as the release's.

    .venv/bin/python tests/workflow_thumbnails.py    # writes example_workflows/*.jpg and icon.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "example_workflows"
ICON = ROOT / "icon.png"
SIDE = 256  # thumbnails and icon: square, a whole multiple of the bundled model's 64 x 64
JPEG_QUALITY = 95
BUNDLED_PREFIX = "omnigen2_bundled_"
CARD_BACKGROUND, CARD_TEXT = (24, 28, 40), (235, 235, 235)
ICON_PROMPTS = ("a large red circle on a blue background", "a large yellow triangle on a purple background",
                "a large green square on a black background", "a large white circle on a red background")


def is_bundled(workflow: Path) -> bool:
    return workflow.name.startswith(BUNDLED_PREFIX)


def thumbnail_path(workflow: Path) -> Path:
    return workflow.with_suffix(".jpg")


def enlarge(picture: np.ndarray) -> Image.Image:
    """A small picture as a SIDE x SIDE square, pixels kept sharp (nearest neighbour)."""
    return Image.fromarray(picture).resize((SIDE, SIDE), Image.Resampling.NEAREST)


def bundled_thumbnail(workflow: Path) -> Image.Image:
    """The picture the workflow saves, drawn now by the bundled model at the workflow's settings."""
    from comfy_workflow import offline_object_info, run_directly, saved_by_save_image, to_api_prompt
    from conftest import load_pack

    classes = load_pack().NODE_CLASS_MAPPINGS
    prompt = to_api_prompt(json.loads(workflow.read_text()), offline_object_info(classes))
    pictures = saved_by_save_image(prompt, run_directly(prompt, classes, WORKFLOWS))
    return enlarge(pictures[0])


def title_card(workflow: Path) -> Image.Image:
    """A card with the workflow's task and the note that it runs on the OmniGen2 release."""
    task = workflow.stem.removeprefix("omnigen2_").replace("_", " ")
    card = Image.new("RGB", (SIDE, SIDE), CARD_BACKGROUND)
    draw = ImageDraw.Draw(card)
    for text, size, height in (("OmniGen2", 34, -40), (task, 20, 10), ("needs the OmniGen2 release", 14, 50)):
        font = ImageFont.load_default(size=size)
        draw.text((SIDE // 2, SIDE // 2 + height), text, font=font, fill=CARD_TEXT, anchor="mm")
    return card


def thumbnail(workflow: Path) -> Image.Image:
    return bundled_thumbnail(workflow) if is_bundled(workflow) else title_card(workflow)


def icon() -> Image.Image:
    """Four pictures of the bundled model, 2 x 2, one seed each."""
    import omni_core

    model = omni_core.load_model()
    half = SIDE // 2
    square = Image.new("RGB", (SIDE, SIDE))
    for i, prompt in enumerate(ICON_PROMPTS):
        image = model.generate(prompt, steps=20, seed=i).images[0]
        picture = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        quarter = Image.fromarray(picture).resize((half, half), Image.Resampling.NEAREST)
        square.paste(quarter, (i % 2 * half, i // 2 * half))
    return square


def main() -> None:
    for workflow in sorted(WORKFLOWS.glob("*.json")):
        thumbnail(workflow).save(thumbnail_path(workflow), quality=JPEG_QUALITY)
        print("wrote", thumbnail_path(workflow).relative_to(ROOT))
    icon().save(ICON)
    print("wrote", ICON.relative_to(ROOT))


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    main()
