"""The multiply-accumulates (MACs) of a sampling run, counted from the architecture: what any implementation that
does exactly this work must compute, whatever its kernels.

Reuse can only remove reference work; the attention of text and noise queries over the reference keys stays in
every pass that sees them. So the work counts bound the figures of `conditioning.py`: on a machine where every MAC
costs the same, exact compute-once reaches `1 - (W_cached - W_text) / (W_full - W_text)` and no more. Reading the
measured figure against this ceiling separates the method's limit from the implementation's efficiency.

Counted: every GEMM (linear layers, the two attention products), as the engine runs them: refined text once per
prompt, refined noise once per step, refined references once per step for every pass that sees them, the last
joint layer's queries and feed-forward on noise rows only, the condition branch's last layer keys/values only
(`tests/test_benchmarks.py` checks these counts against PyTorch's FLOP counter on the real engine). Not counted:
element-wise work (norms, RoPE, softmax, gates), a few percent of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from omni_core.config import TransformerConfig

TIMESTEP_FREQUENCIES = 256  # omni_core.transformer.TIMESTEP_FREQUENCY_DIM


@dataclass(frozen=True)
class RunShape:
    """What a sampling run feeds the transformer: prompt lengths, token counts, guidance passes, steps."""

    text_len: int
    negative_len: int
    noise_tokens: int
    reference_tokens: tuple[int, ...]  # per reference image
    steps: int
    three_passes: bool = True


def block_macs(
    config: TransformerConfig, tokens: int, queries: int, pairs: int, modulation_rows: int = 0
) -> int:
    """One transformer block: keys/values of `tokens`, queries/out/feed-forward of `queries` rows, `pairs`
    query-key pairs (summed over the batch), a time modulation for `modulation_rows` samples (0: unmodulated)."""
    d, kv = config.hidden_size, config.num_kv_heads * config.head_dim
    projections = tokens * d * 2 * kv + queries * d * d * 2
    attention = 2 * pairs * d  # q k^T and p v, every head: pairs x head_dim x heads each
    feed_forward = queries * 3 * d * config.ffn_inner_dim
    return projections + attention + feed_forward + modulation_rows * config.time_embed_dim * 4 * d


def time_embedding_macs(config: TransformerConfig, rows: int = 1) -> int:
    return rows * (TIMESTEP_FREQUENCIES + config.time_embed_dim) * config.time_embed_dim


def refiner_macs(config: TransformerConfig, image_tokens: tuple[int, ...]) -> int:
    """Patch embedding and the refiner layers of images that each attend only to themselves (one batch row each)."""
    tokens = sum(image_tokens)
    layer = block_macs(config, tokens, tokens, sum(n * n for n in image_tokens), len(image_tokens))
    return tokens * config.patch_channels * config.hidden_size + config.num_refiner_layers * layer


def text_macs(config: TransformerConfig, length: int) -> int:
    """Caption projection and the (unmodulated) context refiner of one prompt."""
    layer = block_macs(config, length, length, length * length)
    return length * config.text_feat_dim * config.hidden_size + config.num_refiner_layers * layer


def joint_macs(config: TransformerConfig, text_len: int, noise: int, references: int, reused: int = 0) -> int:
    """One pass through the joint layers and the output: `references` tokens run, `reused` are attended from cache."""
    own = text_len + references + noise
    keys = own + reused
    layers = (config.num_layers - 1) * block_macs(config, own, own, own * keys, 1)
    last = block_macs(config, own, noise, noise * keys, 1)  # only noise rows are read after it
    return layers + last + output_macs(config, noise)


def output_macs(config: TransformerConfig, noise: int) -> int:
    """The output norm's time scale and the projection of the noise tokens to patches (one pass)."""
    return config.time_embed_dim * config.hidden_size + noise * config.hidden_size * config.patch_size**2 * config.output_channels


