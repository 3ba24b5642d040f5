"""OmniGen2 nodes for ComfyUI: one table of node classes, turned into ComfyUI's two mappings.

Imported relatively by the pack's root `__init__.py` (never as a top-level `nodes`, which is ComfyUI's own module).
"""

from __future__ import annotations

from . import bridge
from .chat import OmniGen2Chat
from .condition import OmniGen2CompactCondition, OmniGen2ConditionEncode
from .loader import LoadOmniGen2, LoadOmniGen2SingleFiles
from .lora import OmniGen2LoRA
from .reflect import OmniGen2Reflect
from .sampler import OmniGen2CachedSampler, OmniGen2Repaint
from .shapes import OmniGen2ShapesScene

NODE_CONFIG = {
    "LoadOmniGen2": {"class": LoadOmniGen2},
    "LoadOmniGen2SingleFiles": {"class": LoadOmniGen2SingleFiles},
    "OmniGen2LoRA": {"class": OmniGen2LoRA},
    "OmniGen2ConditionEncode": {"class": OmniGen2ConditionEncode},
    "OmniGen2CompactCondition": {"class": OmniGen2CompactCondition},
    "OmniGen2CachedSampler": {"class": OmniGen2CachedSampler},
    "OmniGen2Repaint": {"class": OmniGen2Repaint},
    "OmniGen2Chat": {"class": OmniGen2Chat},
    "OmniGen2Reflect": {"class": OmniGen2Reflect},
    "OmniGen2ShapesScene": {"class": OmniGen2ShapesScene},
}


def generate_node_mappings(node_config: dict) -> tuple[dict, dict]:
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS from the table; display names come from each TITLE."""
    class_mappings, display_names = {}, {}
    for name, entry in node_config.items():
        cls = entry["class"]
        class_mappings[name] = cls
        display_names[name] = entry.get("name", getattr(cls, "TITLE", name))
    return class_mappings, display_names


bridge.register_folders()
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = generate_node_mappings(NODE_CONFIG)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_CONFIG"]
