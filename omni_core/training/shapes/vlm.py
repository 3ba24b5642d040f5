"""The bundled MLLM: a small Qwen2.5-VL trained from random weights to see the synthetic scenes and talk about them.

    python -m omni_core.training.shapes.vlm --output runs/shapes/model [--steps 3000]

writes <output>/processor (a byte-level BPE tokenizer fitted to the scenes' words, with Qwen2.5's special tokens at
their ids, and the Qwen2-VL image processor, which shows a 64 x 64 picture as 8 x 8 patches) and <output>/mllm
(`Qwen2_5_VLForConditionalGeneration`, the release's class and file layout, so every loader and node reads it).

Training (`train`) starts from random weights. First the vision tower learns to see (`train_sight`): each image token
is taught the colour and shape of what it covers. Frozen after that, it feeds the language model, which learns the
turns of `conversations.py` (describe, judge, draw) with the next-token loss on every text token, the answers
weighing most. As in OmniGen2 the same model's last hidden states condition the transformer, which is trained after
it on them: the language modelling of the instructions inside the turns is what makes those states carry the prompt.
Held-out turns (scenes of the dataset's held-out split) are answered greedily at the end, and their accuracy printed.

`tune_judge` runs once the transformer is trained: the judge learns to state its fix as the whole scene the result
must show, which the transformer follows better than the edits that undo each mistake (reflection on held-out edits
0.67 against 0.79), while a feature loss keeps the prompts' hidden states where the transformer learnt them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import ByteLevel
from tokenizers.trainers import BpeTrainer
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ...chat import answer_text
from ...loading.text_encoder_loader import load_text_encoder
from ...reflection import fold_correction, parse_judgement
from ...text_encoder import IMAGE_PAD, TextEncoder, chat_template
from .conversations import Turn, decisions, scene_fix, turns
from .dataset import examples
from .scenes import COLORS, SHAPES, Scene, draw_shape, render, shape_box

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "tests" / "fixtures" / "omnigen2-tiny"  # the release's processor files and config layout
VOCAB_SIZE = 1024
IMAGE_SIDE = 112  # the image processor's least area is this squared: 64-pixel pictures become 8 x 8 patches of 14
RESOLUTION = 64
TEXT = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048}
MROPE_SECTION = [8, 4, 4]  # head dim 32: half of it split over sequence, row, column
VISION = {"hidden_size": 128, "intermediate_size": 256, "depth": 4, "num_heads": 4, "out_hidden_size": 128,
          "window_size": IMAGE_SIDE, "fullatt_block_indexes": [1, 3]}
BLUR_SHARE = 0.5  # of training pictures, the share softened as a drawing model's output is
# The answers are what the model is for; the rest of the text (template, questions, instructions) is learnt too, for
# the features the transformer reads, but must not drown them: most of every conversation is the same template.
ANSWER_WEIGHT, PROMPT_WEIGHT = 1.0, 0.1
# Where a judge decides (each comparison's same / different, and the verdict) is a token or two among forty, and it is
# what the reflection loop acts on: at answer weight, a judge trained to 0.03 loss called every comparison "same".
VERDICT_WEIGHT = 4.0
# The transformer reads the last hidden states, where a small language model trained on next tokens alone forgets the
# token it stands on ("circle" is always followed by "on"): captions that differ only in their shape got nearly equal
# features, and a transformer trained on them drew the right colour 0.90 of the time and the right shape 0.12. Training
# also reads every text token back from its own last hidden state through a head of its own (not kept).
IDENTITY_WEIGHT = 1.0
END_OF_TURN = "<|im_end|>"
# The image tokens of a 64-pixel picture: 4 x 4, each a 16-pixel square (two by two merged patches).
SIGHT_GRID = 4
SIGHT_STEPS, SIGHT_BATCH = 800, 64
HOLD_WEIGHT = 100.0  # tune_judge: the features' squared drift (their mean square is about 2) against the answers' loss


def fit_tokenizer(texts: Iterator[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE over `texts` with the release tokenizer's pre-tokenizer and special tokens (same ids), so
    any text still encodes, byte by byte where its words are unknown."""
    tokenizer = Tokenizer.from_file(str(FIXTURE / "processor" / "tokenizer.json"))
    specials = sorted(tokenizer.get_added_tokens_decoder().items())
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=[token.content for _, token in specials],
                         initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    for index, token in specials:
        assert tokenizer.token_to_id(token.content) == index, token.content
    return tokenizer


