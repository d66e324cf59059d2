"""Text-only world knowledge (numbers, arithmetic, shape facts, opposites, colour mixing) as Q&A needing no image."""
from __future__ import annotations

import random
from dataclasses import dataclass

from synthetic.text import NUMBER_WORDS

SHAPE_FACTS: tuple[tuple[str, str, str], ...] = (
    ("How many sides does a triangle have?", "3", "A triangle has three sides."),
    ("How many sides does a square have?", "4", "A square has four sides."),
    ("How many sides does a diamond have?", "4", "A diamond has four sides."),
    ("How many points does a star have?", "5", "A star has five points."),
    ("How many arms does a cross have?", "4", "A cross has four arms."),
    ("How many corners does a circle have?", "0", "A circle has zero corners; it is round."),
)
OPPOSITES: tuple[tuple[str, str], ...] = (
    ("left", "right"), ("top", "bottom"), ("above", "below"), ("small", "large"), ("yes", "no"), ("up", "down"),
)
MIXES: tuple[tuple[str, str, str], ...] = (
    ("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple"),
    ("red", "white", "pink"), ("black", "white", "gray"), ("blue", "green", "cyan"),
)
FACT_KINDS: tuple[str, ...] = ("after", "before", "digit", "word", "plus", "minus", "bigger", "shape", "opposite", "mix")


@dataclass(frozen=True)
class Fact:
    """A text-only question with a short answer and a full-sentence answer."""

    kind: str
    question: str
    answer: str
    sentence: str


def sample_fact(rng: random.Random, kind: str | None = None) -> Fact:
    """One fact of `kind` (or a random kind); the answer is computed, not looked up."""
    kind = kind or rng.choice(FACT_KINDS)
    if kind == "after":
        n = rng.randint(0, 19)
        w, a = NUMBER_WORDS[n], NUMBER_WORDS[n + 1]
        return Fact(kind, f"What number comes after {w}?", a, f"The number after {w} is {a}.")
    if kind == "before":
        n = rng.randint(1, 20)
        w, a = NUMBER_WORDS[n], NUMBER_WORDS[n - 1]
        return Fact(kind, f"What number comes before {w}?", a, f"The number before {w} is {a}.")
    if kind == "digit":
        n = rng.randint(0, 20)
        return Fact(kind, f"Write the number {NUMBER_WORDS[n]} with digits.", str(n), f"{NUMBER_WORDS[n].capitalize()} is written {n}.")
    if kind == "word":
        n = rng.randint(0, 20)
        return Fact(kind, f"How do you write {n} in words?", NUMBER_WORDS[n], f"The number {n} is written {NUMBER_WORDS[n]}.")
    if kind == "plus":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return Fact(kind, f"What is {a} plus {b}?", str(a + b), f"{a} plus {b} equals {a + b}.")
    if kind == "minus":
        a = rng.randint(0, 18)
        b = rng.randint(0, min(a, 9))
        return Fact(kind, f"What is {a} minus {b}?", str(a - b), f"{a} minus {b} equals {a - b}.")
    if kind == "bigger":
        a, b = rng.sample(range(0, 21), 2)
        return Fact(kind, f"Which number is bigger, {a} or {b}?", str(max(a, b)), f"{max(a, b)} is bigger than {min(a, b)}.")
    if kind == "shape":
        q, a, s = rng.choice(SHAPE_FACTS)
        return Fact(kind, q, a, s)
    if kind == "opposite":
        pair = rng.choice(OPPOSITES)
        w, a = pair if rng.random() < 0.5 else (pair[1], pair[0])
        return Fact(kind, f"What is the opposite of {w}?", a, f"The opposite of {w} is {a}.")
    if kind == "mix":
        c1, c2, a = rng.choice(MIXES)
        if rng.random() < 0.5:
            c1, c2 = c2, c1
        return Fact(kind, f"What color do you get when you mix {c1} and {c2}?", a, f"Mixing {c1} and {c2} gives {a}.")
    raise ValueError(f"unknown fact kind {kind!r}; known: {', '.join(FACT_KINDS)}")