def condition_branch_macs(config: TransformerConfig, image_tokens: tuple[int, ...]) -> int:
    """Every image alone (a batch of its own, with its own time embedding) through refiner and joint layers at the
    clean timestep; the last layer keys/values only."""
    tokens, rows = sum(image_tokens), len(image_tokens)
    layers = (config.num_layers - 1) * block_macs(config, tokens, tokens, sum(n * n for n in image_tokens), rows)
    embeddings = time_embedding_macs(config, rows)
    return embeddings + refiner_macs(config, image_tokens) + layers + block_macs(config, tokens, 0, 0, rows)


def guidance_passes(shape: RunShape) -> list[tuple[str, int, bool]]:
    """The guidance passes as (name, prompt length, sees the references): cond, ref, uncond; two passes drop ref."""
    passes = [("cond", shape.text_len, True), ("ref", shape.negative_len, True), ("uncond", shape.negative_len, False)]
    return passes if shape.three_passes else [passes[0], passes[2]]


def run_macs(config: TransformerConfig, shape: RunShape, reuse: str = "none") -> int:
    """A whole sampling run's MACs. reuse: "none" (every step runs the references), "once" (reference keys/values
    stored by each pass at step 0, reused after), "condition" (the independent condition's branch, once)."""
    refs, N = shape.reference_tokens, shape.noise_tokens
    R = sum(refs)
    passes = [(length, sees) for _, length, sees in guidance_passes(shape)]

    def step(reused: bool) -> int:
        """One step: noise refined once, references refined once unless reused, then every pass's joint layers."""
        macs = time_embedding_macs(config) + refiner_macs(config, (N,))
        if refs and not reused:
            macs += refiner_macs(config, refs)
        for length, sees in passes:
            seen = R if sees else 0
            macs += joint_macs(config, length, N, 0 if reused else seen, seen if reused else 0)
        return macs

    text_once = text_macs(config, shape.text_len) + text_macs(config, shape.negative_len)
    if reuse == "none" or not refs:
        return text_once + shape.steps * step(False)
    if reuse == "once":
        return text_once + step(False) + (shape.steps - 1) * step(True)
    if reuse == "condition":
        return text_once + condition_branch_macs(config, refs) + shape.steps * step(True)
    raise ValueError(f"reuse must be 'none', 'once' or 'condition', got {reuse!r}")


def step_cache_run_macs(
    config: TransformerConfig, shape: RunShape, reuse: str, computed_steps: dict[str, list[int]], measures_input: bool
) -> int:
    """A run's MACs with a step cache, given the steps each pass computed (its stats). A skipped pass-step runs the
    output layers only; TeaCache's measure (`measures_input`) needs the refined noise every step, the refined
    references every step when they run through the joint layers, and the first block's time modulation per pass.
    Reuse refreshes (step 0: every pass computes it) as in `run_macs`."""
    if reuse not in ("none", "once", "condition"):
        raise ValueError(f"reuse must be 'none', 'once' or 'condition', got {reuse!r}")
    refs, N = shape.reference_tokens, shape.noise_tokens
    R = sum(refs) if refs else 0
    plain = reuse == "none" or not refs
    modulation = config.time_embed_dim * 4 * config.hidden_size
    macs = text_macs(config, shape.text_len) + text_macs(config, shape.negative_len)
    if refs and reuse == "condition":
        macs += condition_branch_macs(config, refs)
    for step in range(shape.steps):
        computing = {name for name, _, _ in guidance_passes(shape) if step in computed_steps.get(name, ())}
        macs += time_embedding_macs(config)
        if measures_input or computing:
            macs += refiner_macs(config, (N,))
        refreshing = refs and (plain or (reuse == "once" and step == 0))
        if refreshing and (any(sees for name, _, sees in guidance_passes(shape) if name in computing) or (measures_input and plain)):
            macs += refiner_macs(config, refs)
        for name, length, sees in guidance_passes(shape):
            seen = R if sees else 0
            macs += modulation if measures_input else 0
            if name in computing:
                macs += joint_macs(config, length, N, seen if refreshing else 0, 0 if refreshing else seen)
            else:
                macs += output_macs(config, N)
    return macs


def overhead_reduction(cached: float, baseline: float, full: float) -> float:
    """1 - (cached - baseline) / (full - baseline): the share of the references' cost that reuse removes."""
    return 1.0 - (cached - baseline) / (full - baseline)
