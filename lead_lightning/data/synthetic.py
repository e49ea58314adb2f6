"""A generated instruction pool with task families of known difficulty and a planted noisy family.

Nothing is downloaded: a LEAD run on this pool has something real to find. Families differ in how
hard they are for a small LM (copying is learnt fast, multi-digit multiplication slowly), and the
``noisy_add`` family looks like ``add`` but its answers are shuffled across its examples, so its
loss never falls: a good selector learns to stop spending budget on it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence

from lead_lightning.data.records import InstructionRecord

__all__ = ["SYNTHETIC_FAMILIES", "generate_pool"]

_LETTERS = string.ascii_lowercase


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choices(_LETTERS, k=rng.randint(lo, hi)))


def _copy(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 8)
    return f"Copy the word: {w}", w


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 8)
    return f"Reverse the word: {w}", w[::-1]


def _sort_letters(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 4, 9)
    return f"Sort the letters: {w}", "".join(sorted(w))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return f"Add: {a} + {b}", str(a + b)


def _multiply(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 999), rng.randint(10, 99)
    return f"Multiply: {a} * {b}", str(a * b)


SYNTHETIC_FAMILIES: dict[str, tuple[int, Callable[[random.Random], tuple[str, str]]]] = {
    "copy": (0, _copy),
    "reverse": (1, _reverse),
    "sort_letters": (2, _sort_letters),
    "add": (3, _add),
    "multiply": (4, _multiply),
    "noisy_add": (5, _add),
}
"""Family name -> (difficulty rank, 0 = easiest, generator). ``noisy_*`` families get shuffled answers."""


def generate_pool(n: int, seed: int = 0, families: Sequence[str] | None = None) -> list[InstructionRecord]:
    """Generate ``n`` examples spread evenly (in a seeded random order) over the task families.

    Deterministic given ``seed``; each family is one group (its name). Families whose name contains
    ``"noisy"`` keep their prompts but each takes another example's answer (a random cycle over the
    family), so every answer looks plausible and is wrong unless two answers happen to coincide.

    Args:
        n: pool size (>= number of families, so every family is present).
        seed: random seed.
        families: names from :data:`SYNTHETIC_FAMILIES`; default all of them.

    Example:
        >>> pool = generate_pool(12, seed=0)
        >>> len(pool), sorted({r.group for r in pool})[:3]
        (12, ['add', 'copy', 'multiply'])
        >>> generate_pool(12, seed=0) == pool
        True
    """
    names = list(SYNTHETIC_FAMILIES) if families is None else list(families)
    unknown = [f for f in names if f not in SYNTHETIC_FAMILIES]
    if unknown:
        raise ValueError(f"Unknown `families` {unknown}; known: {sorted(SYNTHETIC_FAMILIES)}.")
    if not names:
        raise ValueError("`families` must name at least one family.")
    if n < len(names):
        raise ValueError(f"`n` must be >= the number of families ({len(names)}) so each is present, got {n}.")
    rng = random.Random(seed)
    assignment = [names[i % len(names)] for i in range(n)]
    rng.shuffle(assignment)
    examples = [SYNTHETIC_FAMILIES[f][1](rng) for f in assignment]
    for family in names:
        if "noisy" in family:
            idx = [i for i, f in enumerate(assignment) if f == family]
            rng.shuffle(idx)  # a random cycle: each example takes the next one's answer, never its own
            answers = [examples[i][1] for i in idx[1:] + idx[:1]]
            for i, a in zip(idx, answers, strict=True):
                examples[i] = (examples[i][0], a)
    return [InstructionRecord(p, r, f) for (p, r), f in zip(examples, assignment, strict=True)]
