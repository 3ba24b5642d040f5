"""Quality of the embedded default model on held-out synthetic prompts and pairs, scored from the pixels.

    python benchmarks/quality.py [--count 16] [--steps 20] [--json PATH] [--samples-png PATH]

The held-out split of `omni_core.training.shapes.dataset` (colour/shape/background triples and in-context object
pairs that no training image has) is regenerated in memory; every sample is read back by
`omni_core.training.shapes.measure`, which never looks at the model:

- t2i_color_accuracy / t2i_shape_accuracy: the dominant non-background object has the prompt's colour / shape;
- edit_accuracy: the edited image is exactly the expected scene (background, every object's colour, shape and
  place; recolour, move and add edits in turn);
- in_context_accuracy: the same for the two objects of the two reference images, with the full (uncached) joint
  model; `_reused_joint`: the same model with reference features computed at step 0 and reused without the mask
  (cache_per_n_steps > steps, independent_condition False); `_independent_once`: the independent-condition model
  (the joint model with the LoRA <model>/loras/independent_condition.safetensors) with its features computed once;
- speedup_independent_once: seconds of the full joint in-context runs over those of the independent-once runs
  (process CPU time, the modes interleaved per example; wall-clock ratio beside it);
  `_ceiling`: the same ratio of their multiply-accumulates (`_work.py`, counted from the model's config and the runs'
  token counts), which no implementation of the exact computation can beat: compute-once removes only the reference
  tokens' own work, and at 64 x 64 a 49-token prompt outweighs two 16-token references.

`--step-cache teacache|taylorseer` samples everything with that step cache (official defaults: TeaCache threshold
0.05, TaylorSeer order 4 interval 3), to show what step caching costs in accuracy on a model that draws.

Reflection (`OmniGen2.reflect`, up to `--rounds`) on the same held-out text-to-image and edit examples, judged by
`--judge`: `own` (the default, as the Reflect node: the model's own MLLM), `measurer` (a judge that reads the
pixels with the measurer above and names the expected scene as the fix: what the loop does when judged right) or a
vision-language model folder (the Reflect node's judge_model):
- reflect_t2i_round1 / _final, reflect_edit_round1 / _final: the accuracies above after round 1 and after the loop;
- reflect_mean_rounds: rounds run per example;
- judge_caught_wrong / judge_rejected_right: of the round-1 images the measurer finds wrong, the share the judge
  answered no; of those it finds right, the share it answered no (null where there were none);
- judge_agreement: the share of round-1 verdicts that agree with the measurer (an unclear answer never does);
- describe_accuracy: the model's chat, shown a held-out scene drawn exactly, names every object's colour and shape
  and the background colour.
The samples grid ends with a chat row (a held-out picture and the model's description of it), a loop's inputs and
rounds (the first loop that turned a wrong picture right, an edit's before a text-to-image one and one its judge
ended satisfied before the others; else the longest loop) and what its judge said each round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import omni_core  # noqa: E402
from _work import RunShape, run_macs  # noqa: E402
from omni_core.judges import resolve_judge  # noqa: E402
from omni_core.reflection import STOP_SATISFIED  # noqa: E402
from omni_core.step_cache import STEP_CACHE_CHOICES, step_cache_by_name  # noqa: E402
from omni_core.training.shapes.conversations import DESCRIBE_PROMPT, names_scene, scene_fix  # noqa: E402
from omni_core.training.shapes.dataset import examples  # noqa: E402
from omni_core.training.shapes.measure import main_object, read_scene, result_matches, scene_matches  # noqa: E402
from omni_core.training.shapes.scenes import render  # noqa: E402

ONCE = 10**6  # cache_per_n_steps larger than any step count: reference features computed at step 0 only
TILE_GAP = 4


def timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy())


def row_width(tiles: int, side: int) -> int:
    """Pixels across `tiles` square tiles of `side` and the gaps between them."""
    return tiles * (side + TILE_GAP) - TILE_GAP


def grid(rows: list[list[Image.Image]], scale: int = 2) -> Image.Image:
    """Rows of equal-size tiles, left-aligned, with gaps, scaled up by `scale` (nearest) for display; a wider tile
    (a text panel) spans the columns after it."""
    side = rows[0][0].width
    width = row_width(max(len(row) for row in rows), side)
    canvas = Image.new("RGB", (width, len(rows) * (side + TILE_GAP) - TILE_GAP), (128, 128, 128))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tile, (c * (side + TILE_GAP), r * (side + TILE_GAP)))
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)


def text_tile(text: str, width: int, height: int) -> Image.Image:
    """`text` in black on white, wrapped to `width` pixels (PIL's built-in font), as a grid tile."""
    tile = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split():
            wider = f"{line} {word}".strip()
            if line and draw.textlength(wider) > width - 4:
                lines.append(line)
                wider = word
            line = wider
        lines.append(line)
    draw.multiline_text((2, 1), "\n".join(lines), fill=(0, 0, 0), spacing=1)
    return tile


def is_right(task: str, image, example) -> bool:
    """Reflection's rule, what the judge is taught (`measure.result_matches`)."""
    return result_matches(task, read_scene(image), example.output)


def measurer_judge(task: str, example):
    """A judge that reads the result's pixels instead of looking: yes when the figures count it right, else no with
    the expected scene as the fix, in the training data's words."""

    def judge(question: str, images) -> str:
        return "Yes." if is_right(task, images[-1], example) else f"No.\n- {scene_fix(example.output)}"

    return judge


def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


FIXING_LOOP_PREFERENCE = (("edit", True), ("t2i", True), ("edit", False), ("t2i", False))  # (task, judge satisfied)


def reflection_figures(model, by_task: dict, args: argparse.Namespace, settings: dict) -> tuple[dict, list, str]:
    """The reflection and judge figures of the module docstring, and the loop to show: its inputs and rounds, and
    what the judge said each round (a loop that fixed a mistake, an edit's before a text-to-image one and one the
    judge ended satisfied before one it did not; else the longest)."""
    figures, verdicts, rounds_run, longest_loop, fixing_loops = {}, [], [], ([], ""), {}
    other_judge = None if args.judge in ("own", "measurer") else resolve_judge(model.text_encoder, args.judge)
    for task in ("t2i", "edit"):
        first = final = 0
        for i, example in enumerate(by_task[task]):
            sources = [render(scene, args.size) for scene in example.inputs]
            judge = measurer_judge(task, example) if args.judge == "measurer" else other_judge
            result = model.reflect(example.instruction, images=sources or None, max_rounds=args.rounds, judge=judge,
                                   seed=i, **settings)
            right_first = is_right(task, result.rounds[0].image[0], example)
            right_final = is_right(task, result.final[0], example)
            first, final = first + right_first, final + right_final
            verdicts.append((right_first, result.rounds[0].verdict))
            rounds_run.append(len(result.rounds))
            loop = ([*sources, *(to_pil(r.image[0]) for r in result.rounds)], said_each_round(example, result))
            longest_loop = max(longest_loop, loop, key=lambda shown: len(shown[0]))
            if right_final and not right_first:
                fixing_loops.setdefault((task, result.stop_reason == STOP_SATISFIED), loop)
        figures[f"reflect_{task}_round1"] = first / len(by_task[task])
        figures[f"reflect_{task}_final"] = final / len(by_task[task])
    figures["reflect_mean_rounds"] = sum(rounds_run) / len(rounds_run)
    figures["judge_caught_wrong"] = share([verdict == "no" for right, verdict in verdicts if not right])
    figures["judge_rejected_right"] = share([verdict == "no" for right, verdict in verdicts if right])
    figures["judge_agreement"] = share([verdict == ("yes" if right else "no") for right, verdict in verdicts])
    shown = next((fixing_loops[key] for key in FIXING_LOOP_PREFERENCE if key in fixing_loops), longest_loop)
    return figures, *shown


def said_each_round(example, result) -> str:
    """The loop in a few lines: the instruction, then per round the judge's verdict and fix."""
    lines = [f"Reflect: {example.instruction}"]
    lines += [f"round {r.number}: {r.verdict}" + (f" - {r.correction}" if r.correction else "") for r in result.rounds]
    return "\n".join(lines)


def describe_figures(model, examples_shown: list, size: int, width: int) -> tuple[float | None, list[Image.Image]]:
    """describe_accuracy on `examples_shown` (each drawn exactly), and the grid's chat row: the first picture and
    the model's answer beside it, in a panel `width` pixels wide."""
    pictures = [render(example.output, size) for example in examples_shown]
    answers = [model.chat(DESCRIBE_PROMPT, [picture], respond="text").text.strip() for picture in pictures]
    accuracy = share([names_scene(answer, example.output) for answer, example in zip(answers, examples_shown)])
    return accuracy, [pictures[0], text_tile(f"Q: {DESCRIBE_PROMPT}\nA: {answers[0]}", width, size)]


def run_shape(
    condition: omni_core.Condition, size: int, steps: int, text_guidance: float, image_guidance: float
) -> RunShape:
    """What one sampling run of `condition` feeds the transformer, for counting its work."""
    negative = condition.negative or condition.positive  # the guidance passes' prompt without a negative one
    return RunShape(int(condition.positive.mask.sum()), int(negative.mask.sum()), (size // 16) ** 2,
                    tuple(reference.num_tokens for reference in condition.references), steps,
                    three_passes=text_guidance > 1.0 and image_guidance > 1.0)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = omni_core.load_model(args.model)
    independent = model.with_loras([(args.independent, 1.0)]) if args.independent.is_file() else None  # shares the encoders
    settings = dict(width=args.size, height=args.size, steps=args.steps, text_guidance_scale=args.text_guidance,
                    image_guidance_scale=args.image_guidance, step_cache=step_cache_by_name(args.step_cache))
    held_out = list(examples(3 * args.count, args.seed, held_out=True))  # t2i, edit, in_context in turn
    by_task = {task: [e for e in held_out if e.task_type == task] for task in ("t2i", "edit", "in_context")}
    figures: dict = {"count_per_task": args.count, "steps": args.steps, "size": args.size, "threads": args.threads,
                     "text_guidance_scale": args.text_guidance, "image_guidance_scale": args.image_guidance,
                     "step_cache": args.step_cache}
    samples: dict[str, list[list[Image.Image]]] = {"t2i": [], "edit": [], "in_context": []}

    color = shape = 0
    for i, example in enumerate(by_task["t2i"]):
        image = model.generate(example.instruction, seed=i, **settings).images[0]
        found, want = main_object(read_scene(image)), example.output.shapes[0]
        color += found is not None and found.color == want.color
        shape += found is not None and found.shape == want.shape
        samples["t2i"].append([to_pil(image)])
    figures["t2i_color_accuracy"] = color / len(by_task["t2i"])
    figures["t2i_shape_accuracy"] = shape / len(by_task["t2i"])

    correct = 0
    for i, example in enumerate(by_task["edit"]):
        source = render(example.inputs[0], args.size)
        image = model.generate(example.instruction, images=[source], seed=i, **settings).images[0]
        correct += scene_matches(read_scene(image), example.output)
        samples["edit"].append([source, to_pil(image)])
    figures["edit_accuracy"] = correct / len(by_task["edit"])

    modes = {"full": (model, None, False), "reused_joint": (model, ONCE, False)}
    if independent is not None:
        modes["independent_once"] = (independent, ONCE, True)
    scores = {mode: 0 for mode in modes}
    seconds = {mode: [0.0, 0.0] for mode in modes}
    macs = {"full": 0, "independent_once": 0}
    for i, example in enumerate(by_task["in_context"]):
        references = [render(scene, args.size) for scene in example.inputs]
        row = list(references)
        condition = model.encode_condition(example.instruction, images=references)  # the LoRA changes only the transformer
        shape = run_shape(condition, args.size, args.steps, args.text_guidance, args.image_guidance)
        macs["full"] += run_macs(model.transformer.config, shape)
        macs["independent_once"] += run_macs(model.transformer.config, shape, "condition")
        for mode, (which, cache, independent_condition) in modes.items():
            result, wall, cpu = timed(lambda: which.sample(condition, seed=i, cache_per_n_steps=cache,
                                                           independent_condition=independent_condition, **settings))
            scores[mode] += scene_matches(read_scene(result.images[0]), example.output)
            seconds[mode][0] += wall
            seconds[mode][1] += cpu
            if mode in ("full", "independent_once"):
                row.append(to_pil(result.images[0]))
        samples["in_context"].append(row)
    figures["in_context_accuracy"] = scores["full"] / len(by_task["in_context"])
    figures["in_context_accuracy_reused_joint"] = scores["reused_joint"] / len(by_task["in_context"])
    figures["in_context_seconds"] = {mode: {"wall": w, "cpu": c} for mode, (w, c) in seconds.items()}
    figures["speedup_independent_once_ceiling"] = macs["full"] / macs["independent_once"]  # counted, not run
    if independent is not None:
        figures["in_context_accuracy_independent_once"] = scores["independent_once"] / len(by_task["in_context"])
        figures["speedup_independent_once"] = seconds["full"][1] / seconds["independent_once"][1]
        figures["speedup_independent_once_wall"] = seconds["full"][0] / seconds["independent_once"][0]

    reflection, loop, said = reflection_figures(model, by_task, args, settings)
    figures.update(reflection)
    figures["judge"] = args.judge

    shown = args.grid_examples
    rows = [sum((r for r in samples["t2i"][:shown]), [])]
    rows += [sum((r for r in samples["edit"][k:k + 3]), []) for k in range(0, min(shown, len(samples["edit"])), 3)]
    rows += samples["in_context"][: max(1, shown // 3)]
    columns = max(len(row) for row in rows)
    figures["describe_accuracy"], chat = describe_figures(model, by_task["t2i"], args.size,
                                                          row_width(columns - 1, args.size))
    rows += [chat, loop, [text_tile(said, row_width(columns, args.size), args.size)]]
    args.samples_png.parent.mkdir(parents=True, exist_ok=True)
    grid(rows).save(args.samples_png)
    figures["samples_png"] = str(args.samples_png)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=omni_core.DEFAULT_MODEL_DIR)
    parser.add_argument("--independent", type=Path, default=None,
                        help="the independent-condition LoRA (default <model>/loras/independent_condition.safetensors)")
    parser.add_argument("--count", type=int, default=16, help="held-out examples per task")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="image side (the model trained at 64)")
    parser.add_argument("--text-guidance", type=float, default=omni_core.DEFAULT_MODEL_TEXT_GUIDANCE,
                        help="default: the bundled model's, chosen on unseen training-distribution prompts (docs/training.md)")
    parser.add_argument("--image-guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step-cache", choices=STEP_CACHE_CHOICES, default="none")
    parser.add_argument("--judge", default="own",
                        help="who judges the reflection rounds: 'own' (the model's own MLLM), 'measurer' (the pixel "
                             "measurer) or a vision-language model folder (as the Reflect node's judge_model)")
    parser.add_argument("--rounds", type=int, default=3, help="reflection: at most this many rounds")
    parser.add_argument("--seed", type=int, default=0, help="the dataset seed whose held-out split to score")
    parser.add_argument("--grid-examples", type=int, default=6, help="samples per task shown in the grid")
    parser.add_argument("--samples-png", type=Path, default=Path("benchmarks/quality_samples.png"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.independent is None:
        args.independent = args.model / omni_core.INDEPENDENT_CONDITION_LORA
    figures = run(args)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
