"""The raw CPU kernels the dispatchers choose among: oneDNN GEMMs (with a fused post-op), blocked attention built on
them, and torch's SDPA over grouped heads. They depend on torch only; which one runs where is kernel_choice.py's
business, and the dispatchers (cpu_gemm.py, attention.py) ask it.

oneDNN's dense GEMM is `torch.ops.mkldnn._linear_pointwise` (the op inductor uses), private to PyTorch: present on
x86 builds with mkldnn. Being present is not being runnable: on a CPU without AVX-512 (an AMD Zen 3, most desktop
and laptop CPUs) oneDNN has no bfloat16 inner product and the op raises "could not create a primitive descriptor".
kernel_choice.py probes each path before anything calls it.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa argument
ONEDNN_ROWS = 256  # query rows (all heads of a group) per score block: 256 x S_k floats stay near the L2 cache


def onednn_built() -> bool:
    """oneDNN's dense GEMM op exists in this build: an x86 PyTorch with mkldnn (all official x86 wheels)."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """x @ weight.T + bias through oneDNN, then `activation` ("none", or a oneDNN post-op such as "swish") inside the
    GEMM. Equal to F.linear up to round-off (another summation order)."""
    # a non-contiguous weight sends oneDNN to a reference kernel ~1000x slower: make it dense first (no-op if so)
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, activation, [], "")


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """torch's SDPA over grouped heads; mask None or SDPA-broadcastable boolean.

    On the CPU the flash kernel reads shared key/value heads itself (`enable_gqa`, torch >= 2.5): no repeated copies.
    Elsewhere key/value heads are repeated to the query heads, as some GPU kernels fall back to the math path with
    `enable_gqa`."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and query.device.type == "cpu" and SDPA_GQA:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def blocked_attention_onednn(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The same attention with both products as oneDNN GEMMs, in blocks of query rows (float32 or bfloat16 CPU
    inference).

    Query heads that share a key/value head are stacked into one GEMM, so keys are never repeated; each block's
    scores [rows, S_k] are softmaxed in place and multiplied by the values at once. mask: None or [B, 1, 1, S_k].
    Scores and softmax are float32 in either dtype, as in torch's flash kernel: bfloat16 scores would double the
    error of sharp attention. Only the probabilities are rounded to bfloat16, for the product with the values.
    """
    B, H, S_q, D = query.shape
    H_kv = key.shape[1]
    groups = H // H_kv
    scaled = (query.float() * D**-0.5).view(B, H_kv, groups, S_q, D)
    out = query.new_empty(B, H_kv, groups, S_q, D)
    block = max(1, ONEDNN_ROWS // groups)
    for b in range(B):
        hidden = None if mask is None else ~mask[b, 0, 0]  # keys to drop
        for h in range(H_kv):
            k, v_t = key[b, h].float().contiguous(), value[b, h].t().contiguous()
            for start in range(0, S_q, block):
                q = scaled[b, h, :, start : start + block]
                n = q.shape[1]
                scores = onednn_linear(q.reshape(groups * n, D), k)
                if hidden is not None:
                    scores.masked_fill_(hidden, float("-inf"))
                probabilities = torch.softmax(scores, dim=-1).to(value.dtype)
                out[b, h, :, start : start + n] = onednn_linear(probabilities, v_t).view(groups, n, D)
    return out.view(B, H, S_q, D)
