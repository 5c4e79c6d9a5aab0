"""Final-answer extraction and equivalence checking for math problems.

Purpose
    Turn a model completion into a final answer (`extract_boxed`, `extract_answer`) and
    decide whether it is equivalent to a ground truth (`answers_match`, `grade`). The
    search uses this for terminal rewards, the evaluators for accuracy.

How `answers_match` decides, cheapest first
    1. exact match of normalised strings (spacing, ``\\left``/``\\right``, ``$``, ``%``,
       degrees, ``\\text{}`` wrappers, ``\\dfrac`` -> ``\\frac``, trailing period);
    2. if both sides are plain numbers (``1,000``, ``5.00``, ``3/4``, ``\\frac{3}{4}``,
       ``.5``): exact rational comparison when both are integers, otherwise relative
       tolerance 1e-4. The answer is final here (no further check);
    3. otherwise math-verify (symbolic: radicals, intervals, sets, tuples, ``x=3`` vs
       ``3`` ...), run in a small pool of verifier subprocesses. sympy can hold the GIL
       for minutes inside one C call (e.g. ``9^{9^{9}}``), so neither a thread nor
       math-verify's own ``signal.alarm`` can bound it; a subprocess can be killed.
       A comparison that exceeds ``timeout_s`` is killed and counts as "no match".
       Waiting for a free verifier while all are busy is not counted against
       ``timeout_s`` (each busy verifier is itself bounded), so the result does not
       depend on load.

All functions are safe to call concurrently from any thread. This process never
imports math-verify or sympy; only the verifier subprocesses do.

Non-goals
    No answer-format policing (a correct answer in an unusual format may be graded
    wrong), no multiple-choice letter mapping, no unit conversion, no grading of proofs
    or of intermediate steps.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

__all__ = ["answers_match", "extract_answer", "extract_boxed", "grade"]

logger = logging.getLogger(__name__)

GroundTruth = str | int | float | list

_REL_TOL = Fraction(1, 10_000)
# Time a fresh verifier subprocess may take to start and import math-verify.
_STARTUP_TIMEOUT_S = 30.0
_POOL_SIZE = max(2, min(4, os.cpu_count() or 1))

# --- extraction --------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\b\s*")
_UNBRACED_BOX_ARG = re.compile(r"[^\s$]+")  # \boxed 5
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf)\s*\{")
_ANSWER_MARKER = re.compile(r"####|\banswer\s*(?:is\b|:)\s*:?", re.IGNORECASE)
_MATH_SPAN = re.compile(r"(?<!\\)\$\$?(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]")
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)")
_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_DOLLAR = re.compile(r"\\?\$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the brace closing the one at `open_index`; escaped braces are skipped."""
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _strip_text_wrapper(content: str) -> str:
    match = _TEXT_COMMAND.match(content)
    if match and _matching_brace(content, match.end() - 1) == len(content) - 1:
        return content[match.end() : -1].strip()
    return content


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in `text`.

    Nested braces are matched; a box whose braces never close (truncated output) or
    that is empty is skipped in favour of an earlier one. A single ``\\text{...}``
    around the whole content is removed. None if there is no usable box.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        start = match.end()
        if text.startswith("{", start):
            end = _matching_brace(text, start)
            if end is None:
                continue
            content = text[start + 1 : end].strip()
        else:
            argument = _UNBRACED_BOX_ARG.match(text, start)
            content = argument.group() if argument else ""
        if content:
            return _strip_text_wrapper(content)
    return None


def _strip_thousands(number: str) -> str:
    return number.replace(",", "") if _THOUSANDS.fullmatch(number) else number


def _answer_from_span(span: str) -> str | None:
    """The answer in the text following an answer marker ("The answer is ...")."""
    math = _MATH_SPAN.search(span)
    if math:
        expression = next(group for group in math.groups() if group is not None)
    else:
        expression = _SENTENCE_END.split(span, maxsplit=1)[0]
        number = _NUMBER.search(expression)
        if number and _PROSE_WORD.search(expression):  # "18 apples", "5 because ..."
            expression = number.group()
    expression = _DOLLAR.sub("", expression).strip(" *").rstrip(".").strip()
    return _strip_thousands(expression) or None


