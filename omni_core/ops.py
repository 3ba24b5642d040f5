"""The layer constructors models are built from, injectable so a host can swap them.

Every weight-owning module takes `operations`: a namespace with `Linear`, `RMSNorm` and `LayerNorm`. The default is
plain torch; ComfyUI passes its `comfy.ops` classes (no random init, weight casting, quantised storage) through the
same seam, as it does for its own models.
"""

from types import SimpleNamespace

import torch

default_operations = SimpleNamespace(Linear=torch.nn.Linear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm)


class StorageCastLinear(torch.nn.Linear):
    """A Linear whose weights may be stored narrower than they are computed (float8 storage, bf16 compute): each
    call casts them to the input's dtype, so the 4B transformer fits 8-12 GB cards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


storage_cast_operations = SimpleNamespace(
    Linear=StorageCastLinear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm
)
