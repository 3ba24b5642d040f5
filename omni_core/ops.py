"""The layer constructors models are built from, injectable so a host can swap them.

Every weight-owning module takes `operations`: a namespace with `Linear`, `RMSNorm` and `LayerNorm`. The default is
plain torch; ComfyUI passes its `comfy.ops` classes (no random init, weight casting, quantised storage) through the
same seam, as it does for its own models.
"""

from types import SimpleNamespace

import torch

default_operations = SimpleNamespace(Linear=torch.nn.Linear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm)
