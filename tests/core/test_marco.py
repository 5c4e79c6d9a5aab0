"""Marco-o1 search without a reward model: token confidence, mini-steps, reflection (issue #16 A)."""

import asyncio
import math
from pathlib import Path

import pytest

from fakes import InlineExecutor
from rstar_core.confidence import mean_token_confidence, path_confidence, token_confidence
from rstar_core.config import SearchConfig, load_config
from rstar_core.mcts import MCTS
from rstar_core.ports import Completion, GenerationRequest
from rstar_core.steps import OUTPUT_STOP, REFLECTION_PROMPT, STEP_STOP, StepKind, get_format, split_pending
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "configs"
QUESTION = "Sam has 3 apples and gets 4 more. How many apples?"
BASE = get_format("base")
END = BASE.end_of_turn


# ---------------------------------------------------------------------- confidence


def test_confidence_is_softmax_of_the_chosen_token_over_the_top_k():
    top = [math.log(0.5), math.log(0.2), math.log(0.1), math.log(0.05), math.log(0.05)]
    assert token_confidence(math.log(0.5), top) == pytest.approx(0.5 / 0.9)
    assert token_confidence(math.log(0.2), top) == pytest.approx(0.2 / 0.9)
    # All the top-k mass on the chosen token: full confidence.
    assert token_confidence(0.0, [0.0, -math.inf, -math.inf]) == 1.0


def test_confidence_of_a_token_outside_the_top_k_counts_against_the_top_k_alone():
    top = [math.log(0.3)] * 5
    assert token_confidence(math.log(0.01), top) == pytest.approx(0.01 / 1.5)
    assert token_confidence(-math.inf, top) == 0.0


def test_confidence_is_stable_for_very_unlikely_positions():
    # exp(-1000) underflows; the ratio must not.
    assert token_confidence(-1000.0, [-1000.0, -1000.0 - math.log(3)]) == pytest.approx(0.75)


@pytest.mark.parametrize("chosen,top,match", [(-1.0, [], "at least one"), (math.nan, [-1.0], "NaN"),
                                              (-1.0, [-math.inf], "all -inf")])
def test_confidence_rejects_inputs_without_meaning(chosen, top, match):
    with pytest.raises(ValueError, match=match):
        token_confidence(chosen, top)


def test_mean_confidence_over_positions_and_over_a_path():
    positions = [(0.0, [0.0]), (math.log(0.25), [math.log(0.5), math.log(0.25), math.log(0.25)])]
    assert mean_token_confidence(positions) == pytest.approx((1.0 + 0.25) / 2)
    assert mean_token_confidence([]) is None
    # Per-node means weighted by their tokens = the mean over the path's tokens.
    assert path_confidence([(1.0, 1), (0.5, 3), (None, 7), (0.9, 0)]) == pytest.approx(2.5 / 4)
    assert path_confidence([(None, 3)]) is None


# ---------------------------------------------------------------------- mini-step cutting


def test_a_chunk_cut_by_the_token_budget_is_partial_and_kept_verbatim():
    step = BASE.parse_mini_step("", "# Sam has 3 apples.\nx = ", None, "length", room_left=True)
    assert step.kind is StepKind.PARTIAL and step.text == "# Sam has 3 apples.\nx = "


def test_the_chunk_that_completes_a_step_gives_the_whole_step():
    step = BASE.parse_mini_step("# Add 4.\nprint(x", " + 4)", OUTPUT_STOP, "stop", room_left=True)
    assert step.kind is StepKind.CODE and step.code == "# Add 4.\nprint(x + 4)" and step.wants_output
    # The stop string can fire at once: the pending text was already the whole step.
    step = BASE.parse_mini_step("# Sam has 3 apples.\nx = 3", "", STEP_STOP, "stop", room_left=True)
    assert step.kind is StepKind.CODE and step.text == "# Sam has 3 apples.\nx = 3"


