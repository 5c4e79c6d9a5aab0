from rstar_core.steps import (
    OUTPUT_STOP,
    STEP_STOP,
    StepKind,
    accumulate_code,
    get_format,
    new_output,
    render_output,
)

import pytest

BASE = get_format("base")


def test_prompt_has_shots_question_and_previous_steps():
    prompt = BASE.render_prompt("How many?", ["# a\nx = 1", "# b\nprint(x)\nOutput: 1"])
    assert prompt.count("<|im_start|>user") == 3  # two shots + the question
    assert prompt.endswith("<|im_start|>assistant\n# a\nx = 1\n# b\nprint(x)\nOutput: 1\n")
    assert "\\boxed{7}" in prompt


def test_sft_prompt_is_zero_shot():
    prompt = get_format("sft").render_prompt("How many?")
    assert "boxed" not in prompt and prompt.count("<|im_start|>user") == 1


def test_parse_code_step():
    step = BASE.parse("# Add them.\ntotal = 3 + 4", STEP_STOP, "stop")
    assert step.kind is StepKind.CODE and step.code == "# Add them.\ntotal = 3 + 4"
    assert not step.wants_output and not step.ended_solution


def test_parse_code_step_that_wants_output():
    step = BASE.parse("# Print.\nprint(total)", OUTPUT_STOP, "stop")
    assert step.kind is StepKind.CODE and step.wants_output


def test_parse_answer_step_with_boxed():
    step = BASE.parse("The answer is \\boxed{7}.", None, "stop")
    assert step.kind is StepKind.ANSWER and step.answer == "7" and step.ended_solution


def test_parse_lenient_answer_without_boxed():
    step = BASE.parse("The answer is 12.", None, "stop")
    assert step.kind is StepKind.ANSWER and step.answer == "12"


def test_comment_mentioning_answer_is_still_code():
    step = BASE.parse("# The answer is 5 apples.\nx = 5", STEP_STOP, "stop")
    assert step.kind is StepKind.CODE


def test_prose_is_invalid():
    step = BASE.parse("She eats 3 eggs so she has", STEP_STOP, "stop")
    assert step.kind is StepKind.INVALID and step.reason == "syntax"


def test_truncated_and_empty_are_invalid():
    assert BASE.parse("x = (1 +", None, "length").reason == "truncated"
    assert BASE.parse("   \n", STEP_STOP, "stop").reason == "empty"


def test_self_written_output_is_cut():
    step = BASE.parse("# Print.\nprint(7)\nOutput: 99", None, "stop")
    assert step.kind is StepKind.CODE and "99" not in step.text


def test_eos_after_code_ends_solution():
    step = BASE.parse("# Print.\nprint(7)", None, "stop")
    assert step.ended_solution


def test_code_accumulation_and_new_output():
    program = accumulate_code(["a = 1", "print(a)"], "print(a + 1)")
    assert program == "a = 1\nprint(a)\nprint(a + 1)"
    assert new_output("1\n", "1\n2\n") == "2\n"
    assert new_output("x\n", "y\n") == "y\n"


def test_render_output_caps_long_output():
    shown = render_output("1\n" * 2000)
    assert shown.startswith("\nOutput: ") and "..." in shown and len(shown) < 700


def test_unknown_format_names_it():
    with pytest.raises(ValueError, match="unknown prompt_format 'nope'"):
        get_format("nope")


def test_output_inside_a_string_is_kept():
    step = BASE.parse('# show\nprint("Output:", 3)\nOutput: 3', None, "stop")
    assert step.kind is StepKind.CODE and step.code == '# show\nprint("Output:", 3)'
