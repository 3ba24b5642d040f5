"""Whether the pack runs inside ComfyUI, and the ComfyUI modules it uses: the one module of the pack that imports them.

ComfyUI puts its modules on sys.path before it loads custom nodes; anywhere else (tests, scripts) they are absent,
`IN_COMFYUI` is False and the names below are None. The other bridge modules take ComfyUI only from here, so what the
pack depends on in ComfyUI is listed in one place.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import comfy.lora as comfy_lora
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.ops as comfy_ops
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    IN_COMFYUI = False
    comfy_lora = model_management = model_patcher = comfy_ops = comfy_utils = folder_paths = None
else:
    IN_COMFYUI = True


def latent_previewer(device: torch.device) -> Any:
    """ComfyUI's latent previewer (its preview method setting) for the sampler's latents (inside ComfyUI only)."""
    import comfy.latent_formats
    import latent_preview

    # OmniGen2 samples in the FLUX VAE's scaled space, the space ComfyUI's Flux latent format previews.
    return latent_preview.get_previewer(device, comfy.latent_formats.Flux())


def send_node_text(text: str) -> None:
    """Show a line of progress text on the node ComfyUI is executing (inside ComfyUI only)."""
    from comfy_execution.utils import get_executing_context
    from server import PromptServer

    context = get_executing_context()
    if context is not None and PromptServer.instance is not None:
        PromptServer.instance.send_progress_text(text, context.node_id)
