"""Reflection (the OmniGen2 paper's generate, judge, refine): the judge prompt, the reading of its answer, the stopping
rule, how a correction folds into the instruction and which references the next round keeps, and the loop itself.

The loop (`reflect`, called by `OmniGen2.reflect`):
1. Round 1 samples the prompt with the original references, as `generate` does.
2. The judge sees the original references and the result (the last image) with `judge_prompt` and answers in free
   text; `parse_judgement` reads a verdict (yes / no / unclear) and a correction from it. With 5 references that is
   6 images: a judge only reads them (judges.py), so the 5 reference slots of a drawing do not limit it.
3. `stop_reason` ends the loop when the judge is satisfied, when its answer gives nothing to act on (unclear, or "no"
   without a fix), or at `max_rounds`. Every round is judged, the last one too, so the record says why it stopped.
4. Otherwise the next round samples `fold_correction(prompt, correction, slot)` with `round_references(...)`: the
   original references in their own slots (image 1..k, as the prompt names them) and the latest result after them.
   Earlier results are dropped (the latest carries what they got right, the correction says what it got wrong); with
   5 original references there is no free slot, so the result is dropped and the round regenerates from the
   originals and the corrected instruction alone.

What the rounds share is computed once: the original references' VAE latents and the negative prompt's features;
with caching and the independent condition also each original reference's condition-branch features (a
`ConditionFeatureStore`, keyed per image and slot, cleared when the loop ends, cancelled or not). Each round encodes
its instruction and the previous result, and samples.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import PIL.Image
import torch

from .condition import MAX_REFERENCE_IMAGES, Condition, ReferenceImage
from .errors import InvalidInputError
from .image_processing import ImageLike, to_pil
from .interface import ConditionalSampler, Progress
from .options import SamplingOptions
from .reference_cache import ConditionFeatureStore

# A judge: (question, images shown in order) -> its answer as free text. `judges.py` has the MLLM ones.
Judge = Callable[[str, Sequence[PIL.Image.Image]], str]
RoundCallback = Callable[[int, int], None]  # (round about to run, max_rounds); may raise to cancel

MAX_CORRECTION_CHARS = 500  # a rambling judge must not swamp the instruction it corrects

JUDGE_PROMPT = (
    "{shown}The last image was generated for this instruction:\n\"{instruction}\"\n"
    "Does the last image satisfy the instruction? Answer yes or no first. If no, list what must change, one fix "
    "per line starting with '-'."
)


def judge_prompt(instruction: str, num_references: int) -> str:
    """The question put to the judge about the result (shown last, after the `num_references` original images)."""
    if num_references == 0:
        shown = ""
    elif num_references == 1:
        shown = "The first image is the input image. "
    else:
        shown = f"The first {num_references} images are the input images. "
    return JUDGE_PROMPT.format(shown=shown, instruction=instruction)


@dataclass(frozen=True)
class Judgement:
    """What a judge's answer says: verdict "yes", "no" or "unclear", and the fixes it names ("" for none)."""

    verdict: str
    correction: str = ""


_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>")
_MARKUP = re.compile(r"[*_`#>]+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*\S)")
_LEADING = re.compile(
    r"^\W*(?:(?:answer|verdict|satisfied|result)\s*[:=-]?\s*)?"
    r"(yes|yeah|yep|no|nope|not quite|not really|partially|partly|incorrect)\b",
    re.IGNORECASE,
)
_VERDICT_LINE = re.compile(r"^\W*(?:(?:answer|verdict)\s*[:=-]?\s*)?(yes|no)\W*$", re.IGNORECASE)
_YES_WORDS = {"yes", "yeah", "yep"}
_IMPERATIVE = re.compile(r"^\W*(make|change|add|remove|replace|correct|fix|move|turn)\b", re.IGNORECASE)  # a bare fix
_BUT = re.compile(r"^\W*(but|however|except|although|though)\b", re.IGNORECASE)
_NEGATIVE_CUES = re.compile(
    r"\b(does not|doesn't|do not|don't|is not|isn't|are not|aren't|not satisf\w*|fails?|missing|lacks?|wrong|"
    r"incorrect|should|needs? to|instead of)\b",
    re.IGNORECASE,
)
_POSITIVE_CUES = re.compile(
    r"\b(satisfies|satisfied|matches|meets|fulfils|fulfills|follows the instruction|looks good|is correct|as requested)\b",
    re.IGNORECASE,
)


