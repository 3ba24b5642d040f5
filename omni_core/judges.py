"""The judges of the reflection loop, all of the shape `judge(question, images) -> answer text`: OmniGen2's own MLLM
through the chat path (the default), a local vision-language model folder, or any Python callable."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import PIL.Image

from .chat import answer_text
from .errors import InvalidInputError
from .loading.judge_loader import load_judge_folder
from .reflection import Judge
from .text_encoder import TextEncoder

if TYPE_CHECKING:
    from .pipeline import OmniGen2

MAX_ANSWER_TOKENS = 256


def own_mllm_judge(model: OmniGen2, max_new_tokens: int = MAX_ANSWER_TOKENS) -> Judge:
    """The model's own Qwen2.5-VL answering through `model.chat(..., respond="text")`."""

    def judge(question: str, images: Sequence[PIL.Image.Image]) -> str:
        return model.chat(question, images=list(images), respond="text", max_new_tokens=max_new_tokens).text

    return judge


def encoder_judge(encoder: TextEncoder, max_new_tokens: int = MAX_ANSWER_TOKENS) -> Judge:
    """A loaded vision-language model (`load_judge_folder`) answering greedily, as the chat path does."""

    def judge(question: str, images: Sequence[PIL.Image.Image]) -> str:
        return answer_text(encoder.generate(question, list(images), max_new_tokens).text)

    return judge


def resolve_judge(model: OmniGen2, judge: Any) -> Judge:
    """None: the model's own MLLM; a folder path: that model, in the text encoder's dtype on its device; a callable:
    itself."""
    if judge is None:
        return own_mllm_judge(model)
    if isinstance(judge, (str, Path)):
        return encoder_judge(load_judge_folder(judge, model.text_encoder.dtype, model.text_encoder.device))
    if callable(judge):
        return judge
    raise InvalidInputError(
        f"judge must be None (the model's own MLLM), a vision-language model folder or a callable "
        f"judge(question, images) -> str; got {type(judge).__name__}."
    )