def test_a_stop_string_split_between_two_chunks_ends_the_step_there():
    # The engine never saw "\nOutput:" whole: the model went on writing its own output.
    step = BASE.parse_mini_step("# Add 4.\nprint(x + 4)\nOutput", ": 7\nThe answer", None, "length",
                                room_left=True)
    assert step.kind is StepKind.CODE and step.code == "# Add 4.\nprint(x + 4)" and step.wants_output
    step = BASE.parse_mini_step("# Sam has 3 apples.\nx = 3\n", "# Add 4.\nprint(", None, "length",
                                room_left=True)
    assert step.kind is StepKind.CODE and step.code == "# Sam has 3 apples.\nx = 3" and not step.wants_output
    # A stop of the search's own list counts too.
    step = BASE.parse_mini_step("x = 3 ST", "OP y", None, "length", room_left=True, stops=("STOP",))
    assert step.kind is StepKind.CODE and step.code == "x = 3"


def test_a_step_over_its_whole_budget_is_truncated_and_an_answer_is_kept():
    step = BASE.parse_mini_step("# Sam has 3 apples.\nx = ", "3 + 4 +", None, "length", room_left=False)
    assert step.kind is StepKind.INVALID and step.reason == "truncated"
    step = BASE.parse_mini_step("The answer is ", "\\boxed{7}. So", None, "length", room_left=True)
    assert step.kind is StepKind.ANSWER and step.answer == "7"


def test_split_pending_keeps_only_the_unfinished_steps_chunks():
    assert split_pending([("a", False), ("b ", True), ("c", True)]) == (["a"], "b c")
    # A completing node carries its whole step: the chunks before it are not repeated.
    assert split_pending([("# x\nx", True), ("# x\nx = 1", False)]) == (["# x\nx = 1"], "")
    assert split_pending([]) == ([], "")


# ---------------------------------------------------------------------- config


@pytest.mark.parametrize("changes,match", [
    ({"terminal_reward": "confidence"}, "set logprobs >= 1"),
    ({"use_confidence_init": True}, "use_confidence_init needs the policy's top-k logprobs"),
    ({"use_confidence_init": True, "use_ppm_init": True, "logprobs": 5}, "both set"),
    ({"terminal_reward": "votes"}, "terminal_reward must be one of ground_truth, ppm, confidence"),
    ({"granularity": "token"}, "granularity must be one of step, mini-step"),
    ({"granularity": "mini-step", "mini_step_tokens": 0}, "mini_step_tokens must be a positive integer"),
    ({"granularity": "mini-step", "mini_step_tokens": 64, "max_tokens_per_step": 64}, "must be below max_tokens"),
    ({"reflection": "yes"}, "reflection must be true or false"),
])
def test_marco_switches_are_validated_with_named_fields(changes, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**changes)


def test_marco_recipes_load_side_by_side():
    marco, mini, reflect = (load_config(CONFIGS / f"{name}.yaml")
                            for name in ("marco", "marco-ministep", "marco-reflect"))
    for config in (marco, mini, reflect):
        assert config.terminal_reward == "confidence" and config.use_confidence_init and config.logprobs == 5
        assert not config.needs_reward_model and config.values_answers
    assert (marco.granularity, marco.reflection) == ("step", False)
    assert (mini.granularity, mini.mini_step_tokens, mini.reflection) == ("mini-step", 32, False)
    assert (reflect.granularity, reflect.reflection) == ("step", True)


# ---------------------------------------------------------------------- search


class ChunkPolicy:
    """Answers each request with `script(tail, request)` -> list of Completion (the tail is the
    prompt after the assistant prefix, i.e. the solution so far)."""

    model_version = "fake-chunks@1"

    def __init__(self, script):
        self.script = script
        self.requests: list[GenerationRequest] = []

    async def generate(self, request):
        self.requests.append(request)
        tail = request.prompt.rsplit(BASE.assistant_prefix, 1)[1]
        return list(self.script(tail, request))[: request.n]

    async def generate_stream(self, request):
        for completion in await self.generate(request):
            yield completion


def done(text, stop=None, tokens=4, conf=None):
    return Completion(text, "stop", stop_string=stop, num_tokens=tokens, token_confidence=conf)


