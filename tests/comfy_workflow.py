"""ComfyUI workflow files: UI format to API format, read off a server's /object_info, and a direct run of a prompt.

`to_api_prompt(workflow, object_info)` does what ComfyUI's front end does when it queues a saved workflow: each node's
`widgets_values` are matched, in order, to the inputs /object_info declares as widgets (required then optional, in
`input_order`), plus the extra values the front end stores beside some of them (`control_after_generate` after a
seed, the upload button after Load Image's file); linked inputs become [source node id, output slot]. Nothing here
lists a node's inputs by hand: a node someone adds, or a widget added to a sampler, converts the same way.

`node_info(cls)` builds the same /object_info entry from a node class without a server (offline checks), and
`CORE_OBJECT_INFO` holds ComfyUI's entries for the core nodes the examples use, recorded from the real server by
`tests/test_comfyui_api.py::test_recorded_core_object_info_is_the_servers` (which fails when they differ).

`run_directly(prompt, classes, input_dir)` executes an API prompt by calling the node classes in this process, without
ComfyUI: our nodes run on the CPU through the engine; Load Image, Save / Preview Image and Preview Any are replaced by
what they compute. The server tests compare ComfyUI's saved images with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# Options after which the front end stores one more widget value (the value control, the upload button).
EXTRA_VALUE_OPTIONS = ("control_after_generate", "image_upload", "video_upload", "audio_upload")
CORE_OBJECT_INFO_PATH = Path(__file__).resolve().parent / "fixtures" / "comfyui_core_object_info.json"
CORE_OBJECT_INFO: dict = json.loads(CORE_OBJECT_INFO_PATH.read_text())
# Front-end-only nodes (text on the canvas): not in /object_info, never sent to the server.
VIRTUAL_NODES = ("Note", "MarkdownNote")


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's required then optional inputs, in the order the server declares them."""
    declared = info["input"]
    order = info.get("input_order") or {group: list(declared.get(group, {})) for group in ("required", "optional")}
    return [(name, declared[group][name]) for group in ("required", "optional") for name in order.get(group, [])]


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not _options(spec).get("forceInput")


def widget_slots(info: dict) -> list[str | None]:
    """The names `widgets_values` holds, in order; None marks an extra front-end value (value control, upload)."""
    slots = []
    for name, spec in ordered_inputs(info):
        if is_widget(spec):
            slots.append(name)
            slots.extend(None for option in EXTRA_VALUE_OPTIONS if _options(spec).get(option))
    return slots


def _default(spec: list) -> Any:
    options = _options(spec)
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list) and spec[0]:
        return spec[0][0]
    raise ValueError(f"no default for {spec}")


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """UI format {"nodes", "links"} -> API format {node id: {"class_type", "inputs"}} (muted and virtual nodes left
    out, as the front end does)."""
    links = {link[0]: link for link in workflow["links"]}  # [id, from node, from slot, to node, to slot, type]
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0 or node["type"] in VIRTUAL_NODES:
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node {node['id']}: type {node['type']!r} is not in this server's /object_info")
        info = object_info[node["type"]]
        specs = dict(ordered_inputs(info))
        slots, values = widget_slots(info), list(node.get("widgets_values") or [])
        if len(values) > len(slots):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values for {len(slots)} "
                             f"widget slots {slots}: the saved workflow does not fit the node's inputs")
        inputs = {}
        for index, name in enumerate(slots):
            if name is not None:
                inputs[name] = values[index] if index < len(values) else _default(specs[name])
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, from_node, from_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(from_node), from_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def node_info(cls: type) -> dict:
    """The /object_info entry ComfyUI makes of a node class (the parts conversion reads), without a server."""
    declared = cls.INPUT_TYPES()
    return json.loads(json.dumps({
        "input": {group: declared[group] for group in ("required", "optional") if group in declared},
        "input_order": {group: list(declared[group]) for group in ("required", "optional") if group in declared},
        "output": list(cls.RETURN_TYPES),
        "category": getattr(cls, "CATEGORY", ""),
    }, default=list))


def offline_object_info(classes: dict[str, type]) -> dict:
    """/object_info as a server with this pack would give it: the recorded core entries plus our classes'."""
    return {**CORE_OBJECT_INFO, **{name: node_info(cls) for name, cls in classes.items()}}


@dataclass
class Signature:
    """One node type seen from a workflow file: input name -> socket type (COMBO for lists), outputs, widget slots."""

    inputs: dict[str, str]
    outputs: tuple[str, ...]
    widget_order: list[str | None] = field(default_factory=list)


def signature(info: dict) -> Signature:
    inputs = {name: "COMBO" if isinstance(spec[0], list) else spec[0] for name, spec in ordered_inputs(info)}
    return Signature(inputs, tuple(info["output"]), widget_slots(info))


# --- running a prompt without ComfyUI -------------------------------------------------------------------------------


def load_image(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """What ComfyUI's Load Image gives: IMAGE [1, H, W, 3] in 0..1 and MASK [1, H, W] = 1 - alpha."""
    picture = ImageOps.exif_transpose(Image.open(path))
    image = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]
    if "A" in picture.getbands():
        mask = 1.0 - torch.from_numpy(np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0)
    else:
        mask = torch.zeros(image.shape[1:3])
    return image, mask[None]


def saved_pixels(images: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI's Save Image conversion of an IMAGE batch: 255 * x clipped and truncated to uint8."""
    return [np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8) for image in images]


def saved_by_save_image(prompt: dict, saved: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
    """Of the pictures each image node showed (node id -> pictures), those of the prompt's one Save Image node: the
    workflow's result, where a Preview Image beside it may show more (a reflection's every round)."""
    (node_id,) = [key for key, node in prompt.items() if node["class_type"] == "SaveImage"]
    return saved[node_id]


def run_directly(prompt: dict, classes: dict[str, type], input_dir: Path) -> dict[str, list[np.ndarray]]:
    """Execute an API prompt in this process; node id -> the pictures each Save/Preview Image node would write."""
    outputs: dict[str, tuple] = {}
    saved: dict[str, list[np.ndarray]] = {}

    def value(item: Any) -> Any:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[0] in prompt:
            return evaluate(item[0])[item[1]]
        return item

    def evaluate(node_id: str) -> tuple:
        if node_id not in outputs:
            node = prompt[node_id]
            inputs = {name: value(item) for name, item in node["inputs"].items()}
            kind = node["class_type"]
            if kind == "LoadImage":
                outputs[node_id] = load_image(input_dir / inputs["image"])
            elif kind in ("SaveImage", "PreviewImage"):
                saved[node_id] = saved_pixels(inputs["images"])
                outputs[node_id] = ()
            elif kind == "PreviewAny":  # shows a value as text: nothing to compare
                outputs[node_id] = ()
            elif kind in classes:
                cls = classes[kind]
                result = getattr(cls(), cls.FUNCTION)(**inputs)
                outputs[node_id] = tuple(result["result"] if isinstance(result, dict) else result)
            else:
                raise KeyError(f"run_directly has no way to run {kind!r} (node {node_id}) outside ComfyUI")
        return outputs[node_id]

    for node_id in prompt:
        evaluate(node_id)
    return saved
