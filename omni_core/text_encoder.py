"""Prompts to OmniGen2 text conditions: the Qwen2.5-VL MLLM's last hidden states, as the official pipelines make them.

Generation (`encode`) formats each prompt with the tokenizer's chat template (system + user, no assistant header),
right-pads, and keeps every template token. The chat path (`chat_inputs`, `generate`, `encode_chat`) shows images to
the MLLM with `<imgN>: <|vision_start|><|image_pad|><|vision_end|>` before the text and drops the image-pad positions
from the features it returns.

Every text is checked before the tokenizer sees it (a string, valid Unicode) and its tokens, template and images
included, against the MLLM's `max_position_embeddings`, so a bad or overlong prompt is an error naming the input
instead of a tokenizer exception or minutes of work past what the model can read. Nothing is truncated.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from .condition import TextCondition
from .device_dtype import execution_device
from .errors import InvalidInputError

SYSTEM_PROMPT = "You are a helpful assistant that generates high-quality images based on user instructions."
IMAGE_PAD = "<|image_pad|>"
IMAGE_REQUEST = "<|img|>"  # the token OmniGen2's tokenizer adds: the MLLM asks the transformer to draw
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
# The chat pipeline stops at the end of a turn or where the MLLM asks for an image.
STOP_TOKENS = (*END_TOKENS, IMAGE_REQUEST)


@dataclass(frozen=True)
class ChatReply:
    """What the MLLM answered: the new token ids [N] (prompt removed) and their text, special tokens kept."""

    token_ids: torch.Tensor
    text: str


def chat_template(prompt: str, num_images: int) -> str:
    """The chat pipeline's conversation: images announced as `<imgN>:` before the text, assistant header appended."""
    shown = "".join(f"<img{i}>: <|vision_start|>{IMAGE_PAD}<|vision_end|>" for i in range(1, num_images + 1))
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{shown}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