def cut(text, tokens, conf=None):
    return Completion(text, "length", num_tokens=tokens, token_confidence=conf)


def search(config, script, answer="7"):
    policy = ChunkPolicy(script)
    executor = InlineExecutor()
    result = asyncio.run(MCTS(policy, executor, config).search(Problem(QUESTION, answer)))
    return result, policy, executor


MARCO = SearchConfig(expansion_width=2, rollouts=4, max_depth=6, parallel_rollouts=1, logprobs=5,
                     terminal_reward="confidence", use_confidence_init=True)


def confident_script(tail, request):
    if not tail:
        return [done("# Sam has 3 apples and gets 4.\nprint(3 + 4)", OUTPUT_STOP, tokens=10, conf=0.9),
                done("# Guess.\nprint(3 * 4)", OUTPUT_STOP, tokens=10, conf=0.3)]
    answer = "7" if "Output: 7" in tail else "12"
    return [done(f"The answer is \\boxed{{{answer}}}.", tokens=5, conf=0.6)]


def test_confidence_gives_initial_and_terminal_values_and_picks_the_answer():
    result, policy, _ = search(MARCO, confident_script, answer=None)
    tree = result.tree
    assert all(r.logprobs == 5 for r in policy.requests)
    steps = {n.token_confidence: n for n in tree.nodes if n.kind is NodeKind.CODE}
    assert steps[0.9].init_value == pytest.approx(0.9) and steps[0.3].init_value == pytest.approx(0.3)
    answers = {n.answer: n for n in tree.terminals() if n.terminal is TerminalReason.ANSWER}
    # Terminal value: the mean over the rollout's 15 tokens.
    assert answers["7"].terminal_value == pytest.approx((0.9 * 10 + 0.6 * 5) / 15)
    assert answers["12"].terminal_value == pytest.approx((0.3 * 10 + 0.6 * 5) / 15)
    assert result.answer == "7" and result.correct is None
    assert Tree.from_json(tree.to_json()).to_dict() == tree.to_dict()


def test_confidence_terminal_values_keep_the_ground_truth_as_a_label():
    result, _, _ = search(MARCO, confident_script, answer="7")
    answers = {n.answer: n for n in result.tree.terminals() if n.terminal is TerminalReason.ANSWER}
    assert answers["7"].correct is True and answers["12"].correct is False
    assert 0 < answers["12"].terminal_value < answers["7"].terminal_value < 1
    assert result.correct is True


def ministep_script(tail, request):
    assert request.max_tokens <= 8
    if not tail:
        return [cut("# Sam has 3 apples.\nx", 8, conf=0.5)]
    if tail.endswith("\nx"):
        return [done(" = 3", STEP_STOP, tokens=3, conf=1.0)]
    if "print" not in tail:
        return [cut("# Add 4.\nprint(x", 8), cut("# Add four.\nprint(x", 8)]
    if tail.endswith("print(x"):
        return [done(" + 4)", OUTPUT_STOP, tokens=3)]
    return [done("The answer is \\boxed{7}.")]


def test_mini_steps_cut_steps_and_run_code_only_once_a_step_is_complete():
    config = SearchConfig(expansion_width=2, rollouts=2, max_depth=8, parallel_rollouts=1,
                          granularity="mini-step", mini_step_tokens=8, max_tokens_per_step=20)
    result, policy, executor = search(config, ministep_script)
    tree = result.tree
    partial = [n for n in tree.nodes if n.kind is NodeKind.PARTIAL]
    assert [n.text for n in partial][:1] == ["# Sam has 3 apples.\nx"] and all(not n.code for n in partial)
    # The next chunk continued the partial text verbatim (no separator added).
    assert any(r.prompt.endswith(BASE.assistant_prefix + "# Sam has 3 apples.\nx") for r in policy.requests)
    first = next(n for n in tree.nodes if n.code == "# Sam has 3 apples.\nx = 3")
    assert first.text == "# Sam has 3 apples.\nx = 3" and tree.nodes[first.parent].kind is NodeKind.PARTIAL
    # Code ran only for completed steps, each with the steps before it.
    assert "# Sam has 3 apples.\nx = 3" in executor.programs
    assert "# Sam has 3 apples.\nx = 3\n# Add 4.\nprint(x + 4)" in executor.programs
    assert not any(p.rstrip().endswith(("\nx", "print(x")) for p in executor.programs)
    # The answer's prompt shows whole steps and the output, once each.
    last = policy.requests[-1].prompt.rsplit(BASE.assistant_prefix, 1)[1]
    assert last.count("# Sam has 3 apples.") == 1 and "Output: 7" in last
    assert result.answer == "7" and result.correct is True
    # A step's own budget: the chunk after 8 + 8 tokens may have 4 more at most.
    assert {r.max_tokens for r in policy.requests} <= {8, 4}