def parse_judgement(text: str) -> Judgement:
    """Read a judge's free-form answer.

    The verdict is the first word when it is one (yes / no and their variants, also after "Answer:" or markdown); a
    "yes, but ..." is a no. A judge that gives its reasons first says its verdict on a line of its own after them
    ("No." or "Answer: no"); the fixes follow it. Without either, the text decides by its cues: an answer that starts
    with a fix ("Make ...", "Remove ...") or any sign of a fault ("does not", "missing", "should", ...) is a no with
    the whole text as the correction, an approval without such signs a yes, anything else (empty, garbage) unclear.
    The correction of a no is its list items joined by "; ", or else the text after the verdict, on one line, at most
    `MAX_CORRECTION_CHARS`.
    """
    cleaned = _MARKUP.sub("", _SPECIAL_TOKEN.sub(" ", text or "")).strip()
    if not cleaned:
        return Judgement("unclear")
    leading = _LEADING.match(cleaned)
    if leading:
        rest = cleaned[leading.end():]
        if leading.group(1).lower() in _YES_WORDS:
            if not _BUT.match(rest):
                return Judgement("yes")
            rest = rest[_BUT.match(rest).end():]
        return Judgement("no", _correction(rest))
    lines = cleaned.splitlines()
    for index, line in enumerate(lines):
        verdict = _VERDICT_LINE.match(line)
        if verdict:
            if verdict.group(1).lower() in _YES_WORDS:
                return Judgement("yes")
            return Judgement("no", _correction("\n".join(lines[index + 1:])))
    if _IMPERATIVE.match(cleaned) or _NEGATIVE_CUES.search(cleaned):
        return Judgement("no", _correction(cleaned))
    if _POSITIVE_CUES.search(cleaned):
        return Judgement("yes")
    return Judgement("unclear")


def _correction(text: str) -> str:
    """The fixes in the text after a verdict: its list items, or else its words on one line."""
    lines = text.splitlines()
    items = [m.group(1).strip().rstrip(".;") for m in map(_LIST_ITEM.match, lines) if m]
    correction = "; ".join(items) if items else " ".join(" ".join(lines).split()).strip(" .,:;-")
    if len(correction) > MAX_CORRECTION_CHARS:
        correction = correction[:MAX_CORRECTION_CHARS].rsplit(" ", 1)[0]
    return correction


STOP_SATISFIED = "the judge is satisfied"
STOP_UNCLEAR = "the judge's answer says neither yes nor no"
STOP_NO_FIX = "the judge said no but named nothing to fix"
STOP_MAX_ROUNDS = "max_rounds reached"


def stop_reason(judgement: Judgement, round_number: int, max_rounds: int) -> str | None:
    """Why the loop ends after this round, or None to run another: it stops on a yes, on an answer it cannot act on,
    and at max_rounds."""
    if judgement.verdict == "yes":
        return STOP_SATISFIED
    if judgement.verdict == "unclear":
        return STOP_UNCLEAR
    if not judgement.correction:
        return STOP_NO_FIX
    if round_number >= max_rounds:
        return STOP_MAX_ROUNDS
    return None


def fold_correction(prompt: str, correction: str, previous_slot: int | None) -> str:
    """The next round's instruction: the user's prompt (never an earlier round's, so corrections do not pile up)
    with the latest correction, pointing at the previous result by its image number when it is a reference."""
    if previous_slot is None:
        return f"{prompt}\nAvoid the previous attempt's mistakes: {correction}."
    return f"{prompt}\nImage {previous_slot} is a previous attempt: keep what is right in it and fix this: {correction}."


def round_seed(seed: int, round_number: int) -> int:
    """The noise seed of a round: the next one each round. With the noise of the round before and a condition that
    differs by a few words, a round would redraw much the same picture."""
    return seed + round_number - 1


def round_references(
    originals: Sequence[ReferenceImage], previous: ReferenceImage | None
) -> tuple[tuple[ReferenceImage, ...], int | None]:
    """The next round's references and the previous result's image number (None when dropped): the originals in
    their slots, then the previous result if a slot is free (see the module docstring)."""
    if previous is None or len(originals) >= MAX_REFERENCE_IMAGES:
        return tuple(originals), None
    return (*originals, previous), len(originals) + 1


@dataclass
class ReflectionRound:
    """One round: its result image [1, 3, H, W] in [0, 1], the instruction it sampled, how many references it had
    and whether the previous result was one of them, the judge's raw answer and what was read from it, and costs."""

    number: int
    image: torch.Tensor
    instruction: str
    references: int
    previous_as_reference: bool
    judge_text: str
    verdict: str
    correction: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReflectionResult:
    """Every round in order, the final image (the last round's) and why the loop stopped."""

    rounds: list[ReflectionRound]
    stop_reason: str

    @property
    def final(self) -> torch.Tensor:
        return self.rounds[-1].image

    def transcript(self) -> str:
        """The loop as text: per round the instruction, the references, the judge's answer and its reading."""
        lines = []
        for r in self.rounds:
            refs = f"{r.references} reference image(s)"
            if r.previous_as_reference:
                refs += f", the last one round {r.number - 1}'s result"
            lines += [
                f"Round {r.number}",
                "instruction: " + r.instruction.replace("\n", "\n  "),
                f"references: {refs}",
                "judge: " + r.judge_text.strip().replace("\n", "\n  "),
                f"verdict: {r.verdict}" + (f"; correction: {r.correction}" if r.correction else ""),
                f"seconds: sampling {r.stats.get('seconds_sampling', 0):.1f}, judging {r.stats.get('seconds_judging', 0):.1f}",
                "",
            ]
        lines.append(f"Stopped after round {len(self.rounds)}: {self.stop_reason}.")
        return "\n".join(lines)


