"""Round 0: GSM8K worked solutions turned into verified trajectories of our step format.

GSM8K solutions mark each calculation with a calculator annotation::

    Natalia sold 48/2 = <<48/2=24>>24 clips in May.
    Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.
    #### 72

`convert_gsm8k` makes one code step per annotated line: the sentence without its annotations
as the single ``# `` comment line (the step stop string is ``\\n#``, so a step has exactly one
thought line), then one assignment per annotation to a readable variable named after the
words next to the result (``clips_may = 48 / 2``). A number that equals exactly one earlier
result, and appears nowhere in the question, is replaced by that result's variable
(``clips_april = 48 + clips_may``); the values are unchanged. Then comes the print step
(``# Print the answer.`` and ``print(x)``, or ``print(round(x))`` when ``x`` is a float with an
integer value, so that ``24.0`` prints as ``24``) and the answer step
``The answer is \\boxed{N}.`` with the ``#### N`` value.

Lines without an annotation: a calculation written out as ``expr = number`` in the text (about
5 % of GSM8K solutions end with an unannotated one such as ``20/4 = $5`` or
``1600 oranges - 640 oranges = 960 oranges``) is treated as an annotation when the expression,
with its unit words dropped, evaluates to the stated number; when the stated number is a
percentage (``8 * 5% = 40%``) the calculation is read in percentage points. Any other line is
prose and is folded into the comment of the next step. Prose after the last calculation is
dropped: it only restates the result, which the print and answer steps state again.

Annotation text is normalised before it becomes code: ``$`` and thousands separators are
removed, ``x``/``×`` become ``*``, ``÷`` ``/``, ``^`` ``**``, dashes ``-``, ``20%`` becomes
``(20 / 100)``, leading zeros are dropped and implied multiplication (``2(3+4)``) is written
out. Only numbers, earlier variables, parentheses and ``+ - * / // % **`` may remain;
anything else, an annotation without ``=`` or with unbalanced ``<<``/``>>``, a division by
zero or a huge power rejects the solution as ``malformed_annotation``.

`verify` runs each converted solution through a `CodeExecutor` the way the search runs a
path (the code of every earlier step, then this one; only new output is appended as
``Output: ...``), grades the printed answer with `answers_match` and keeps the solutions that
reach the ground truth, with counts by outcome for the dataset manifest.

Non-goals: no paraphrasing or rewriting of the thoughts, no repair of solutions whose
arithmetic or final answer is wrong (they are rejected), no other datasets' formats.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import keyword
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from .grading import answers_match
from .ports import CodeExecutor
from .replay import replay_steps
from .steps import STEP_STOP, StepKind, get_format
from .types import Problem

__all__ = ["Conversion", "VerifiedSet", "VerifiedTrajectory", "convert_gsm8k", "verify"]

# Rejection reasons of the conversion (verification adds execution statuses and "wrong_answer").
NO_FINAL_ANSWER = "no_final_answer"
NO_ANNOTATIONS = "no_annotations"
MALFORMED_ANNOTATION = "malformed_annotation"
INVALID_STEP = "invalid_step"
WRONG_ANSWER = "wrong_answer"
_CONVERSION_REASONS = frozenset({NO_FINAL_ANSWER, NO_ANNOTATIONS, MALFORMED_ANNOTATION, INVALID_STEP})

_FORMAT = get_format("sft")


@dataclass(frozen=True)
class Conversion:
    """One GSM8K solution in our step format, or the reason it could not be converted."""

    problem: Problem
    # Code steps, the print step and the answer step, without outputs; None if rejected.
    steps: tuple[str, ...] | None
    # Empty when converted, else one of the reasons above.
    reason: str = ""


@dataclass(frozen=True)
class VerifiedTrajectory:
    """A converted solution that ran and printed the ground truth."""

    problem: Problem
    # The step texts exactly as the search stores them (printed output appended).
    steps: tuple[str, ...]
    # What the print step printed (its last line).
    printed: str

    def to_record(self) -> dict[str, Any]:
        return {"id": self.problem.id, "question": self.problem.question,
                "answer": self.problem.answer, "steps": list(self.steps)}


@dataclass
class VerifiedSet:
    """The kept trajectories and how every input fared."""

    trajectories: list[VerifiedTrajectory]
    # total, converted, ran, correct and rejected (by reason), ready for a manifest.
    counts: dict[str, Any]


# --- conversion ---------------------------------------------------------------------------

_FINAL = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)
_ANNOTATION = re.compile(r"<<(.*?)>>", re.DOTALL)
_QUESTION_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "hundred": 100, "thousand": 1000, "twice": 2, "double": 2, "half": 2, "triple": 3, "thrice": 3,
    "third": 3, "quarter": 4, "dozen": 12,
}
# Percent and minutes per hour: a reused 100 or 60 is far more often the unit than an
# earlier result that happens to have that value.
_COMMON_CONSTANTS = frozenset({60.0, 100.0})


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def convert_gsm8k(question: str, solution: str, id: str | None = None) -> Conversion:
    """Convert one GSM8K worked solution (annotated lines, then ``#### N``)."""
    answer = _final_answer(solution)
    problem = Problem(question, answer, id=id)
    if answer is None:
        return Conversion(problem, None, NO_FINAL_ANSWER)
    body = _FINAL.split(solution, maxsplit=1)[0]
    try:
        steps = _SolutionBuilder(question).build(body.splitlines(), answer)
    except _Rejected as rejected:
        return Conversion(problem, None, rejected.reason)
    return Conversion(problem, steps)


def _final_answer(solution: str) -> str | None:
    matches = _FINAL.findall(solution)
    if not matches:
        return None
    answer = matches[-1].replace(",", "").replace("$", "").strip().rstrip(".")
    return answer or None


class _SolutionBuilder:
    """Builds the steps of one solution, remembering the variables assigned so far."""

    def __init__(self, question: str) -> None:
        # Values that may stand for a given rather than an earlier result: never substituted.
        self.givens = _COMMON_CONSTANTS | _numbers_in(question)
        # Variable -> value, in assignment order.
        self.values: dict[str, float | int] = {}
        self.steps: list[str] = []

    def build(self, lines: list[str], answer: str) -> tuple[str, ...]:
        pending: list[str] = []  # prose lines waiting for the next step
        for raw in lines:
            line = raw if "<<" in raw or ">>" in raw else _with_implicit_annotations(raw)
            _check_balanced(line)
            annotations = list(_ANNOTATION.finditer(line))
            sentence = _clean_sentence(line)
            if not annotations:
                if sentence:
                    pending.append(sentence)
                continue
            codes = [self._assignment(line, match) for match in annotations]
            thought = " ".join([*pending, sentence]) or "Compute the next value."
            self._add_step(f"# {thought}\n" + "\n".join(codes))
            pending = []
        if not self.values:
            raise _Rejected(NO_ANNOTATIONS)
        last, value = list(self.values.items())[-1]
        shown = f"round({last})" if isinstance(value, float) and _is_whole(value) else last
        self._add_step(f"# Print the answer.\nprint({shown})")
        self.steps.append(f"The answer is \\boxed{{{answer}}}.")
        return tuple(self.steps)

    def _assignment(self, line: str, match: re.Match[str]) -> str:
        expression, sep, _ = match.group(1).partition("=")
        if not sep or not expression.strip():
            raise _Rejected(MALFORMED_ANNOTATION)
        tree = _parse_expression(self._substitute(_normalise_expression(expression)))
        try:
            value = _evaluate(tree.body, self.values)
        except (ArithmeticError, ValueError):
            raise _Rejected(MALFORMED_ANNOTATION) from None
        name = self._new_name(_name_words(line, match))
        self.values[name] = value
        return f"{name} = {ast.unparse(tree)}"

    def _substitute(self, expression: str) -> str:
        """Numbers that are exactly one earlier result (and not a given) become its variable."""
        def replace(number: re.Match[str]) -> str:
            value = float(number.group())
            if value in self.givens:
                return number.group()
            owners = [name for name, known in self.values.items() if known == value]
            return owners[0] if len(owners) == 1 else number.group()
        return _percent_to_division(_NUMBER_TOKEN.sub(replace, expression))

    def _new_name(self, words: list[str]) -> str:
        base = "_".join(words)[:_MAX_NAME_CHARS].strip("_")
        if not base:
            base = f"step_{len(self.values) + 1}"
        elif keyword.iskeyword(base) or base in _BUILTINS:
            base += "_value"
        name, k = base, 2
        while name in self.values:
            name, k = f"{base}_{k}", k + 1
        return name

    def _add_step(self, text: str) -> None:
        parsed = _FORMAT.parse(text, STEP_STOP, "stop")
        if parsed.kind is not StepKind.CODE or parsed.text != text:
            raise _Rejected(INVALID_STEP)
        self.steps.append(text)


def _numbers_in(question: str) -> frozenset[float]:
    digits = {float(n.replace(",", "")) for n in _QUESTION_NUMBER.findall(question)}
    words = {_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", question.lower()) if w in _NUMBER_WORDS}
    return frozenset(digits | words)


def _is_whole(value: float) -> bool:
    return math.isfinite(value) and abs(value - round(value)) < 1e-9 * max(1.0, abs(value))


def _check_balanced(line: str) -> None:
    inner = [m.group(1) for m in _ANNOTATION.finditer(line)]
    outside = _ANNOTATION.sub("", line)
    if "<<" in outside or ">>" in outside or any("<<" in text for text in inner):
        raise _Rejected(MALFORMED_ANNOTATION)


def _clean_sentence(line: str) -> str:
    return " ".join(_ANNOTATION.sub("", line).split())


# --- expressions ----------------------------------------------------------------------------

_NUMBER_TOKEN = re.compile(r"(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)(?![\w.])")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES = re.compile(r"(?<=[\d).\s])\s*[xX×]\s*(?=[\d(.$])")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
_IMPLIED_TIMES = re.compile(r"(?<=[\d)])\s*(?=\()|(?<=\))\s*(?=[\d.])")
_PERCENT = re.compile(r"([\w.]+|\([^()]*\))\s*%")
_SYMBOLS = {"$": "", "×": "*", "÷": "/", "^": "**", "–": "-", "—": "-", "−": "-"}
_POWER_LIMIT = 64
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _normalise_expression(text: str) -> str:
    for symbol, replacement in _SYMBOLS.items():
        text = text.replace(symbol, replacement)
    text = _THOUSANDS.sub("", text)
    text = _TIMES.sub("*", text)
    text = _LEADING_ZEROS.sub("", text)
    return _IMPLIED_TIMES.sub("*", text.strip())


def _percent_to_division(text: str) -> str:
    return _PERCENT.sub(r"(\1 / 100)", text)


def _parse_expression(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        raise _Rejected(MALFORMED_ANNOTATION) from None
    for node in ast.walk(tree.body):
        allowed = (isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, *_BINARY, *_UNARY))
                   or (isinstance(node, ast.Constant) and type(node.value) in (int, float)))
        if not allowed:
            raise _Rejected(MALFORMED_ANNOTATION)
    return tree


def _evaluate(node: ast.expr, values: dict[str, float | int]) -> float | int:
    """The value Python gives the expression (same float arithmetic as the sandbox)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in values:
            raise ValueError(f"unknown name {node.id}")
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, values))
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left, values), _evaluate(node.right, values)
    if isinstance(node.op, ast.Pow) and (abs(right) > _POWER_LIMIT or abs(left) > 10**6):
        raise ValueError("power too large")
    result = _BINARY[type(node.op)](left, right)
    if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
        raise ValueError("not a finite real number")
    return result


# --- calculations written out without an annotation ------------------------------------------

_NUM = r"\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*%?"
# Up to four unit words after a number ("8 trees", "200 oranges/tree", "$5400/week", "$24k",
# "12 months in a year"); never a lone "x", which is a times sign. Words are matched whole
# (the lookahead), so the regex cannot split a word in many ways and backtrack exponentially.
_UNIT_WORD = r"(?:\s*/?(?![xX]\s)[A-Za-z][A-Za-z'/]*(?![A-Za-z'/]))"
_TERM = rf"\(*\s*{_NUM}{_UNIT_WORD}{{0,4}}\s*\)*"
_OP = r"[-+*/xX×÷–—−]"
# Terms are joined by an operator or, before a parenthesis, by implied multiplication: "4(9)".
_JOIN = rf"(?:\s*{_OP}\s*|\s*(?=\())"
# The result is matched in a lookahead, so that it can also start the next calculation
# ("3 - .9 = .7 * 100 = 70").
_IMPLICIT = re.compile(
    rf"(?P<expr>{_TERM}(?:{_JOIN}{_TERM})+)\s*=\s*\$?\s*"
    rf"(?=(?P<result>\d[\d,]*(?:\.\d+)?|\.\d+)(?![\d.]\d))")
_UNIT_WORDS = re.compile(r"/?[A-Za-z][A-Za-z'/]*")


def _with_implicit_annotations(line: str) -> str:
    """`line` with ``expr = n`` calculations marked up as ``<<expr=n>>`` annotations."""
    for match in reversed(list(_IMPLICIT.finditer(line))):
        expression = _implicit_expression(match.group("expr"))
        result = match.group("result").replace(",", "")
        if expression is not None and line.startswith("%", match.end("result")):
            # "8 * 5% = 40%": the calculation is in percentage points.
            expression = expression.replace("%", "")
        if expression is None or not _states_value(expression, float(result)):
            continue
        start = match.start("result")
        line = f"{line[:start]}<<{expression}={result}>>{line[start:]}"
    return line


def _implicit_expression(text: str) -> str | None:
    """The arithmetic of a written-out calculation: unit words and unmatched parentheses dropped."""
    expression = " ".join(_UNIT_WORDS.sub(" ", _TIMES.sub("*", text)).split())
    # Unmatched outer parentheses the regex took from the prose: "(so 3+4 = 7)".
    while expression.count("(") > expression.count(")") and expression.startswith("("):
        expression = expression[1:].lstrip()
    while expression.count(")") > expression.count("(") and expression.endswith(")"):
        expression = expression[:-1].rstrip()
    return expression if expression.count("(") == expression.count(")") else None


def _states_value(expression: str, stated: float) -> bool:
    """Whether the expression evaluates to the stated result (up to cents-level rounding)."""
    try:
        value = _evaluate(_parse_expression(_percent_to_division(_normalise_expression(expression))).body, {})
    except (_Rejected, ArithmeticError, ValueError):
        return False
    return abs(value - stated) <= max(0.01, 1e-4 * abs(stated))


# --- variable names -----------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_CLAUSE_BREAK = re.compile(r"[,;:!?()=]|\.(?!\d)")
_RESULT_PREFIX = re.compile(r"^\s*\$?\s*-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*%?")
# The written-out calculation before an annotation ("... so 5*7=$").
_TRAILING_CALCULATION = re.compile(r"[\d\s$.,+\-*/×÷–—−()%=]*$")
_MAX_NAME_WORDS = 2
_MAX_NAME_CHARS = 30
_BUILTINS = frozenset(dir(builtins))
_STOPWORDS = frozenset("""
    a an the of in on at to for from by with and or but so then than that this these those there here
    is are was were be been being am has have had do does did will would can could should must might
    it its he she they them his her their him we us our you your i me my mine
    each every all some any more less much many what which who whom whose how when where why if as
    also just only now thus therefore hence means mean total altogether left up out into over about
    need needs needed get gets got make makes made find finds found not no yes
    because since while after before until like
""".split())


def _name_words(line: str, match: re.Match[str]) -> list[str]:
    """Content words right after the annotation's result, else the last ones of its clause."""
    after = _ANNOTATION.sub(" ", _RESULT_PREFIX.sub("", line[match.end():], count=1))
    after = _CLAUSE_BREAK.split(after, maxsplit=1)[0]
    words = _content_words(re.split(r"\d", after, maxsplit=1)[0])
    if words:
        return words[:_MAX_NAME_WORDS]
    before = _TRAILING_CALCULATION.sub("", _ANNOTATION.sub(" ", line[:match.start()]))
    before = _CLAUSE_BREAK.split(before)[-1]
    return _content_words(before)[-_MAX_NAME_WORDS:]


def _content_words(text: str) -> list[str]:
    words = (re.sub(r"[^a-z]", "", w.lower()) for w in _WORD.findall(text))
    return [w for w in words if len(w) > 1 and w not in _STOPWORDS]


# --- verification ---------------------------------------------------------------------------

async def verify(conversions: Iterable[Conversion], executor: CodeExecutor, *, concurrency: int = 8,
                 timeout_s: float = 5.0) -> VerifiedSet:
    """Run every converted solution step by step and keep those that print the ground truth."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(conversion: Conversion) -> tuple[VerifiedTrajectory | None, str]:
        async with semaphore:
            return await _verify_one(conversion, executor, timeout_s)

    outcomes = await asyncio.gather(*(bounded(c) for c in conversions))
    kept = [trajectory for trajectory, _ in outcomes if trajectory is not None]
    return VerifiedSet(kept, _counts([reason for _, reason in outcomes]))


async def _verify_one(conversion: Conversion, executor: CodeExecutor,
                      timeout_s: float) -> tuple[VerifiedTrajectory | None, str]:
    """(trajectory, "") when it printed the ground truth, else (None, rejection reason)."""
    if conversion.steps is None:
        return None, conversion.reason
    replay = await replay_steps(conversion.steps, executor, timeout_s=timeout_s)
    if not replay.ok:
        return None, replay.failure
    texts, printed = replay.texts, replay.last_printed_line
    if not await asyncio.to_thread(answers_match, printed, conversion.problem.answer):
        return None, WRONG_ANSWER
    return VerifiedTrajectory(conversion.problem, tuple(texts), printed), ""


def _counts(reasons: list[str]) -> dict[str, Any]:
    rejected = Counter(reason for reason in reasons if reason)
    not_converted = sum(n for reason, n in rejected.items() if reason in _CONVERSION_REASONS)
    failed_run = sum(n for reason, n in rejected.items()
                     if reason not in _CONVERSION_REASONS and reason != WRONG_ANSWER)
    converted = len(reasons) - not_converted
    ran = converted - failed_run
    return {
        "total": len(reasons),
        "converted": converted,
        "ran": ran,
        "correct": ran - rejected[WRONG_ANSWER],
        "rejected": dict(sorted(rejected.items())),
    }