class TextEncoder:
    """The MLLM (`Qwen2_5_VLForConditionalGeneration`, eval, frozen) with its tokenizer and image processor.

    transformers' `Qwen2_5_VLProcessor` is not used: in transformers 5 it insists on a torchvision video processor,
    and the image-pad expansion it does is one line here. `image_processor` may be None (text-only use).
    """

    def __init__(self, mllm: torch.nn.Module, tokenizer: Any, image_processor: Any | None = None) -> None:
        self.mllm = mllm.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @property
    def device(self) -> torch.device:
        return execution_device(self.mllm)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.mllm.parameters()).dtype

    def template(self, prompt: str) -> str:
        """The generation pipeline's text for one prompt: the tokenizer's chat template, no assistant header."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    @property
    def _text_config(self) -> Any:
        config = self.mllm.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def max_tokens(self) -> int:
        """The longest token sequence the MLLM reads: its language model's `max_position_embeddings`."""
        return int(self._text_config.max_position_embeddings)

    @property
    def hidden_size(self) -> int:
        """The width of the features it returns (the transformer's `text_feat_dim` must equal it)."""
        return int(self._text_config.hidden_size)

    def _check_length(self, tokens: int, name: str) -> None:
        if tokens > self.max_tokens:
            raise InvalidInputError(
                f"{name} is too long: {tokens} tokens with the chat template and any images, and the MLLM reads at "
                f"most {self.max_tokens} (its max_position_embeddings). Shorten it."
            )

    def prompt_tokens(self, prompts: Sequence[str], names: Sequence[str] | None = None) -> Any:
        """The templated prompts tokenized as `encode_batch` reads them (right-padded to the longest, on the MLLM's
        device), each checked. `names` (default prompts[i]) are what errors call each prompt."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not prompts:
            raise InvalidInputError(f"prompts must be a non-empty list of strings, got {prompts!r}.")
        names = names or [f"prompts[{i}]" for i in range(len(prompts))]
        for prompt, name in zip(prompts, names):
            check_text(prompt, name)
        tokens = self.tokenizer(
            [self.template(p) for p in prompts], padding="longest", return_tensors="pt"
        ).to(self.device)
        for length, name in zip(tokens.attention_mask.sum(dim=1).tolist(), names):
            self._check_length(int(length), name)
        return tokens

    @torch.no_grad()
    def encode_batch(
        self, prompts: Sequence[str], names: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [B, L, D] and attention mask [B, L] (int64) of right-padded ("longest") templated prompts.
        `names` (default prompts[i]) are what errors call each prompt."""
        tokens = self.prompt_tokens(prompts, names)
        features = self.mllm(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        ).hidden_states[-1]
        return features, tokens.attention_mask.to(torch.int64)

    def encode(self, prompts: Sequence[str], names: Sequence[str] | None = None) -> list[TextCondition]:
        """One condition per prompt, each cut to its own tokens (as if encoded alone), mask all ones."""
        features, mask = self.encode_batch(prompts, names)
        conditions = []
        for row, prompt in enumerate(prompts):
            length = int(mask[row].sum())
            conditions.append(TextCondition(features[row : row + 1, :length], mask[row : row + 1, :length], prompt))
        return conditions

    def encode_prompt(self, prompt: str, name: str = "prompt") -> TextCondition:
        """One prompt to a condition: embeds [1, L, D], mask [1, L]. `name` is what errors call it."""
        return self.encode([prompt], [name])[0]

    def encode_negative(self, prompt: str | None = None) -> TextCondition:
        """The negative prompt; None means "" as in the official pipeline."""
        return self.encode_prompt("" if prompt is None else prompt, "negative_prompt")

    # Chat path: images shown to the MLLM.

    def chat_inputs(
        self, prompt: str, images: Sequence[Image.Image], answer: str = "", name: str = "prompt"
    ) -> dict[str, torch.Tensor]:
        """Model inputs for the chat conversation with `images` shown; `answer` continues the assistant turn.

        Each `<|image_pad|>` becomes one pad per merged patch (grid t*h*w / merge_size^2), as the processor does.
        `name` is what errors call the prompt.
        """
        check_text(prompt, name)
        text = chat_template(prompt, len(images)) + answer
        vision: dict[str, torch.Tensor] = {}
        if images:
            if self.image_processor is None:
                raise InvalidInputError(
                    "This text encoder has no image processor, so it cannot show images to the MLLM. Load it from a "
                    "folder with preprocessor_config.json, or pass no images."
                )
            vision = dict(self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt"))
            merge = self.image_processor.merge_size**2
            pieces = text.split(IMAGE_PAD)
            text = pieces[0]
            for grid, piece in zip(vision["image_grid_thw"], pieces[1:]):
                text += IMAGE_PAD * (int(grid.prod()) // merge) + piece
        tokens = self.tokenizer([text], padding="longest", return_tensors="pt")
        self._check_length(tokens.input_ids.shape[1], name)
        inputs = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask.to(torch.int64)}
        if vision:
            inputs["pixel_values"] = vision["pixel_values"].to(self.dtype)
            inputs["image_grid_thw"] = vision["image_grid_thw"]
            if _accepts(self.mllm.forward, "mm_token_type_ids"):  # transformers 5 needs it for 3D RoPE ids
                image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
                inputs["mm_token_type_ids"] = (tokens.input_ids == image_id).to(torch.int64)
        return {name: value.to(self.device) for name, value in inputs.items()}

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        images: Sequence[Image.Image] = (),
        max_new_tokens: int = 256,
        progress: Callable[[int, int, None], None] | None = None,
    ) -> ChatReply:
        """Greedy answer of the MLLM, stopping at the end of its turn or at `<|img|>` (a request to draw).

        progress(tokens so far, max_new_tokens, None) runs after every token, as the sampler's progress does after
        every step; an exception it raises (a cancel) ends the answer there and propagates."""
        inputs = self.chat_inputs(prompt, images)
        known = (self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS if t in self.tokenizer.get_vocab())
        output = self.mllm.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(known),
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList(
                [] if progress is None else [_TokenProgress(progress, inputs["input_ids"].shape[1], max_new_tokens)]
            ),
        )
        new_ids = output[0, inputs["input_ids"].shape[1] :].cpu()
        return ChatReply(new_ids, self.tokenizer.decode(new_ids, skip_special_tokens=False))

    @torch.no_grad()
    def encode_chat(
        self, prompt: str, images: Sequence[Image.Image] = (), answer: str = "", name: str = "prompt"
    ) -> TextCondition:
        """Features of the chat conversation with images shown, image-pad positions removed (the chat pipeline's
        condition when the answer asks for an image; `answer` is the text before `<|img|>`)."""
        inputs = self.chat_inputs(prompt, images, answer, name)
        features = self.mllm(**inputs, output_hidden_states=True).hidden_states[-1]
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        keep = (inputs["input_ids"][0] != image_id) & inputs["attention_mask"][0].bool()
        embeds = features[:, keep]
        return TextCondition(embeds, torch.ones(embeds.shape[:2], dtype=torch.int64, device=embeds.device), prompt)


def check_text(text: Any, name: str) -> None:
    """A prompt the tokenizer can read: a string of valid Unicode (no lone surrogate such as "\\ud800", which a
    broken copy and paste or a JSON escape can leave and which no UTF-8 tokenizer can encode)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{name} must be a string, got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"{name} holds an invalid character at position {error.start} ({text[error.start]!r}, a lone surrogate "
            "that is not valid Unicode). Retype or delete the text around it."
        ) from None


class _TokenProgress(StoppingCriteria):
    """Reports each generated token to a progress callback; never stops generation itself."""

    def __init__(self, progress: Callable[[int, int, None], None], prompt_len: int, max_new_tokens: int) -> None:
        self.progress, self.prompt_len, self.max_new_tokens = progress, prompt_len, max_new_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.progress(input_ids.shape[1] - self.prompt_len, self.max_new_tokens, None)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _accepts(function: Any, name: str) -> bool:
    """Whether `function` takes a keyword `name` (transformers versions differ)."""
    return name in inspect.signature(function).parameters