def corpus(count: int, seed: int) -> Iterator[str]:
    """Every text the model reads: each turn's conversation, and a judge's fixes in a corrected prompt."""
    for turn in turns(count, seed, held_out=False):
        yield chat_template(turn.prompt, len(turn.images)) + turn.answer
        if turn.kind == "judge" and turn.answer != "Yes.":
            yield fold_correction("a red circle", parse_judgement(turn.answer).correction, 1)


def write_processor(folder: Path, tokenizer: Tokenizer) -> None:
    """The release's processor files with this tokenizer, and an image processor that upsamples 64-pixel pictures."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(FIXTURE / "processor", folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings["size"]["shortest_edge"] = IMAGE_SIDE * IMAGE_SIDE
    (folder / "preprocessor_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def write_random_mllm(folder: Path, vocab_size: int, seed: int) -> None:
    """A Qwen2.5-VL of the module's sizes from random weights, in the fixture's config layout (its token ids)."""
    config = json.loads((FIXTURE / "mllm" / "config.json").read_text())
    layers = ["full_attention"] * TEXT["num_hidden_layers"]
    config["text_config"].update(TEXT, vocab_size=vocab_size, layer_types=layers)
    config["text_config"]["rope_parameters"]["mrope_section"] = MROPE_SECTION
    config["vision_config"].update(VISION)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    model.save_pretrained(folder)


def picture(scene, rng: np.random.Generator, soften: bool) -> Image.Image:
    """A scene rendered at the dataset's size, blurred a little at random when `soften` (as decoded samples are)."""
    image = render(scene, RESOLUTION)
    if soften and rng.random() < BLUR_SHARE:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    return image


def batch_inputs(encoder: TextEncoder, batch: Sequence[Turn], rng: np.random.Generator) -> tuple[dict, torch.Tensor]:
    """Model inputs for `batch` (the chat conversation with its answer and end of turn, right-padded) and each
    token's weight as a target: ANSWER_WEIGHT for the answer's tokens (VERDICT_WEIGHT where a judge decides),
    PROMPT_WEIGHT for the other text, 0 for image pads and padding."""
    rows, answer_offsets = [], []
    for turn in batch:
        answer = turn.answer + END_OF_TURN
        rows.append(encoder.chat_inputs(turn.prompt, [picture(s, rng, True) for s in turn.images], answer))
        answer_offsets.append(encoder.tokenizer(answer, return_offsets_mapping=True).offset_mapping)
    longest = max(row["input_ids"].shape[1] for row in rows)
    ids = torch.full((len(rows), longest), encoder.tokenizer.pad_token_id, dtype=torch.int64)
    weights = torch.zeros(ids.shape)
    for i, (turn, row, offsets) in enumerate(zip(batch, rows, answer_offsets)):
        length = row["input_ids"].shape[1]
        start = length - len(offsets)
        ids[i, :length] = row["input_ids"][0]
        weights[i, :length] = PROMPT_WEIGHT
        weights[i, start:length] = ANSWER_WEIGHT
        for first, last in decisions(turn.answer) if turn.kind == "judge" else ():
            for index, (begin, end) in enumerate(offsets):
                if begin < last and end > first:
                    weights[i, start + index] = VERDICT_WEIGHT
    image_pad = ids == encoder.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    inputs = {"input_ids": ids, "attention_mask": (weights > 0).to(torch.int64),
              "mm_token_type_ids": image_pad.to(torch.int64)}
    with_images = [row for row in rows if "pixel_values" in row]
    if with_images:
        inputs["pixel_values"] = torch.cat([row["pixel_values"] for row in with_images])
        inputs["image_grid_thw"] = torch.cat([row["image_grid_thw"] for row in with_images])
    return inputs, weights.masked_fill(image_pad, 0.0)


def region_labels(scene: Scene, resolution: int = RESOLUTION, grid: int = SIGHT_GRID) -> tuple[np.ndarray, np.ndarray]:
    """What each image token of `scene` shows, in the vision tower's row-major order: the palette index of its
    region's most common colour, and the shape (1 + index in SHAPES) of the object covering most of it, 0 where no
    object covers a quarter of it."""
    owner = Image.new("L", (resolution, resolution), 0)
    draw = ImageDraw.Draw(owner)
    for index, item in enumerate(scene.shapes):
        draw_shape(draw, item.shape, shape_box(item, resolution), index + 1)
    side = resolution // grid
    regions = np.asarray(owner).reshape(grid, side, grid, side).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([np.bincount(region, minlength=len(scene.shapes) + 1) for region in regions])
    colors = np.array([COLORS.index(scene.background), *(COLORS.index(item.color) for item in scene.shapes)])
    shapes = np.array([0, *(SHAPES.index(item.shape) + 1 for item in scene.shapes)])
    objects = counts.copy()
    objects[:, 0] = side * side // 4 - 1  # "no object" wins unless an object covers a quarter
    return colors[counts.argmax(1)], shapes[objects.argmax(1)]


