"""GenEval's six tasks (Ghosh et al. 2023) over CompShapes' shapes and colours: which CompShapes prompts
make each task. `eval.geneval.compshapes` scores them with GenEval's rules.

Every prompt is a CompShapes caption (the model was trained on the grammar), from the test split where
the task can hold something out:
- single_object: "a circle": one object of a shape (the four count-one captions without a colour; no
  combination to hold out, so these are also training captions);
- two_object:    "a red circle and a red triangle": CompShapes' shape prompts (one colour, two
                 shapes: only the shapes tell the objects apart), held-out colour-shape pairs;
- counting:      "three circles", "four blue squares": counts of 3 and 4 of a shape, only the held-out
                 (count, shape) pairs, with and without a colour;
- colors:        "a green circle": one object of a held-out colour-shape pair;
- position:      "a red circle on the left of a blue square": CompShapes' spatial prompts with a
                 directional relation (left, right, top, bottom; not "next to", which GenEval lacks);
- color_attr:    "a red circle and a blue square": CompShapes' colour prompts with two different shapes.
"""
from __future__ import annotations

import random

from gentron.data import compshapes
from gentron.data.compshapes import COUNTING, HELD_OUT_COUNT_SHAPE, PromptSpec, parse_prompt

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")  # GenEval's order
# CompShapes' directional relations in GenEval's words: "A on the left of B" is GenEval's "A left of B"
RELATIONS = {"on the left of": "left of", "on the right of": "right of", "on the top of": "above",
             "on the bottom of": "below"}


def task_of(spec: PromptSpec) -> str | None:
    """The GenEval task a CompShapes prompt belongs to, None if none (texture, relative size, complex,
    motion, "next to", a colour prompt naming one shape twice)."""
    first = spec.phrases[0]
    if spec.category == COUNTING:
        if len(spec.phrases) == 1:
            return "colors" if first.color else "single_object"
        return "counting"
    if spec.category == "shape":
        return "two_object"
    if spec.category == "spatial" and spec.relation in RELATIONS:
        return "position"
    if spec.category == "color" and first.shape != spec.phrases[1].shape:
        return "color_attr"
    return None


def _in_task(spec: PromptSpec, task: str) -> bool:
    if task_of(spec) != task:
        return False
    if task == "counting":  # the counts the training set never shows of that shape
        return (len(spec.phrases), spec.phrases[0].shape) in HELD_OUT_COUNT_SHAPE
    return True


_SOURCES = {"single_object": (COUNTING, "train"), "two_object": ("shape", "test"), "counting": (COUNTING, "test"),
            "colors": (COUNTING, "test"), "position": ("spatial", "test"), "color_attr": ("color", "test")}


def prompts(task: str) -> tuple[str, ...]:
    """Every prompt of a task, in CompShapes' fixed (generation) order."""
    if task not in TASKS:
        raise ValueError(f"unknown GenEval task {task!r}; choose from {TASKS}")
    category, split = _SOURCES[task]
    return tuple(p for p in compshapes.prompts(category, split) if _in_task(parse_prompt(p), task))


def test_prompts(task: str, n: int | None = None) -> list[str]:
    """A fixed, shuffled selection of n prompts of a task (all of them if n is None)."""
    pool = list(prompts(task))
    random.Random(f"compshapes-geneval-{task}").shuffle(pool)
    return pool[:n]
