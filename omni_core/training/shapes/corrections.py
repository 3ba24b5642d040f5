"""Training examples that teach the transformer to follow the reflection loop's corrections.

A round after the first shows the transformer the original images, then its previous result, and the instruction
folded with the judge's fixes (`reflection.fold_correction`). Without such examples the transformer has never seen
that prompt: a judge that caught a mistake changed nothing. A correction example is a dataset example redone the
same way: a wrong result of the kinds the judge is taught to catch (`conversations.wrong_candidate`) as the last
input, the judge's fixes folded in as the loop folds them, and the expected scene as the output. It is an edit in the
training data's terms (images and an instruction in, an image out).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ...reflection import fold_correction
from .conversations import wrong_candidate
from .dataset import Example

CORRECTION_SHARE = 0.15  # of training examples, the share redone as a correction


def correction_of(rng: np.random.Generator, example: Example) -> Example:
    """`example` as a reflection round after a wrong result: inputs then the wrong result, the fixes folded in."""
    wrong, fixes = wrong_candidate(rng, example)
    slot = len(example.inputs) + 1
    instruction = fold_correction(example.instruction, "; ".join(fixes), slot)
    return Example("edit", instruction, (*example.inputs, wrong), example.output)


def with_corrections(items: Iterable[Example], seed: int, share: float = CORRECTION_SHARE) -> Iterator[Example]:
    """`items` with about `share` of them redone as corrections, reproducibly by seed."""
    rng = np.random.default_rng([seed, 11])
    for example in items:
        yield correction_of(rng, example) if rng.random() < share else example