def reflect(
    model: ConditionalSampler,
    prompt: str | Condition,
    images: Sequence[ImageLike] | None,
    max_rounds: int,
    judge: Judge,
    negative_prompt: str | None = None,
    options: SamplingOptions | None = None,
    on_round: RoundCallback | None = None,
    progress: Progress | None = None,
) -> ReflectionResult:
    """The loop of the module docstring. `prompt` is the instruction, or a `Condition` (then `images` must be None:
    its references are the originals, its prompt text the instruction). Each round samples with `options`, except
    that later rounds keep round 1's size when none was given (one more reference would change the automatic size)
    and each round draws its own noise (`round_seed`).
    The previous result enters as encoded at the condition's max_pixels and `max_input_image_side_length` (not
    compacted, even when the originals are). `on_round(round, max_rounds)` runs before each round and may raise to
    cancel; `progress` is each round's sampler progress.
    """
    options = options or SamplingOptions()
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1:
        raise InvalidInputError(f"max_rounds must be a whole number >= 1, got {max_rounds!r}.")
    if options.num_images != 1:
        raise InvalidInputError(f"reflect follows one image; num_images must be 1, got {options.num_images!r}.")
    if not callable(judge):
        raise InvalidInputError(f"judge must be callable as judge(question, images) -> str, got {type(judge).__name__}.")
    if isinstance(prompt, Condition):
        if images is not None:
            raise InvalidInputError("give reference images either in the condition or as images, not both.")
        base = prompt
    else:
        base = model.encode(prompt, negative_prompt, images, options)
    instruction = base.positive.text
    if not instruction.strip():
        raise InvalidInputError(
            "the condition holds no prompt text for the judge to check against; build it with encode_condition."
        )
    originals = base.references
    shown = [_reference_pil(ref, j) for j, ref in enumerate(originals)]
    question = judge_prompt(instruction, len(originals))
    store = ConditionFeatureStore()
    rounds: list[ReflectionRound] = []
    condition, previous_slot, number = base, None, 0
    try:
        while True:  # `stop_reason` ends it by max_rounds at the latest
            number += 1
            if on_round is not None:
                on_round(number, max_rounds)
            started = time.perf_counter()
            round_options = dataclasses.replace(options, seed=round_seed(options.seed, number))
            result = model.sample(condition, round_options, progress=progress, condition_features=store)
            sampled = time.perf_counter()
            image = result.images[:1]
            answer = judge(question, [*shown, to_pil(image[0], "result")])
            if not isinstance(answer, str):
                raise InvalidInputError(f"the judge must return its answer as a string, got {type(answer).__name__}.")
            judgement = parse_judgement(answer)
            stats = {**result.stats, "seconds_sampling": sampled - started, "seconds_judging": time.perf_counter() - sampled}
            rounds.append(ReflectionRound(
                number, image, condition.positive.text, len(condition.references), previous_slot is not None,
                answer, judgement.verdict, judgement.correction, stats,
            ))
            reason = stop_reason(judgement, number, max_rounds)
            if reason is not None:
                return ReflectionResult(rounds, reason)
            if options.width is None and options.height is None:
                height, width = image.shape[-2:]
                options = dataclasses.replace(options, width=int(width), height=int(height), align_res=False)
            (previous,) = model.encode_references([image[0]], base.max_pixels, options.max_input_image_side_length)
            references, previous_slot = round_references(originals, previous)
            text = fold_correction(instruction, judgement.correction, previous_slot)
            condition = dataclasses.replace(
                base, positive=model.text_encoder.encode_prompt(text), references=references, fingerprint=""
            )
    finally:  # also on cancel or error: no features outlive the loop
        store.clear()


def _reference_pil(reference: ReferenceImage, index: int) -> PIL.Image.Image:
    """An original reference as the judge sees it: the preprocessed pixels the generator was given."""
    if reference.pixels is None:
        raise InvalidInputError(
            f"reference image {index + 1} has no pixels to show the judge; build the condition with encode_condition."
        )
    return to_pil((reference.pixels[0] + 1) / 2, f"image {index + 1}")
