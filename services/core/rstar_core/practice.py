"""Seeded arithmetic word problems in five levels, for curriculum practice and held-out checks.

A level-k problem needs exactly k arithmetic operations: an opening sentence sets a quantity
("Sara has 12 apples."), k event sentences each change it by one operation (buying more,
giving away, groups of, selling at a price, sharing equally, keeping a fraction), and a
question asks for the final quantity. Each sentence is drawn from several templates with
random people, things and numbers; every intermediate and final value is a whole number in
[0, 1000] (divisions are exact by construction).

`generate_practice(levels, n_per_level, seed, split)` is deterministic for its arguments.
The "pool" and "heldout" splits come from one stream per (seed, level) and each question
goes to the split chosen by a hash of its normalised text, so the splits never share a
question and a larger `n_per_level` extends a smaller one. Ids look like
``practice-L3-pool-00017``; `practice_level(id)` reads the level back.

Each problem carries a reference solution in the step format of `steps` (one code step per
sentence, a print step, the answer step; no outputs). It exists for tests and sanity checks
only: the self-evolution search must find its own solutions.

Non-goals: no fractions, negative numbers or units other than counts and dollars; no
problems with several people's quantities interacting; no claim that the wording is as
varied as human-written problems.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .types import Problem

__all__ = ["LEVELS", "SPLITS", "PracticeProblem", "generate_practice", "practice_level"]

LEVELS = (1, 2, 3, 4, 5)
SPLITS = ("pool", "heldout")
MAX_VALUE = 1000
# Draws allowed per wanted problem before giving up (collisions are rare; this is a guard).
_MAX_DRAWS_PER_PROBLEM = 50

_ID = re.compile(r"^practice-L(\d+)-(?:pool|heldout)-\d+$")


@dataclass(frozen=True)
class PracticeProblem:
    problem: Problem
    level: int
    # Reference solution in the step format, without outputs: for tests only.
    steps: tuple[str, ...]
    # Names of the templates used: the opening, one per operation, the question.
    templates: tuple[str, ...]


def practice_level(problem_id: str | None) -> int | None:
    """The level encoded in a practice problem id, None for any other id."""
    match = _ID.match(problem_id or "")
    return int(match.group(1)) if match else None


def generate_practice(levels: Sequence[int], n_per_level: int, seed: int, split: str) -> list[PracticeProblem]:
    """`n_per_level` distinct problems of each level in `levels` (in that order) for `split`."""
    _check_arguments(levels, n_per_level, split)
    out: list[PracticeProblem] = []
    for level in levels:
        out.extend(_generate_level(level, n_per_level, seed, split))
    return out


def _check_arguments(levels: Sequence[int], n_per_level: int, split: str) -> None:
    if not levels:
        raise ValueError("levels must not be empty")
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"unknown level(s) {unknown}; levels are {LEVELS[0]}..{LEVELS[-1]}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat, got {list(levels)}")
    if isinstance(n_per_level, bool) or not isinstance(n_per_level, int) or n_per_level < 1:
        raise ValueError(f"n_per_level must be an integer >= 1, got {n_per_level!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _generate_level(level: int, n: int, seed: int, split: str) -> list[PracticeProblem]:
    # One stream for both splits; the split of a question is a function of its text.
    rng = random.Random(f"rstar-practice:{seed}:{level}")
    seen: set[str] = set()
    out: list[PracticeProblem] = []
    for _ in range(n * _MAX_DRAWS_PER_PROBLEM):
        question, answer, steps, templates = _draw(rng, level)
        key = _normalise(question)
        if key in seen:
            continue
        seen.add(key)
        if _split_of(key) != split:
            continue
        problem = Problem(question, answer, id=f"practice-L{level}-{split}-{len(out):05d}")
        out.append(PracticeProblem(problem, level, steps, templates))
        if len(out) == n:
            return out
    raise ValueError(f"could not draw {n} distinct level-{level} problems for split {split!r}")


def _normalise(question: str) -> str:
    return " ".join(question.lower().split())


def _split_of(normalised_question: str) -> str:
    digest = hashlib.sha256(normalised_question.encode("utf-8")).digest()
    return SPLITS[digest[0] % len(SPLITS)]


# --- the story: cast, state, templates ---------------------------------------------------

_PEOPLE = (
    ("Sara", "she"), ("Tom", "he"), ("Maya", "she"), ("Leo", "he"), ("Nina", "she"), ("Omar", "he"),
    ("Lucy", "she"), ("Ben", "he"), ("Ava", "she"), ("Sam", "he"), ("Priya", "she"), ("Diego", "he"),
)
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "crayons", "stamps", "shells",
          "cards", "beads", "oranges", "erasers")
_CONTAINERS = ("boxes", "bags", "jars", "packs", "baskets", "trays")
_THINGS = ("a book", "lunch", "a toy", "a movie ticket", "a new hat", "school supplies")
_CHORES = ("walking dogs", "washing cars", "mowing lawns", "babysitting", "selling lemonade")
_FRACTIONS = {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}


@dataclass(frozen=True)
class _Cast:
    """The people and things of one problem (fixed for the whole story)."""

    name: str
    pron: str
    friend: str
    item: str
    container: str
    thing: str
    chore: str

    def fields(self) -> dict[str, str]:
        his = self.pron == "he"
        return {
            "Name": self.name, "pron": self.pron, "Pron": self.pron.capitalize(),
            "poss": "his" if his else "her", "Poss": "His" if his else "Her",
            "obj": "him" if his else "her", "Friend": self.friend, "friend": self.friend,
            "item": self.item, "container": self.container, "thing": self.thing, "chore": self.chore,
        }


@dataclass(frozen=True)
class _State:
    """The quantity the story is about: `value` of `noun`, held in variable `var`."""

    value: int
    # "item", "container" (a count of the cast's item or container) or "money" (dollars).
    kind: str
    # Containers that were filled by packing: "each holds n items" would contradict it.
    packed: bool = False

    def noun(self, cast: _Cast) -> str:
        return {"item": cast.item, "container": cast.container, "money": "dollars"}[self.kind]

    def var(self, cast: _Cast) -> str:
        return "money" if self.kind == "money" else self.noun(cast)


_COUNT = ("item", "container")

# (template name, kinds it applies to, text)
_OPENINGS = (
    ("has", "item", "{Name} has {a} {item}."),
    ("collected", "item", "{Name} collected {a} {item} last week."),
    ("starts", "item", "{Name} starts the day with {a} {item}."),
    ("jar", "item", "{Name} keeps {a} {item} in a jar."),
    ("containers", "container", "{Name} has {a} {container} of {item}."),
    ("money", "money", "{Name} has ${a}."),
    ("saved", "money", "{Name} has saved ${a}."),
    ("birthday", "money", "{Name} gets ${a} for {poss} birthday."),
)

_QUESTIONS = {
    "item": (
        ("now", "How many {noun} does {Name} have now?"),
        ("end_up", "How many {noun} does {Name} end up with?"),
        ("at_end", "How many {noun} does {Name} have at the end?"),
    ),
    "money": (
        ("money_now", "How much money does {Name} have now, in dollars?"),
        ("dollars_end", "How many dollars does {Name} have at the end?"),
    ),
}
_QUESTIONS["container"] = _QUESTIONS["item"]

# A number chooser gets (rng, current value) and returns the event's number, or None when
# the event cannot apply with whole numbers within MAX_VALUE.
Chooser = Callable[[random.Random, int], "int | None"]


def _add(low: int, high: int) -> Chooser:
    def choose(rng: random.Random, value: int) -> int | None:
        top = min(high, MAX_VALUE - value)
        return rng.randint(low, top) if top >= low else None
    return choose


def _subtract(rng: random.Random, value: int) -> int | None:
    # Leave at least one: "how many are left" with none left reads like a trick question.
    return rng.randint(2, min(value - 1, 60)) if value >= 3 else None


def _times(low: int, high: int) -> Chooser:
    def choose(rng: random.Random, value: int) -> int | None:
        options = [k for k in range(low, high + 1) if value * k <= MAX_VALUE]
        return rng.choice(options) if options and value > 0 else None
    return choose


def _divisor(options: Sequence[int]) -> Chooser:
    def choose(rng: random.Random, value: int) -> int | None:
        fitting = [k for k in options if value % k == 0 and value // k > 0]
        return rng.choice(fitting) if fitting else None
    return choose


@dataclass(frozen=True)
class _Event:
    """One sentence that changes the state by one operation."""

    name: str
    kinds: tuple[str, ...]
    op: str  # "+", "-", "*" or "//"
    text: str
    choose: Chooser
    # The state kind after the event (None: unchanged).
    becomes: str | None = None
    # Only for containers from the opening (not ones filled by packing).
    unpacked_only: bool = False


_EVENTS = (
    _Event("buy_more", _COUNT, "+", "{Pron} buys {n} more {noun}.", _add(2, 30)),
    _Event("gift", _COUNT, "+", "{Friend} gives {obj} {n} more {noun}.", _add(2, 30)),
    _Event("find", _COUNT, "+", "{Pron} finds {n} more {noun} in {poss} room.", _add(2, 30)),
    _Event("collect", _COUNT, "+", "The next day, {pron} collects another {n} {noun}.", _add(2, 30)),
    _Event("win", _COUNT, "+", "{Pron} wins {n} {noun} at a school fair.", _add(2, 30)),
    _Event("give_away", _COUNT, "-", "{Pron} gives {n} {noun} to {friend}.", _subtract),
    _Event("lose", _COUNT, "-", "{Pron} loses {n} {noun} on the way home.", _subtract),
    _Event("sell_some", _COUNT, "-", "{Pron} sells {n} of the {noun}.", _subtract),
    _Event("use", _COUNT, "-", "{Pron} uses {n} {noun} for a school project.", _subtract),
    _Event("damaged", _COUNT, "-", "{n} of the {noun} get damaged, and {pron} throws them away.", _subtract),
    _Event("grows", _COUNT, "*", "A month later, {poss} collection of {noun} is {n} times as big.", _times(2, 5)),
    _Event("groups_of", ("container",), "*", "Each of the {noun} holds {n} {item}.", _times(2, 12),
           becomes="item", unpacked_only=True),
    _Event("sell_all", _COUNT, "*", "{Pron} sells all of the {noun} for ${n} each.", _times(2, 12),
           becomes="money"),
    _Event("shop_pays", _COUNT, "*", "A shop pays {obj} ${n} for each of the {noun}, and {pron} sells them all.",
           _times(2, 12), becomes="money"),
    _Event("pack", ("item",), "//", "{Pron} packs all the {noun} into {container} of {n}.",
           _divisor(range(2, 13)), becomes="container"),
    _Event("piles", _COUNT, "//", "{Pron} splits the {noun} into {n} equal piles and keeps one pile.",
           _divisor(range(2, 11))),
    _Event("keep_fraction", _COUNT, "//", "{Pron} keeps {fraction} of the {noun} and gives the rest to {friend}.",
           _divisor(tuple(_FRACTIONS))),
    _Event("earn", ("money",), "+", "{Pron} earns ${n} by {chore}.", _add(2, 50)),
    _Event("gift_money", ("money",), "+", "{Friend} gives {obj} ${n}.", _add(2, 50)),
    _Event("find_money", ("money",), "+", "{Pron} finds ${n} in an old coat.", _add(2, 50)),
    _Event("spend", ("money",), "-", "{Pron} spends ${n} on {thing}.", _subtract),
    _Event("pay", ("money",), "-", "{Pron} pays ${n} for {thing}.", _subtract),
    _Event("lend", ("money",), "-", "{Pron} lends ${n} to {friend}.", _subtract),
    _Event("savings_grow", ("money",), "*", "By the end of the year, {poss} savings are {n} times as large.",
           _times(2, 4)),
    _Event("buy_items", ("money",), "//", "{Pron} spends all of it on {item} that cost ${n} each.",
           _divisor(range(2, 13)), becomes="item"),
    _Event("keep_money_fraction", ("money",), "//",
           "{Pron} keeps {fraction} of the money and puts the rest in the bank.", _divisor(tuple(_FRACTIONS))),
)

_OPENING_VALUES = {"item": (6, 60), "container": (2, 12), "money": (10, 120)}


def _draw(rng: random.Random, level: int) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    """One random problem: (question, answer, reference steps, template names)."""
    (name, pron), friend = _two_people(rng)
    cast = _Cast(name, pron, friend, rng.choice(_ITEMS), rng.choice(_CONTAINERS), rng.choice(_THINGS),
                 rng.choice(_CHORES))
    fields = cast.fields()
    opening_name, kind, opening = rng.choice(_OPENINGS)
    state = _State(rng.randint(*_OPENING_VALUES[kind]), kind)
    sentences = [opening.format(a=state.value, **fields)]
    steps = [_code_step(sentences[0], f"{state.var(cast)} = {state.value}")]
    templates = [opening_name]
    for _ in range(level):
        event, n = _pick_event(rng, state)
        new_state = _apply(event, state, n)
        sentence = event.text.format(n=n, noun=state.noun(cast), fraction=_FRACTIONS.get(n, ""), **fields)
        sentences.append(sentence)
        steps.append(_code_step(sentence, f"{new_state.var(cast)} = {state.var(cast)} {event.op} {n}"))
        templates.append(event.name)
        state = new_state
    question_name, question = rng.choice(_QUESTIONS[state.kind])
    sentences.append(question.format(noun=state.noun(cast), **fields))
    templates.append(question_name)
    steps.append(_code_step("Print the answer.", f"print({state.var(cast)})"))
    steps.append(f"The answer is \\boxed{{{state.value}}}.")
    return " ".join(sentences), str(state.value), tuple(steps), tuple(templates)


def _two_people(rng: random.Random) -> tuple[tuple[str, str], str]:
    main, other = rng.sample(_PEOPLE, 2)
    return main, other[0]


def _pick_event(rng: random.Random, state: _State) -> tuple[_Event, int]:
    """A random event that applies to `state`, with its number (adding always applies)."""
    candidates = [e for e in _EVENTS if state.kind in e.kinds and not (e.unpacked_only and state.packed)]
    rng.shuffle(candidates)
    for event in candidates:
        n = event.choose(rng, state.value)
        if n is not None:
            return event, n
    raise AssertionError(f"no event applies to {state}")  # unreachable: adding fits below MAX_VALUE


def _apply(event: _Event, state: _State, n: int) -> _State:
    value = {"+": state.value + n, "-": state.value - n, "*": state.value * n, "//": state.value // n}[event.op]
    packed = event.name == "pack" or (state.packed and event.becomes is None)
    return replace(state, value=value, kind=event.becomes or state.kind, packed=packed)


def _code_step(thought: str, code: str) -> str:
    return f"# {thought}\n{code}"