def sight_loss(encoder: TextEncoder, head: torch.nn.Linear, scenes: Sequence[Scene],
               rng: np.random.Generator) -> torch.Tensor:
    """Cross-entropy of every image token's colour and shape (`region_labels`) read by `head` from the vision tower's
    output for `scenes`, rendered as in training."""
    vision = encoder.image_processor(images=[picture(scene, rng, True) for scene in scenes], return_tensors="pt")
    tokens = encoder.mllm.model.visual(vision["pixel_values"], grid_thw=vision["image_grid_thw"]).pooler_output
    colors, shapes = (torch.from_numpy(np.concatenate(labels)) for labels in zip(*map(region_labels, scenes)))
    logits = head(tokens).float()
    return (torch.nn.functional.cross_entropy(logits[:, : len(COLORS)], colors)
            + torch.nn.functional.cross_entropy(logits[:, len(COLORS):], shapes))


def weighted_loss(model: torch.nn.Module, inputs: dict, weights: torch.Tensor,
                  identity: torch.nn.Linear | None) -> torch.Tensor:
    """The next-token cross-entropy of every target, weighted, over the weights' sum, plus IDENTITY_WEIGHT times the
    cross-entropy of each text token read back from its own last hidden state by the `identity` head (if any)."""
    output = model(**inputs, output_hidden_states=True)
    logits, targets, next_weights = output.logits[:, :-1], inputs["input_ids"][:, 1:], weights[:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    loss = (losses * next_weights.flatten()).sum() / next_weights.sum()
    if identity is None:
        return loss
    text = weights.flatten() > 0
    read_back = identity(output.hidden_states[-1].flatten(0, 1)[text])
    own_tokens = inputs["input_ids"].flatten()[text]
    return loss + IDENTITY_WEIGHT * torch.nn.functional.cross_entropy(read_back.float(), own_tokens)


def train(output: Path, steps: int, batch_size: int, learning_rate: float, seed: int,
          sight_steps: int = SIGHT_STEPS, log_every: int = 50) -> list[float]:
    """Tokenizer, processor and a random MLLM into output/processor and output/mllm; its vision tower taught to see
    for `sight_steps` (`sight_loss`), then frozen while the language model learns the training turns for `steps`; the
    MLLM saved into output/mllm (not the heads of the two losses). Returns the loss of every language step.

    Learnt through the answers alone, shapes came last and slowly: after 3000 steps describe was right 0.27 of the
    time, the shapes at chance. Read off the image tokens directly, they are told apart in a few hundred steps."""
    tokenizer = fit_tokenizer(corpus(4000, seed))
    write_processor(output / "processor", tokenizer)
    write_random_mllm(output / "mllm", tokenizer.get_vocab_size(), seed)
    encoder = load_text_encoder(output)
    model, rng = encoder.mllm.train(), np.random.default_rng([seed, 9])
    visual = model.model.visual
    sight = torch.nn.Linear(encoder.hidden_size, len(COLORS) + len(SHAPES) + 1)
    pictures = (scene for example in examples(10**9, seed, held_out=False) for scene in (*example.inputs, example.output))
    optimise([*visual.parameters(), *sight.parameters()], sight_steps, learning_rate, "sight", log_every,
             lambda: sight_loss(encoder, sight, [next(pictures) for _ in range(SIGHT_BATCH)], rng))
    visual.requires_grad_(False)
    seen = set(visual.parameters())
    identity = torch.nn.Linear(encoder.hidden_size, encoder.mllm.config.get_text_config().vocab_size)
    stream = turns(steps * batch_size, seed, held_out=False)
    losses = optimise([*(p for p in model.parameters() if p not in seen), *identity.parameters()], steps,
                      learning_rate, "language", log_every,
                      lambda: weighted_loss(model, *batch_inputs(encoder, [next(stream) for _ in range(batch_size)], rng),
                                            identity))
    model.eval().requires_grad_(False)
    model.save_pretrained(output / "mllm")
    return losses


def drawing_prompts(seed: int) -> Iterator[str]:
    """The prompts the transformer reads features of, endlessly: the training split's instructions, each also as a
    reflection round folds a whole-scene fix into it, and the empty negative prompt."""
    for index, example in enumerate(examples(10**9, seed, held_out=False)):
        yield example.instruction
        yield fold_correction(example.instruction, scene_fix(example.output), len(example.inputs) + 1)
        if index % 8 == 0:
            yield ""


def feature_drift(encoder: TextEncoder, teacher: torch.nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """Mean squared distance of the MLLM's last hidden states from `teacher`'s over the templated prompts' tokens (what
    `TextEncoder.encode_batch` gives the transformer)."""
    tokens = encoder.prompt_tokens(prompts)
    inputs = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask, "output_hidden_states": True}
    features = encoder.mllm(**inputs).hidden_states[-1]
    with torch.no_grad():
        held = teacher(**inputs).hidden_states[-1]
    mask = tokens.attention_mask.bool()
    return (features[mask] - held[mask]).float().square().mean()


def tune_judge(folder: Path, steps: int, batch_size: int, learning_rate: float, seed: int,
               log_every: int = 50) -> list[float]:
    """Teach the trained MLLM in folder/mllm (rewritten in place) the judge's whole-scene fix (`scene_fix`) on the
    training turns, while `feature_drift` holds the features the transformer was trained on (HOLD_WEIGHT): the
    transformer, already trained, reads the same prompts as before. Returns every step's loss."""
    encoder = load_text_encoder(folder)
    model, rng = encoder.mllm.train(), np.random.default_rng([seed, 10])
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    model.model.visual.requires_grad_(False)
    seen = set(model.model.visual.parameters())
    stream, prompts = turns(steps * batch_size, seed, held_out=False, whole_scene_fix=True), drawing_prompts(seed)

    def loss() -> torch.Tensor:
        said = weighted_loss(model, *batch_inputs(encoder, [next(stream) for _ in range(batch_size)], rng), None)
        return said + HOLD_WEIGHT * feature_drift(encoder, teacher, [next(prompts) for _ in range(batch_size)])

    losses = optimise([p for p in model.parameters() if p not in seen], steps, learning_rate, "judge", log_every, loss)
    model.eval().requires_grad_(False)
    model.save_pretrained(folder / "mllm")
    return losses


def optimise(params: list[torch.nn.Parameter], steps: int, learning_rate: float, name: str, log_every: int,
             next_loss: Callable[[], torch.Tensor]) -> list[float]:
    """AdamW on `params` for `steps` losses from `next_loss`: a linear warm-up over a tenth of the steps (100 at
    most), then cosine decay; gradients clipped to norm 1. Returns every step's loss."""
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, min(100, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    start, losses = time.perf_counter(), []
    for step in range(steps):
        loss = next_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return losses


def evaluate(encoder: TextEncoder, count: int, seed: int = 0, whole_scene_fix: bool = False) -> dict[str, float]:
    """Held-out turns answered greedily on exact pictures: describe (every word of the answer), judge (the verdict,
    and the fixes too, as `turns` phrases them), draw (asks to draw)."""
    right: dict[str, list[bool]] = {"describe": [], "judge_verdict": [], "judge_answer": [], "draw": []}
    rng = np.random.default_rng(0)
    for turn in turns(count, seed, held_out=True, whole_scene_fix=whole_scene_fix):
        answer = answer_text(encoder.generate(turn.prompt, [picture(s, rng, False) for s in turn.images], 128).text)
        if turn.kind == "judge":
            right["judge_verdict"].append(parse_judgement(answer).verdict == parse_judgement(turn.answer).verdict)
            right["judge_answer"].append(answer.strip() == turn.answer)
        else:
            right[turn.kind].append(answer.strip() == turn.answer)
    return {kind: sum(flags) / len(flags) for kind, flags in right.items() if flags}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="model folder: writes its mllm/ and processor/")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=96, help="held-out turns answered at the end")
    args = parser.parse_args(argv)
    train(args.output, args.steps, args.batch_size, args.learning_rate, args.seed)
    print(json.dumps(evaluate(load_text_encoder(args.output), args.eval, args.seed)), flush=True)


if __name__ == "__main__":
    main()
