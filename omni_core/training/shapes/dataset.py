"""A seeded synthetic OmniGen2 dataset: text-to-image, edit and in-context examples of flat shapes, as jsonl + PNGs.

    python -m omni_core.training.shapes.dataset --output data/shapes [--train 10000 --test 48 --resolution 64 --seed 0]

writes `train.jsonl` and the held-out `test.jsonl` (OmniGen2's format: task_type, instruction, input_images,
output_image; test lines also carry `scene`, the ground truth the quality measurer checks). Held out: some
(colour, shape, background) triples, which appear in no training image of any task, and some ordered pairs of
objects for in-context generation, which no training example combines. Test examples use only those.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .scenes import COLORS, PAIR_SIZE, POSITIONS, SHAPES, SIZES, Scene, Shape, render

TASK_SHARES = {"t2i": 0.4, "edit": 0.3, "in_context": 0.3}
EDIT_KINDS = ("recolor", "move", "add")
HELD_OUT_TRIPLES = 20  # of 8 colours x 3 shapes x 7 other backgrounds = 168
HELD_OUT_PAIRS = 48  # of 24 x 23 ordered pairs of distinct-colour objects = 552 (minus same-colour pairs)
JITTER = 0.05  # random offset of a t2i shape's centre, fraction of the image side


@dataclasses.dataclass(frozen=True)
class Example:
    """One training or test example: images as scenes, rendered when written."""

    task_type: str
    instruction: str
    inputs: tuple[Scene, ...]
    output: Scene


def held_out_split(seed: int) -> tuple[frozenset, frozenset]:
    """(triples, pairs) kept out of training: (colour, shape, background) triples and ordered object pairs."""
    rng = np.random.default_rng([seed, 1])
    triples = [(c, s, b) for c, s, b in itertools.product(COLORS, SHAPES, COLORS) if c != b]
    objects = list(itertools.product(COLORS, SHAPES))
    pairs = [(a, b) for a, b in itertools.product(objects, objects) if a[0] != b[0]]
    chosen_triples = frozenset(triples[i] for i in rng.choice(len(triples), HELD_OUT_TRIPLES, replace=False))
    chosen_pairs = frozenset(pairs[i] for i in rng.choice(len(pairs), HELD_OUT_PAIRS, replace=False))
    return chosen_triples, chosen_pairs


def scene_triples(scene: Scene) -> set[tuple[str, str, str]]:
    return {(item.color, item.shape, scene.background) for item in scene.shapes}


def pick(rng: np.random.Generator, options, exclude=()):
    """One of `options` not in `exclude`, drawn uniformly."""
    options = [o for o in options if o not in exclude]
    return options[rng.integers(len(options))]


class _Sampler:
    """Draws random examples; `held_out` selects whether they must use (test) or avoid (train) the held-out split."""

    def __init__(self, rng: np.random.Generator, triples: frozenset, pairs: frozenset, held_out: bool) -> None:
        self.rng, self.triples, self.pairs, self.held_out = rng, triples, pairs, held_out

    def pick(self, options, exclude=()):
        return pick(self.rng, options, exclude)

    def allowed(self, example: Example) -> bool:
        """Training: no held-out triple in any image and no held-out pair. Test: the example's own held-out part."""
        seen = set().union(*(scene_triples(s) for s in (*example.inputs, example.output)))
        uses_triple = bool(seen & self.triples)
        if example.task_type == "in_context":
            a, b = example.output.shapes
            uses_pair = ((a.color, a.shape), (b.color, b.shape)) in self.pairs
            return uses_pair and not uses_triple if self.held_out else not (uses_pair or uses_triple)
        if not self.held_out:
            return not uses_triple
        first = example.inputs[0] if example.inputs else example.output
        return bool(scene_triples(first) & self.triples)

    def jittered(self, center: tuple[float, float]) -> tuple[float, float]:
        dx, dy = self.rng.uniform(-JITTER, JITTER, 2)
        return (center[0] + dx, center[1] + dy)

    def single(self, position: str = "center", size: str | None = None, jitter: bool = True) -> tuple[Scene, str]:
        """A one-object scene and its size word ('small'/'large')."""
        size = size or self.pick(list(SIZES))
        background = self.pick(COLORS)
        item = Shape(self.pick(COLORS, exclude=(background,)), self.pick(SHAPES), SIZES[size], POSITIONS[position])
        if jitter:
            item = dataclasses.replace(item, center=self.jittered(item.center))
        return Scene(background, (item,)), size

    def t2i(self) -> Example:
        scene, size = self.single()
        item = scene.shapes[0]
        size_word = f"{size} " if self.rng.random() < 0.5 else ""
        return Example("t2i", f"a {size_word}{item.words()} on a {scene.background} background", (), scene)

    def edit(self) -> Example:
        kind = EDIT_KINDS[self.rng.integers(len(EDIT_KINDS))]
        if kind == "recolor":
            before, _ = self.single()
            item = before.shapes[0]
            color = self.pick(COLORS, exclude=(before.background, item.color))
            after = Scene(before.background, (dataclasses.replace(item, color=color),))
            instruction = (
                f"make the {item.shape} {color}" if self.rng.random() < 0.5 else f"change the {item.words()} to {color}"
            )
        elif kind == "move":
            start = self.pick(list(POSITIONS))
            end = self.pick(list(POSITIONS), exclude=(start,))
            before, _ = self.single(start, size="small", jitter=False)
            item = before.shapes[0]
            after = Scene(before.background, (dataclasses.replace(item, center=POSITIONS[end]),))
            instruction = f"move the {item.words()} to the {end}"
        else:
            side, other = ("left", "right") if self.rng.random() < 0.5 else ("right", "left")
            first = Shape(self.pick(COLORS), self.pick(SHAPES), PAIR_SIZE, POSITIONS[side])
            background = self.pick(COLORS, exclude=(first.color,))
            added = Shape(self.pick(COLORS, exclude=(background, first.color)), self.pick(SHAPES), PAIR_SIZE, POSITIONS[other])
            before, after = Scene(background, (first,)), Scene(background, (first, added))
            instruction = f"add a {added.words()} on the {other}"
        return Example("edit", instruction, (before,), after)

    def in_context(self) -> Example:
        first, _ = self.single(size="large")
        second, _ = self.single(size="large")
        a, b = first.shapes[0], second.shapes[0]
        if a.color == b.color:
            return self.in_context()
        background = self.pick(COLORS, exclude=(a.color, b.color))
        output = Scene(
            background,
            (
                Shape(a.color, a.shape, PAIR_SIZE, POSITIONS["left"]),
                Shape(b.color, b.shape, PAIR_SIZE, POSITIONS["right"]),
            ),
        )
        if self.rng.random() < 0.5:
            instruction = f"the {a.words()} of image 1 and the {b.words()} of image 2 on a {background} background"
        else:
            instruction = f"the shape of image 1 and the shape of image 2 on a {background} background"
        return Example("in_context", instruction, (first, second), output)

    def draw(self, task_type: str) -> Example:
        make = {"t2i": self.t2i, "edit": self.edit, "in_context": self.in_context}[task_type]
        while True:
            example = make()
            if self.allowed(example):
                return example


