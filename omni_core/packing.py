"""Ragged batches: patchify latents into token rows, pad token lists into a batch, and undo both.

OmniGen2 batches samples whose images, reference images and prompts differ in length. Every group of tokens is
right-padded to the longest sample; the boolean mask (True = real token) is None when nothing was padded, which is
what lets attention skip masking entirely.
"""

from __future__ import annotations

import torch


def patchify(latent: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[C, H, W] -> [(H/p)(W/p), p*p*C], tokens row-major, features ordered (p1 p2 c) as the checkpoints expect."""
    C, H, W = latent.shape
    p = patch_size
    tokens = latent.reshape(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0)  # (h, w, p1, p2, C)
    return tokens.reshape((H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """[(h w), p*p*C] -> [C, h*p, w*p], the inverse of `patchify`."""
    h, w = grid
    p = patch_size
    C = tokens.shape[-1] // (p * p)
    latent = tokens.reshape(h, w, p, p, C).permute(4, 0, 2, 1, 3)  # (C, h, p1, w, p2)
    return latent.reshape(C, h * p, w * p)


def pad_sequences(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack [n_i, ...] tensors into [B, max n, ...] with zeros after each; mask [B, max n] or None if all equal."""
    lengths = [len(s) for s in sequences]
    longest = max(lengths)
    if all(n == longest for n in lengths):
        return torch.stack(sequences), None
    padded = sequences[0].new_zeros(len(sequences), longest, *sequences[0].shape[1:])
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool, device=sequences[0].device)
    for row, (sequence, n) in enumerate(zip(sequences, lengths)):
        padded[row, :n] = sequence
        mask[row, :n] = True
    return padded, mask
