"""Progress and interrupt: the engine's per-step callback as ComfyUI's progress bar with a latent preview, text on
the running node, and cancel (ComfyUI's Cancel button inside it, `request_interrupt()` outside)."""

from __future__ import annotations

import threading
from typing import Callable

import torch

from .devices import load_device
from .host import IN_COMFYUI, comfy_utils, latent_previewer, model_management, send_node_text


class Interrupted(Exception):
    """Raised from the progress callback outside ComfyUI after `request_interrupt()`; the engine aborts cleanly."""


_interrupt = threading.Event()


def request_interrupt() -> None:
    """Cancel the running sampler at its next step (outside ComfyUI; inside it, ComfyUI's Cancel button does this)."""
    _interrupt.set()


def check_interrupted() -> None:
    """Raise if the user cancelled: ComfyUI's own exception inside ComfyUI, `Interrupted` outside."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()
    elif _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("OmniGen2 sampling cancelled")


def progress_callback(
    total: int, device: torch.device | None = None, on_step: Callable[[int, int], None] | None = None
) -> Callable[[int, int, torch.Tensor | None], None]:
    """The engine's `progress(step, total, latents)`: ComfyUI's progress bar with a latent preview, and cancel."""
    bar = comfy_utils.ProgressBar(total) if IN_COMFYUI else None
    previewer = latent_previewer(device or load_device()) if IN_COMFYUI else None

    def progress(step: int, total: int, latents: torch.Tensor | None) -> None:
        if on_step is not None:
            on_step(step, total)
        if bar is not None:
            preview = None
            if previewer is not None and latents is not None:
                preview = previewer.decode_latent_to_preview_image("JPEG", latents[:1].float())
            bar.update_absolute(step, total, preview)
        check_interrupted()

    return progress


def show_text(text: str) -> None:
    """A line of progress text on the running node (ComfyUI's progress text; a no-op outside ComfyUI)."""
    if IN_COMFYUI:
        send_node_text(text)


def round_progress(
    rounds: int, steps: int, device: torch.device | None = None
) -> tuple[Callable[[int, int], None], Callable[[int, int, torch.Tensor | None], None]]:
    """(on_round, progress) for a loop of up to `rounds` sampling runs of `steps` each: one progress bar over all of
    them, the round shown as text on the node, cancel checked between rounds and at every step."""
    current = [1]
    bar = progress_callback(rounds * steps, device)

    def on_round(number: int, total: int) -> None:
        check_interrupted()
        current[0] = number
        show_text(f"round {number} of up to {total}")

    def progress(step: int, total: int, latents: torch.Tensor | None) -> None:
        bar((current[0] - 1) * steps + step, rounds * steps, latents)

    return on_round, progress