def examples(count: int, seed: int, held_out: bool) -> Iterator[Example]:
    """`count` examples in TASK_SHARES proportions (each task the same count when held_out), reproducible by seed."""
    triples, pairs = held_out_split(seed)
    sampler = _Sampler(np.random.default_rng([seed, 2 if held_out else 3]), triples, pairs, held_out)
    tasks = list(TASK_SHARES)
    for index in range(count):
        if held_out:
            task = tasks[index % len(tasks)]
        else:
            task = tasks[int(np.searchsorted(np.cumsum(list(TASK_SHARES.values())), sampler.rng.random()))]
        yield sampler.draw(task)


def scene_to_json(scene: Scene) -> dict[str, Any]:
    return {"background": scene.background, "shapes": [dataclasses.asdict(item) for item in scene.shapes]}


def scene_from_json(data: dict[str, Any]) -> Scene:
    return Scene(data["background"], tuple(Shape(s["color"], s["shape"], s["size"], tuple(s["center"])) for s in data["shapes"]))


def write_split(folder: Path, name: str, items: Iterator[Example], resolution: int, with_scene: bool) -> Path:
    """Render `items` as PNGs under folder/name/ and write folder/name.jsonl (paths relative to `folder`)."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    lines = []
    for index, example in enumerate(items):
        stem = f"{name}/{index:06d}"
        inputs = []
        for j, scene in enumerate(example.inputs):
            render(scene, resolution).save(folder / f"{stem}_in{j + 1}.png")
            inputs.append(f"{stem}_in{j + 1}.png")
        render(example.output, resolution).save(folder / f"{stem}_out.png")
        line = {"task_type": example.task_type, "instruction": example.instruction, "input_images": inputs,
                "output_image": f"{stem}_out.png"}
        if with_scene:
            line["scene"] = scene_to_json(example.output)
        lines.append(json.dumps(line))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_dataset(
    folder: Path, train: int, test: int, resolution: int, seed: int,
    rework_train: Callable[[Iterator[Example]], Iterator[Example]] | None = None,
) -> tuple[Path, Path]:
    """Write the training and held-out test splits into `folder`; returns (train.jsonl, test.jsonl). `rework_train`
    maps the training examples before they are written (the recipe redoes some as reflection corrections)."""
    folder = Path(folder)
    training = examples(train, seed, held_out=False)
    return (
        write_split(folder, "train", rework_train(training) if rework_train else training, resolution, with_scene=False),
        write_split(folder, "test", examples(test, seed, held_out=True), resolution, with_scene=True),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for train.jsonl, test.jsonl and the PNGs")
    parser.add_argument("--train", type=int, default=10000, help="training examples")
    parser.add_argument("--test", type=int, default=48, help="held-out examples (a third per task)")
    parser.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_dataset(args.output, args.train, args.test, args.resolution, args.seed):
        print(path)


if __name__ == "__main__":
    main()