def test_a_step_longer_than_its_budget_ends_as_truncated():
    script = lambda tail, request: [cut("# a long thought that never ends " * 2, request.max_tokens)]
    config = SearchConfig(expansion_width=1, rollouts=1, max_depth=8, parallel_rollouts=1, errors_threshold=1,
                          granularity="mini-step", mini_step_tokens=8, max_tokens_per_step=20,
                          dedup_candidates=False)
    result, policy, _ = search(config, script)
    assert [r.max_tokens for r in policy.requests] == [8, 8, 4]
    assert result.tree.stats.dropped_invalid == {"truncated": 1}


def reflect_script(tail, request):
    if not tail:
        return [done("# Sam has 3 apples and 4 more.\nprint(3 * 4)", OUTPUT_STOP, conf=0.5)]
    if tail.endswith(REFLECTION_PROMPT + "\n"):
        return [done("# Rethink: he gets 4 more, so add.\nprint(3 + 4)", OUTPUT_STOP, conf=0.8)]
    answer = tail.rsplit("Output: ", 1)[1].split("\n", 1)[0]
    return [done(f"The answer is \\boxed{{{answer}}}.", conf=0.7)]


def test_reflection_continues_after_an_answer_and_records_both_answers():
    config = MARCO.replace(expansion_width=1, rollouts=3, max_depth=8, reflection=True)
    result, policy, _ = search(config, reflect_script)
    tree = result.tree
    [reflection] = [n for n in tree.nodes if n.kind is NodeKind.REFLECTION]
    first = tree.nodes[reflection.reflection_of]
    assert first.answer == "12" and first.terminal is TerminalReason.ANSWER and first.correct is False
    assert reflection.parent == first.parent and reflection.text == f"{first.text}\n{REFLECTION_PROMPT}"
    assert reflection.visits >= 1 and not reflection.is_terminal
    [second] = [t for t in tree.terminals() if reflection in tree.path(t)]
    assert (second.answer, second.answer_before_reflection, second.reflection_changed) == ("7", "12", True)
    # Once per path: the second answer gets no reflection of its own.
    assert sum(n.kind is NodeKind.REFLECTION for n in tree.nodes) == 1
    # The first answer's tokens count once on the reflected path.
    assert second.terminal_value == pytest.approx((0.5 * 4 + 0.7 * 4 + 0.8 * 4 + 0.7 * 4) / 16)
    assert result.answer == "7" and result.any_correct


def test_reflection_that_keeps_the_answer_says_so():
    def script(tail, request):
        if tail.endswith(REFLECTION_PROMPT + "\n"):
            return [done("The answer is \\boxed{7.0}.")]
        if not tail:
            return [done("# Add.\nprint(3 + 4)", OUTPUT_STOP)]
        return [done("The answer is \\boxed{7}.")]

    config = SearchConfig(expansion_width=1, rollouts=2, max_depth=6, parallel_rollouts=1, reflection=True)
    tree = search(config, script)[0].tree
    [second] = [t for t in tree.terminals() if t.answer_before_reflection is not None]
    assert second.answer == "7.0" and second.reflection_changed is False and second.correct
