"""OmniGen2's dual path: the MLLM answers in text, and when its answer begins with `<|img|>` the transformer draws.

As the official chat pipeline: the MLLM is shown the images (Qwen2.5-VL image processor) in the conversation of
`text_encoder.chat_template` and answers greedily up to its end of turn or `<|img|>`. A drawing is conditioned on
the last hidden states of that conversation with the image pads removed (the template alone: an answer that draws
starts with `<|img|>`, so none of it precedes the request), on a text-only negative prompt in the same template, and
on the images through the VAE as in `generate`. The model's `sample` then draws with the `SamplingOptions` given,
unchanged, so every sampling option (guidance, reference reuse, previews, cancel, ...) works in a chat as in the
Cached Sampler.

A turn is two calls so that a host can hold only the models each needs: `take_turn` (MLLM, VAE) and `finish_turn`
(transformer, VAE). `run_chat` (`OmniGen2.chat`) is both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .condition import Condition, check_reference_count
from .errors import InvalidInputError
from .image_processing import ImageLike, to_pil
from .interface import ConditionalSampler, Progress
from .options import SamplingOptions
from .text_encoder import END_TOKENS, IMAGE_REQUEST, ChatReply

log = logging.getLogger(__name__)

RESPONSES = ("auto", "text", "image")
TOKENIZER_FIX = (
    "Load the tokenizer from the OmniGen2 release's processor/ folder, which has it (Load OmniGen2 (single files): "
    "tokenizer = a models/omnigen2 folder with processor/; omni_core.load_model: tokenizer=<release>/processor)."
)


@dataclass
class ChatResult:
    """One chat turn.

    text: the answer with its end-of-turn token removed (an answer that asks to draw starts with `<|img|>`);
    token_ids [N]: the answer's tokens; images [B, 3, H, W] in [0, 1] and latents (as `GenerationResult`), or None
    when the turn did not draw; stats: the turn's figures, and the sampler's when it drew.
    """

    text: str
    token_ids: torch.Tensor
    images: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatTurn:
    """What the MLLM answered and, when the turn draws, the condition to draw from."""

    reply: ChatReply
    condition: Condition | None
    stats: dict[str, Any]


def run_chat(
    model: ConditionalSampler,
    prompt: str,
    images: Sequence[ImageLike] | None = None,
    negative_prompt: str | None = "",
    respond: str = "auto",
    max_new_tokens: int = 256,
    options: SamplingOptions | None = None,
    progress: Progress | None = None,
) -> ChatResult:
    """A whole turn (see `take_turn`): the answer's tokens, then the drawing's steps on `progress`."""
    options = options or SamplingOptions()
    turn = take_turn(model, prompt, images, negative_prompt, respond, max_new_tokens, options, progress)
    return finish_turn(model, turn, options, progress)


@torch.no_grad()
def take_turn(
    model: ConditionalSampler,
    prompt: str,
    images: Sequence[ImageLike] | None = None,
    negative_prompt: str | None = "",
    respond: str = "auto",
    max_new_tokens: int = 256,
    options: SamplingOptions | None = None,
    progress: Callable[[int, int, None], None] | None = None,
) -> ChatTurn:
    """The MLLM's answer to `prompt` with `images` (0..5) shown, and the condition to draw from when the turn draws
    (its images encoded and compacted as `options` say).

    respond: "auto" draws exactly when the answer starts with `<|img|>`, "text" never, "image" always.
    max_new_tokens bounds the answer; 0 (only with "image") draws without asking the MLLM for one.
    progress(tokens, max_new_tokens, None) after every token of the answer; raising in it cancels the turn.
    """
    options = options or SamplingOptions()
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}.")
    if respond not in RESPONSES:
        raise InvalidInputError(f"respond={respond!r}: choose one of {', '.join(RESPONSES)}.")
    least = 0 if respond == "image" else 1
    if not isinstance(max_new_tokens, int) or max_new_tokens < least:
        raise InvalidInputError(
            f"max_new_tokens={max_new_tokens!r}: use a whole number >= 1 (0 only with respond='image', which then "
            "draws without an answer)."
        )
    images = [] if images is None else list(images)
    check_reference_count(len(images), "images", " to the conversation")
    encoder = model.text_encoder
    check_image_request(encoder.tokenizer, respond)
    shown = [to_pil(image, f"images[{i}]") for i, image in enumerate(images)]
    start = time.perf_counter()
    if max_new_tokens:
        reply = encoder.generate(prompt, shown, max_new_tokens, progress)
    else:
        reply = ChatReply(torch.zeros(0, dtype=torch.int64), "")
    stats = {"respond": respond, "answer_tokens": len(reply.token_ids), "answer_seconds": time.perf_counter() - start}
    if not draws(respond, reply.text):
        return ChatTurn(reply, None, {**stats, "drew": False})
    max_pixels = options.encoding_max_pixels
    condition = Condition(
        positive=encoder.encode_chat(prompt, shown),
        negative=encoder.encode_chat("" if negative_prompt is None else negative_prompt, name="negative_prompt"),
        references=model.encode_references(shown, max_pixels, options.max_input_image_side_length),
        max_pixels=max_pixels,
    )
    return ChatTurn(reply, model.compacted(condition, options), {**stats, "drew": True})


def finish_turn(
    model: ConditionalSampler, turn: ChatTurn, options: SamplingOptions | None = None, progress: Progress | None = None
) -> ChatResult:
    """The turn's result: `model.sample(turn.condition, options)` when it draws, the answer alone otherwise."""
    text = answer_text(turn.reply.text)
    if turn.condition is None:
        return ChatResult(text, turn.reply.token_ids, stats=dict(turn.stats))
    drawn = model.sample(turn.condition, options, progress=progress)
    return ChatResult(text, turn.reply.token_ids, drawn.images, drawn.latents, {**turn.stats, **drawn.stats})


def draws(respond: str, answer: str) -> bool:
    """Whether a turn draws: always for "image", never for "text", for "auto" when the answer asks with `<|img|>`."""
    return respond == "image" or (respond == "auto" and answer.startswith(IMAGE_REQUEST))


def answer_text(answer: str) -> str:
    """The decoded answer without the end-of-turn token it stopped at."""
    for token in END_TOKENS:
        if answer.endswith(token):
            return answer[: -len(token)]
    return answer


def check_image_request(tokenizer: Any, respond: str) -> None:
    """Refuse "auto" with a tokenizer that has no `<|img|>` (ComfyUI's qwen25_tokenizer): it could never tell that
    the model asks to draw. "text" and "image" still work; their answers are not cut where the model asks."""
    if IMAGE_REQUEST in tokenizer.get_vocab():
        return
    if respond == "auto":
        raise InvalidInputError(
            f"respond='auto' draws when the answer starts with {IMAGE_REQUEST}, but this tokenizer has no such token "
            f"(ComfyUI's qwen25_tokenizer lacks it: the model's request reads as another token there). {TOKENIZER_FIX} "
            "Or choose respond='text' (answer only) or respond='image' (always draw)."
        )
    log.warning(
        "The tokenizer has no %s token, so an answer is not cut where the model asks to draw. %s", IMAGE_REQUEST,
        TOKENIZER_FIX,
    )
