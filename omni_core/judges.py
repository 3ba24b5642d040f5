"""The judges of the reflection loop, all of the shape `judge(question, images) -> answer text`: OmniGen2's own MLLM
(the default), a local vision-language model folder, or any Python callable.

A judge answers in text and never draws, so it is shown every input image and the result (up to 6 images): the chat
path's limit of 5 is the transformer's reference slots for a drawing, which a judge does not use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import PIL.Image

from .chat import answer_text
from .errors import InvalidInputError
from .loading.judge_loader import load_judge_folder
from .reflection import Judge
from .text_encoder import TextEncoder

MAX_ANSWER_TOKENS = 256


def encoder_judge(encoder: TextEncoder, max_new_tokens: int = MAX_ANSWER_TOKENS) -> Judge:
    """A vision-language model (the model's own MLLM, or one from `load_judge_folder`) answering greedily, as the chat
    path's text answers do."""

    def judge(question: str, images: Sequence[PIL.Image.Image]) -> str:
        return answer_text(encoder.generate(question, list(images), max_new_tokens).text)

    return judge


def resolve_judge(own_encoder: TextEncoder, judge: Any) -> Judge:
    """None: the model's own MLLM (`own_encoder`); a folder path: that model, in the own MLLM's dtype on its device;
    a callable: itself."""
    if judge is None:
        return encoder_judge(own_encoder)
    if isinstance(judge, (str, Path)):
        return encoder_judge(load_judge_folder(judge, own_encoder.dtype, own_encoder.device))
    if callable(judge):
        return judge
    raise InvalidInputError(
        f"judge must be None (the model's own MLLM), a vision-language model folder or a callable "
        f"judge(question, images) -> str; got {type(judge).__name__}."
    )
