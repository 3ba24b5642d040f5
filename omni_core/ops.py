"""The layer constructors models are built from, injectable so a host can swap them.

Every weight-owning module takes `operations`: a namespace with `Linear`, `RMSNorm` and `LayerNorm`. The default is
torch's layers (with float32 CPU inference of Linear routed to oneDNN, see cpu_gemm.py); ComfyUI passes its `comfy.ops` classes (no random init, weight casting, quantised storage) through the
same seam, as it does for its own models.
"""

from types import SimpleNamespace

import torch

from .cpu_gemm import linear, linear_silu


class Linear(torch.nn.Linear):
    """torch.nn.Linear (same parameters and state dict) whose float32 CPU inference runs on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def forward_silu(self, x: torch.Tensor) -> torch.Tensor:
        """silu(self(x)), fused where oneDNN runs it."""
        return linear_silu(x, self.weight, self.bias)


default_operations = SimpleNamespace(Linear=Linear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm)


class StorageCastLinear(torch.nn.Linear):
    """A Linear whose weights may be stored narrower than they are computed (float8 storage, bf16 compute): each
    call casts them to the input's dtype, so the 4B transformer fits 8-12 GB cards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return linear(x, self.weight.to(x.dtype), bias)


storage_cast_operations = SimpleNamespace(
    Linear=StorageCastLinear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm
)
