"""Helpers for ComfyUI workflow files: the node signatures they may use, and UI-format to API-format conversion.

`node_signatures(pack)` describes our nodes (read from their INPUT_TYPES) plus the few ComfyUI core nodes the
examples use (written out below from ComfyUI's nodes.py, so this works without a ComfyUI checkout; the end-to-end
test cross-checks them against a running server's /object_info). `to_api_prompt` turns a UI-format workflow (what
the editor saves and example_workflows/ holds) into the API format POSTed to /prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass
class Signature:
    """One node type: its inputs (name -> type; COMBO for lists), which of them are widgets, its output types."""

    inputs: dict[str, str]
    outputs: tuple[str, ...]
    # widget values in UI order; None marks an extra UI-only value (e.g. control_after_generate, the upload button)
    widget_order: list[str | None] = field(default_factory=list)


CORE_NODES = {
    "LoadImage": Signature({"image": "COMBO"}, ("IMAGE", "MASK"), ["image", None]),
    "SaveImage": Signature({"images": "IMAGE", "filename_prefix": "STRING"}, (), ["filename_prefix"]),
    "PreviewImage": Signature({"images": "IMAGE"}, (), []),
    "PreviewAny": Signature({"source": "*"}, (), []),  # comfy_extras/nodes_preview_any.py: shows any value as text
}


def signature_of(cls) -> Signature:
    declared = cls.INPUT_TYPES()
    inputs, order = {}, []
    for group in ("required", "optional"):
        for name, spec in declared.get(group, {}).items():
            kind = "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]
            inputs[name] = kind
            if kind in WIDGET_TYPES:
                order.append(name)
                options = spec[1] if len(spec) > 1 else {}
                if options.get("control_after_generate"):
                    order.append(None)
    return Signature(inputs, tuple(cls.RETURN_TYPES), order)


def node_signatures(pack) -> dict[str, Signature]:
    signatures = dict(CORE_NODES)
    signatures.update({name: signature_of(cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()})
    return signatures


def to_api_prompt(workflow: dict, signatures: dict[str, Signature]) -> dict:
    """UI format {"nodes", "links"} -> API format {node_id: {"class_type", "inputs"}} (muted nodes left out)."""
    links = {link[0]: link for link in workflow["links"]}  # [id, from_node, from_slot, to_node, to_slot, type]
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        signature = signatures[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values", []))
        for name, value in zip(signature.widget_order, values):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, from_node, from_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(from_node), from_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