def extract_answer(text: str) -> str | None:
    """Lenient final-answer extraction for small models.

    A boxed answer wins. Otherwise the text after the last "The answer is",
    "answer:" or "####" is used: its first ``$...$`` span if any, else the rest of
    the sentence, reduced to its first number when it is prose ("18 apples").
    ``$``, a trailing period and thousands separators are removed. None if nothing
    is found.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    markers = list(_ANSWER_MARKER.finditer(text))
    if not markers:
        return None
    line = text[markers[-1].end() :].lstrip().split("\n", 1)[0]
    return _answer_from_span(line)


# --- cheap comparisons ---------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_NOISE = re.compile(
    r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[,;:! ]|~|\^\{?\\circ\}?|\\?\$|\\?%|\s+"
)
# Digits only (no "_": Fraction would read "52_8", a base-8 answer, as 528) and a
# bounded exponent so that Fraction never builds a huge integer.
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+/\d+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?)")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_DOLLAR_DELIMITER = re.compile(r"(?<!\\)\$")  # math delimiters, not "\$" (currency)


def _normalize(answer: str) -> str:
    answer = _TEXT_WRAPPER.sub(r"\1", answer)
    answer = answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    answer = answer.replace("{,}", ",")
    return _NOISE.sub("", answer).rstrip(".")


def _to_number(normalized: str) -> Fraction | None:
    """Exact value of a plain number (``1,000``, ``-.5``, ``3/4``, ``\\frac{3}{4}``)."""
    normalized = _strip_thousands(normalized)
    fraction = _LATEX_FRACTION.fullmatch(normalized)
    if fraction:
        numerator, denominator = _to_number(fraction[2]), _to_number(fraction[3])
        if numerator is None or not denominator:
            return None
        value = numerator / denominator
        return -value if fraction[1] else value
    if not _PLAIN_NUMBER.fullmatch(normalized):
        return None
    try:
        return Fraction(normalized)
    except (ValueError, ZeroDivisionError):  # "1/0", more digits than int() accepts
        return None


def _numbers_match(a: Fraction, b: Fraction) -> bool:
    # Integers must agree exactly: 13535 and 13536 are within 1e-4 of each other.
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b))


# --- math-verify in subprocesses -----------------------------------------------------

# -P: do not put the caller's working directory on the verifier's sys.path.
_WORKER_COMMAND = [
    sys.executable,
    "-P",
    "-c",
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
    "from rstar_core.grading import _serve_verifier; _serve_verifier()",
]


class _VerifierError(RuntimeError):
    """A verifier subprocess failed to start or died."""


def _serve_verifier() -> None:
    """Main loop of a verifier subprocess.

    Reads JSON ``[gold, predicted]`` lines from stdin and answers each with a ``1`` or
    ``0`` line; ``ready`` is sent once math-verify is imported. Exits at end of input.
    """
    replies = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the replies
    # Its timeouts are disabled on purpose (the parent kills us); silence the warning.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        gold, predicted = json.loads(line)
        equal = verify(
            parse(f"\\boxed{{{gold}}}", parsing_timeout=None),
            parse(f"\\boxed{{{predicted}}}", parsing_timeout=None),
            timeout_seconds=None,
        )
        replies.write("1\n" if equal else "0\n")
        replies.flush()


class _Worker:
    """One verifier subprocess; used by one thread at a time."""

    def __init__(self) -> None:
        # A new session keeps a terminal's Ctrl-C away from the verifier; it still exits
        # at end of input when this process goes away.
        self._process = subprocess.Popen(
            _WORKER_COMMAND,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self._poller = select.poll()
        self._poller.register(self._process.stdout, select.POLLIN)
        self._ready = False

    def verify(self, gold: str, predicted: str, timeout_s: float) -> bool:
        """Raises TimeoutError past `timeout_s` (the worker is then unusable)."""
        if not self._ready:
            if self._read_line(_STARTUP_TIMEOUT_S) != b"ready":
                raise _VerifierError("verifier subprocess did not start")
            self._ready = True
        try:
            self._process.stdin.write(json.dumps([gold, predicted]).encode() + b"\n")
            self._process.stdin.flush()
        except BrokenPipeError as exc:
            raise _VerifierError("verifier subprocess died") from exc
        reply = self._read_line(timeout_s)
        if reply is None:
            raise TimeoutError(f"math-verify took longer than {timeout_s} s")
        if reply not in (b"0", b"1"):
            raise _VerifierError("verifier subprocess died")
        return reply == b"1"

    def _read_line(self, timeout_s: float) -> bytes | None:
        """One reply line, b"" if the subprocess died, None on timeout."""
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        return self._process.stdout.readline().strip()

    def alive(self) -> bool:
        return self._process.poll() is None

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()
        with contextlib.suppress(OSError):  # unflushed input to a dead process
            self._process.stdin.close()
        self._process.stdout.close()


class _VerifierPool:
    """Up to `size` verifier subprocesses, started on demand and reused."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._changed = threading.Condition()

    def verify(self, gold: str, predicted: str, timeout_s: float) -> bool:
        worker = self._checkout()
        try:
            equal = worker.verify(gold, predicted, timeout_s)
        except BaseException:
            self._discard(worker)
            raise
        with self._changed:
            self._idle.append(worker)
            self._changed.notify()
        return equal

    def close(self) -> None:
        with self._changed:
            workers = list(self._live)
            self._live.clear()
            self._idle.clear()
            self._changed.notify_all()
        for worker in workers:
            worker.kill()

    def _checkout(self) -> _Worker:
        with self._changed:
            while True:
                while not self._idle and len(self._live) >= self._size:
                    self._changed.wait()
                if not self._idle:
                    worker = _Worker()
                    self._live.add(worker)
                    return worker
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                # Killed while idle (OOM killer, ...): replace it rather than fail a call.
                self._live.discard(worker)
                worker.kill()

    def _discard(self, worker: _Worker) -> None:
        with self._changed:
            self._live.discard(worker)
            self._changed.notify()
        worker.kill()


