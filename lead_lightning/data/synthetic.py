"""A generated instruction pool with task families of known difficulty and a planted noisy family.

Nothing is downloaded: a LEAD run on this pool has something real to find. Families differ in how
hard they are for a small LM (copying is learnt fast, multi-digit multiplication slowly), and the
``noisy_add`` family looks like ``add`` but its answers are shuffled across its examples, so its
loss never falls: a good selector learns to stop spending budget on it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Collection, Sequence

from lead_lightning.data.records import InstructionRecord

__all__ = [
    "SYNTHETIC_FAMILIES",
    "generate_family",
    "generate_pool",
    "near_duplicates",
    "perturb_prompt",
    "plant_noise",
]

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


def generate_family(
    family: str, n: int, seed: int = 0, exclude: Collection[str] = ()
) -> list[InstructionRecord]:
    """``n`` clean examples of one family with distinct prompts, none of them in ``exclude``.

    Used to keep splits disjoint: a held-out or pre-training split passes the pool's prompts as
    ``exclude``. ``noisy_*`` families are generated clean here (see :func:`plant_noise`).

    Args:
        family: a name from :data:`SYNTHETIC_FAMILIES`.
        n: number of examples (>= 0).
        seed: random seed.
        exclude: prompts that must not be generated.

    Example:
        >>> a = generate_family("reverse", 3, seed=0)
        >>> [r.group for r in a], a[0].response == a[0].prompt.split(": ")[1][::-1]
        (['reverse', 'reverse', 'reverse'], True)
        >>> b = generate_family("reverse", 50, seed=1, exclude={r.prompt for r in a})
        >>> {r.prompt for r in a} & {r.prompt for r in b}
        set()
    """
    if family not in SYNTHETIC_FAMILIES:
        raise ValueError(f"Unknown family {family!r}; known: {sorted(SYNTHETIC_FAMILIES)}.")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be an int >= 0, got {n!r}.")
    make = SYNTHETIC_FAMILIES[family][1]
    rng = random.Random(f"{family}:{seed}")
    seen: set[str] = set(exclude)
    out: list[InstructionRecord] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"Could not generate {n} distinct `{family}` prompts outside `exclude` ({len(out)} found)."
                " HINT: ask for fewer examples of this family."
            )
        prompt, response = make(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(InstructionRecord(prompt, response, family))
    return out


def plant_noise(
    records: Sequence[InstructionRecord], families: Collection[str], share: float, seed: int = 0
) -> tuple[list[InstructionRecord], list[bool]]:
    """Give a seeded ``share`` of each family in ``families`` another example's answer.

    Inside each family, ``round(share * n_family)`` examples are chosen and their answers rotated
    along a random cycle (each takes the next one's answer, never its own), so every wrong answer
    looks plausible while the clean examples of the family stay learnable.

    Returns:
        The new records (same order and groups) and a flag per record: ``True`` where the answer now
        differs from the original one (two rotated answers that happen to be equal stay clean).

    Example:
        >>> pool = generate_family("add", 8, seed=0) + generate_family("copy", 4, seed=0)
        >>> noisy_pool, noisy = plant_noise(pool, ["add"], 0.5, seed=0)
        >>> sum(noisy), any(noisy[8:])
        (4, False)
        >>> [r.prompt for r in noisy_pool] == [r.prompt for r in pool]
        True
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"`share` must be in [0, 1], got {share!r}.")
    groups = {r.group for r in records}
    unknown = sorted(set(families) - groups)
    if unknown:
        raise ValueError(f"Noisy families {unknown} are not in the records (families: {sorted(groups)}).")
    rng = random.Random(seed)
    out = list(records)
    for family in sorted(families):
        idx = [i for i, r in enumerate(records) if r.group == family]
        chosen = rng.sample(idx, round(share * len(idx)))
        if len(chosen) < 2:
            continue  # one example cannot take another's answer
        answers = [records[i].response for i in chosen[1:] + chosen[:1]]
        for i, a in zip(chosen, answers, strict=True):
            out[i] = InstructionRecord(records[i].prompt, a, records[i].group, records[i].messages)
    return out, [a.response != b.response for a, b in zip(out, records, strict=True)]


def perturb_prompt(prompt: str, rng: random.Random) -> str:
    """A trivially different prompt with the same meaning: case of the first letter, a doubled
    space, or a trailing space.

    Example:
        >>> p = perturb_prompt("Copy the word: abc", random.Random(0))
        >>> p != "Copy the word: abc" and p.split()[-1] == "abc"
        True
    """
    kind = rng.randrange(3)
    if kind == 0 and prompt[:1].isalpha():
        first = prompt[0].lower() if prompt[0].isupper() else prompt[0].upper()
        return first + prompt[1:]
    if kind <= 1 and " " in prompt:
        spaces = [i for i, c in enumerate(prompt) if c == " "]
        i = rng.choice(spaces)
        return prompt[:i] + " " + prompt[i:]
    return prompt + " "


def near_duplicates(
    records: Sequence[InstructionRecord], n: int, seed: int = 0
) -> tuple[list[InstructionRecord], list[int]]:
    """``n`` near-duplicates of distinct, seeded picks of ``records``: same response and group, a
    trivially perturbed prompt (:func:`perturb_prompt`).

    Returns:
        The copies and, for each, the index of the record it copies.

    Example:
        >>> pool = generate_family("copy", 10, seed=0)
        >>> dups, src = near_duplicates(pool, 2, seed=0)
        >>> [d.response == pool[i].response and d.prompt != pool[i].prompt for d, i in zip(dups, src)]
        [True, True]
    """
    if not isinstance(n, int) or not 0 <= n <= len(records):
        raise ValueError(f"`n` must be an int in [0, {len(records)}], got {n!r}.")
    rng = random.Random(seed)
    sources = sorted(rng.sample(range(len(records)), n))
    copies = [
        InstructionRecord(perturb_prompt(records[i].prompt, rng), records[i].response, records[i].group)
        for i in sources
    ]
    return copies, sources
