"""What the bundled MLLM is taught to say about the synthetic scenes: chat turns built from the dataset's examples.

Three kinds of turn, each in the exact words the engine uses at inference, so the model learns the questions it is
asked there:
- describe: an image and `DESCRIBE_PROMPT` -> every object's colour and shape and the background colour;
- judge: the example's input images, then a candidate result, and the reflection loop's question
  (`reflection.judge_prompt`) -> a `comparison` of what the result should show with what it shows, then "Yes." when
  they are the same, else "No." and one fix per line, phrased as the dataset's edit instructions ("change the blue
  circle to red"), or with `whole_scene_fix` (what `vlm.tune_judge` teaches last) as the one scene the result must
  show (`scene_fix`). The verdict comes after the looking: a small model that must say yes or no first learnt it one
  colour pair at a time (it said yes unless an object was missing); one that first describes both scenes, or sets
  two phrases side by side, still says yes; one word asked beside one word shown it compares;
- draw: an instruction (with its input images, as the chat path shows them) -> `<|img|>`, the chat path's request to
  draw.
A wrong candidate is the expected scene with one or two mistakes of the kinds a drawing model makes: an object's
colour or shape, the background, an object left out or (where the edit sets it) put elsewhere, and for an edit the
input left unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ...reflection import judge_prompt
from ...text_encoder import IMAGE_REQUEST
from .dataset import Example, examples, pick
from .scenes import COLORS, POSITIONS, SHAPES, Scene, Shape

DESCRIBE_PROMPT = "Describe image 1: the colour and shape of each object, and the background colour."
TURN_SHARES = {"describe": 0.3, "judge": 0.6, "draw": 0.1}  # judging is the hardest to learn; drawing the easiest
WRONG_SHARE = 0.5  # of judge turns, the share whose candidate is wrong
BACKGROUND_ONLY = 0.2  # of wrong candidates, the share whose only mistake is the background
TWO_MISTAKES = 0.2  # of the others, the share with a wrong background too


@dataclass(frozen=True)
class Turn:
    """One user turn and the answer to teach: images as scenes (rendered when used), in the order shown."""

    kind: str
    prompt: str
    images: tuple[Scene, ...]
    answer: str


def scene_words(scene: Scene) -> str:
    """A scene in the dataset's words, objects from left to right (as a picture shows them, whatever order drew them):
    'a red circle and a blue square on a green background'."""
    objects = sorted(scene.shapes, key=lambda item: item.center)
    return " and ".join(f"a {item.words()}" for item in objects) + f" on a {scene.background} background"


def names_scene(answer: str, scene: Scene) -> bool:
    """Whether a description names every object's colour and shape and the background colour (what the describe
    turns teach, scored without regard to order or wording)."""
    answer = answer.lower()
    words = [scene.background, *(word for item in scene.shapes for word in (item.color, item.shape))]
    return all(word in answer for word in words)


def comparison(wanted: Scene, shown: Scene, placed: bool) -> list[str]:
    """A judge's looking, one line per word asked or shown, each said twice and compared on the spot: 'Background:
    asked blue, shown green - different.', then per place (left to right; 'Object' where the instruction sets no
    places, `placed` false) its colour and shape: 'Left colour: asked red, shown nothing - different.'. A small model
    compares two words three tokens apart; two phrases ('a red circle') it did not learn to compare."""
    lines = [_compared("Background", wanted.background, shown.background)]
    asked, seen = _objects_by_place(wanted, placed), _objects_by_place(shown, placed)
    for place in sorted(asked.keys() | seen.keys(), key=lambda name: POSITIONS.get(name, (0, 0))):
        for label, attribute in (("colour", "color"), ("shape", "shape")):
            lines.append(_compared(f"{place.capitalize()} {label}", getattr(asked.get(place), attribute, "nothing"),
                                   getattr(seen.get(place), attribute, "nothing")))
    return lines


def _objects_by_place(scene: Scene, placed: bool) -> dict[str, Shape]:
    if not placed:
        return {"object": item for item in scene.shapes[:1]}
    return {position_word(item.center): item for item in scene.shapes}


def _compared(name: str, asked: str, shown: str) -> str:
    return f"{name}: asked {asked}, shown {shown} - {'same' if asked == shown else 'different'}."


def position_word(center: tuple[float, float]) -> str:
    """The named position nearest a centre."""
    return min(POSITIONS, key=lambda name: np.hypot(*np.subtract(POSITIONS[name], center)))


def _mistake(rng: np.random.Generator, scene: Scene, placed: bool) -> tuple[Scene, str]:
    """The scene with one mistake in one object and the fix that undoes it. `placed`: the object's place is part of
    what was asked (an edit of one object; a text-to-image prompt names no place, a pair's places are fixed)."""
    kinds = ["color", "shape", "missing", *(["position"] if placed and len(scene.shapes) == 1 else [])]
    kind = kinds[rng.integers(len(kinds))]
    index = int(rng.integers(len(scene.shapes)))
    item = scene.shapes[index]
    if kind == "color":
        wrong = dataclasses.replace(item, color=pick(rng, COLORS, _colors(scene)))
        fix = f"change the {wrong.words()} to {item.color}"
    elif kind == "shape":
        wrong = dataclasses.replace(item, shape=pick(rng, SHAPES, (item.shape,)))
        fix = f"make the {wrong.words()} a {item.shape}"
    elif kind == "missing":
        rest = scene.shapes[:index] + scene.shapes[index + 1:]
        return Scene(scene.background, rest), f"add a {item.words()} on the {position_word(item.center)}"
    else:
        place = position_word(item.center)
        wrong = dataclasses.replace(item, center=POSITIONS[pick(rng, POSITIONS, (place,))])
        fix = f"move the {item.words()} to the {place}"
    return Scene(scene.background, scene.shapes[:index] + (wrong,) + scene.shapes[index + 1:]), fix


def _colors(scene: Scene) -> set[str]:
    return {scene.background, *(item.color for item in scene.shapes)}


def wrong_candidate(rng: np.random.Generator, example: Example) -> tuple[Scene, list[str]]:
    """A wrong result for the example and the fixes that make it right: a mistake in an object, in the background, or
    both; for an edit also the input unchanged."""
    if example.task_type == "edit" and rng.random() < 0.4:
        return example.inputs[0], [example.instruction]  # the edit not done
    scene, fixes = example.output, []
    if rng.random() < 1 - BACKGROUND_ONLY:
        scene, fix = _mistake(rng, scene, example.task_type == "edit")
        fixes.append(fix)
    if not fixes or rng.random() < TWO_MISTAKES:
        scene = Scene(pick(rng, COLORS, _colors(scene) | _colors(example.output)), scene.shapes)
        fixes.append(f"make the background {example.output.background}")
    return scene, fixes


def judge_answer(example: Example, candidate: Scene, fixes: list[str]) -> str:
    """The judge's answer in the form `reflection.parse_judgement` reads: its `comparison` of the expected scene with
    the candidate, then the verdict on a line of its own ("Yes." when every line is the same, which is when `fixes` is
    empty) and one fix per line. A text-to-image prompt places nothing, so its comparison names no places."""
    lines = comparison(example.output, candidate, placed=example.task_type != "t2i")
    verdict = "Yes." if not fixes else "No.\n" + "\n".join(f"- {fix}" for fix in fixes)
    return "\n".join(lines) + "\n" + verdict


def decisions(answer: str) -> list[tuple[int, int]]:
    """Where a judge's answer decides: the character span of each comparison's ' same' / ' different' (with its space,
    which a tokenizer may spell apart) and of the verdict."""
    return [match.span(match.lastindex) for match in _DECISION.finditer(answer)]


_DECISION = re.compile(r" -( same| different)\.$|^(Yes|No)\.$", re.MULTILINE)


def scene_fix(scene: Scene) -> str:
    """A judge's fix as the whole scene the result must show ("show a red circle on a blue background"): what the
    tuned judge says (`vlm.tune_judge`), since the transformer follows it better than a list of edits."""
    return f"show {scene_words(scene)}"


def turns_of(rng: np.random.Generator, example: Example, whole_scene_fix: bool = False) -> Turn:
    """One turn about `example`, its kind drawn by TURN_SHARES; a wrong result's fix is `scene_fix` when
    `whole_scene_fix`, else the edits that undo each mistake."""
    kind = list(TURN_SHARES)[int(np.searchsorted(np.cumsum(list(TURN_SHARES.values())), rng.random()))]
    if kind == "describe":
        images = (*example.inputs, example.output)
        scene = images[rng.integers(len(images))]
        return Turn(kind, DESCRIBE_PROMPT, (scene,), scene_words(scene))
    if kind == "draw":
        return Turn(kind, example.instruction, example.inputs, IMAGE_REQUEST)
    candidate, fixes = (example.output, []) if rng.random() >= WRONG_SHARE else wrong_candidate(rng, example)
    if fixes and whole_scene_fix:
        fixes = [scene_fix(example.output)]
    question = judge_prompt(example.instruction, len(example.inputs))
    return Turn(kind, question, (*example.inputs, candidate), judge_answer(example, candidate, fixes))


def turns(count: int, seed: int, held_out: bool, whole_scene_fix: bool = False) -> Iterator[Turn]:
    """`count` turns about the shapes dataset's examples (its held-out split when `held_out`), reproducible by seed."""
    rng = np.random.default_rng([seed, 7 if held_out else 8])
    for example in examples(count, seed, held_out):
        yield turns_of(rng, example, whole_scene_fix)