_pool = _VerifierPool(_POOL_SIZE)
atexit.register(lambda: _pool.close())  # late-bound: `_pool` is replaced after a fork


def _forget_parent_pool() -> None:
    # A forked child must not talk to its parent's verifiers (nor wait on its locks).
    global _pool
    _pool = _VerifierPool(_POOL_SIZE)


os.register_at_fork(after_in_child=_forget_parent_pool)


@functools.lru_cache(maxsize=8192)
def _math_verify_equal(gold: str, predicted: str, timeout_s: float) -> bool:
    """Cached math-verify verdict; timeouts and crashes raise and so are not cached."""
    return _pool.verify(gold, predicted, timeout_s)


# --- public comparison API -----------------------------------------------------------


def answers_match(
    predicted: str | None, ground_truth: GroundTruth, *, timeout_s: float = 2.0
) -> bool:
    """Whether `predicted` is equivalent to `ground_truth` (any element, for a list).

    See the module docstring for the order of checks. At most `timeout_s` of
    math-verify work per ground-truth element; a comparison that runs longer, or
    whose verifier dies, counts as no match.
    """
    if predicted is None:
        return False
    if isinstance(ground_truth, list):
        return any(answers_match(predicted, g, timeout_s=timeout_s) for g in ground_truth)
    gold = str(ground_truth)
    normalized_predicted, normalized_gold = _normalize(predicted), _normalize(gold)
    if not normalized_predicted or not normalized_gold:
        return False
    if normalized_predicted == normalized_gold:
        return True
    predicted_value, gold_value = _to_number(normalized_predicted), _to_number(normalized_gold)
    if predicted_value is not None and gold_value is not None:
        return _numbers_match(predicted_value, gold_value)
    try:
        return _math_verify_equal(
            _DOLLAR_DELIMITER.sub("", gold).strip(),
            _DOLLAR_DELIMITER.sub("", predicted).strip(),
            timeout_s,
        )
    except TimeoutError:
        logger.debug(
            "math-verify timed out after %s s: %.200r vs %.200r", timeout_s, predicted, gold
        )
    except _VerifierError:
        logger.warning(
            "math-verify subprocess failed: %.200r vs %.200r", predicted, gold, exc_info=True
        )
    return False


def grade(
    completion_text: str, ground_truth: GroundTruth, *, timeout_s: float = 2.0
) -> tuple[str | None, bool]:
    """Extract the final answer from a completion and check it: (answer, is_correct)."""
    answer = extract_answer(completion_text)
    return answer, answers_match(answer, ground_truth, timeout_s=timeout_s)
