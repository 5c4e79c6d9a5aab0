"""Round-0 conversion of GSM8K worked solutions and its verification with the inline executor.

The solutions below are real lines of GSM8K train (copied, with their line index), plus a few
hand-made variants for annotation quirks that the train set itself does not contain.
"""

import asyncio

import pytest
from fakes import InlineExecutor

from rstar_core.bootstrap import Conversion, convert_gsm8k, verify
from rstar_core.grading import answers_match
from rstar_core.ports import ExecutionResult, ExecutionStatus
from rstar_core.steps import OUTPUT_STOP, STEP_STOP, StepKind, accumulate_code, get_format
from rstar_core.types import Problem

SFT = get_format("sft")

# gsm8k_train.jsonl line 0
NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
)
# line 1: "$" before the annotation, "x" as the times sign in the text, a float result
WENG = (
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
)
# line 23: the last calculation is written out without an annotation
ANN = (
    "Ann's favorite store was having a summer clearance. For $75 she bought 5 pairs of shorts for $7 each "
    "and 2 pairs of shoes for $10 each. She also bought 4 tops, all at the same price. "
    "How much did each top cost?",
    "She bought 5 shorts at $7 each so 5*7=$<<5*7=35>>35\n"
    "She bought 2 pair of shoes at $10 each so 2*10=$<<2*10=20>>20\n"
    "The shorts and shoes cost her 35+20 = $<<35+20=55>>55\n"
    "We know she spent 75 total and the shorts and shoes cost $55 which left a difference of "
    "75-55 = $<<75-55=20>>20\n"
    "She bought 4 tops for a total of $20 so 20/4 = $5\n#### 5",
)
# line 44: percentages as "*.01", odd spacing, an unannotated final line with parentheses
JAMES = (
    "James is a first-year student at a University in Chicago. He has a budget of $1000 per semester. "
    "He spends 30% of his money on food, 15% on accommodation, 25% on entertainment, and the rest on "
    "coursework materials. How much money does he spend on coursework materials?",
    "Accommodation is 15% * $1000=$<<15*.01*1000=150>>150\n"
    "Food is          30% * $1000=$<<30*.01*1000=300>>300\n"
    "Entertainment is   25% * $1000=$<<25*.01*1000=250>>250\n"
    "Coursework materials are thus $1000-($150+$300+$250) = $300\n#### 300",
)
# line 410: thousands separators in the text and in the question
MARK = (
    "Mark wants to set the record for most consecutive ropes jumped.  The record is 54,000.  "
    "He can jump 3 times a second.  How many hours would he need to jump rope?",
    "He can jump 3*60=<<3*60=180>>180 times per minute\n"
    "So he can jump 180*60=<<180*60=10800>>10,800 per hour\n"
    "So it would take him 54,000/10,800=<<54000/10800=5>>5 hours\n#### 5",
)
# line 959: a written-out percentage calculation with unit words ("% of the snowballs")
JANET = (
    "Janet makes 50 snowballs and her brother makes 150 snowballs. What percentage of the snowballs "
    "did Janet make?",
    "First add the number of snowballs each person made to find the total: 50 snowballs + 150 snowballs "
    "= <<50+150=200>>200 snowballs\n"
    "Then divide the number Janet made by the total number and multiply by 100% to express the answer "
    "as a percentage: 50 snowballs / 200 snowballs * 100% = 25%\n#### 25",
)
# line 1949: a Unicode minus sign in the unannotated last line
ALBERT = (
    "Albert wants a paintbrush that costs $1.50, a set of paints that costs $4.35, and a wooden easel that "
    "costs $12.65. Albert already has $6.50. How much more money does Albert need?",
    "The total cost of the paintbrush, the paints, and the wooden easel is $1.50 + $4.35 + $12.65 = "
    "$<<1.5+4.35+12.65=18.50>>18.50.\nAlbert needs $18.50 \u2212 $6.50 = $12 more.\n#### 12",
)
# line 29: algebra without a single annotation
SNYDER = (
    "Mrs. Snyder used to spend 40% of her monthly income on rent and utilities. Her salary was recently "
    "increased by $600 so now her rent and utilities only amount to 25% of her monthly income. "
    "How much was her previous monthly income?",
    "Let her previous monthly income be p\n"
    "The cost of her rent and utilities was 40% of p which is (40/100)*p = 2p/5\n"
    "Multiplying both sides of the equation by 20 gives 8p = 5p+$3000\n"
    "Subtracting 5p from both sides gives: 3p = $3000\n"
    "Dividing both sides by 3 gives p = $1000\n#### 1000",
)
# line 1608: the reference reasons its way to an answer no calculation prints
CARTER = (
    "Carter grew 9 plants with 3 seed packets. How many more seed packets does Carter need to have a "
    "total of 12 plants in his backyard?",
    "If he grows 9 plants with 3 seed packets, he grows 9/3=<<9/3=3>>3 plants with 1 seed packet.\n"
    "Since 1 seed packet grows 3 plants, he'll need 1 more to make the plants 12.\n#### 1",
)


def _convert(pair, id="t"):
    return convert_gsm8k(*pair, id=id)


def _run(coro):
    return asyncio.run(coro)


def _code_lines(conversion: Conversion) -> list[str]:
    return [line for step in conversion.steps for line in step.splitlines() if not line.startswith(("#", "The"))]


def test_steps_have_one_thought_line_then_code():
    c = _convert(NATALIA, id="gsm8k-train-0")
    assert c.reason == "" and c.problem == Problem(NATALIA[0], "72", "gsm8k-train-0")
    assert c.steps == (
        "# Natalia sold 48/2 = 24 clips in May.\nclips_may = 48 / 2",
        "# Natalia sold 48+24 = 72 clips altogether in April and May.\nclips_april = 48 + clips_may",
        "# Print the answer.\nprint(round(clips_april))",
        "The answer is \\boxed{72}.",
    )


def test_every_step_parses_as_the_search_would_parse_it():
    c = _convert(ANN)
    *code_steps, print_step, answer_step = c.steps
    for step in code_steps:
        parsed = SFT.parse(step, STEP_STOP, "stop")
        assert parsed.kind is StepKind.CODE and parsed.text == step and parsed.code == step
        assert len([line for line in step.splitlines() if line.startswith("#")]) == 1
    assert SFT.parse(print_step, OUTPUT_STOP, "stop").wants_output
    answer = SFT.parse(answer_step, None, "stop")
    assert answer.kind is StepKind.ANSWER and answer.text == answer_step and answer.answer == "5"


def test_dollar_signs_times_sign_and_float_results():
    c = _convert(WENG)
    assert _code_lines(c) == ["per_minute = 12 / 60", "earned = per_minute * 50", "print(round(earned))"]
    assert c.steps[1].startswith("# Working 50 minutes, she earned 0.2 x 50 = $10.\n")


def test_unannotated_calculation_becomes_a_step():
    c = _convert(ANN)
    assert c.steps[-3].startswith("# She bought 4 tops for a total of $20 so 20/4 = $5\n")
    assert c.steps[-3].endswith(" = 20 / 4")
    assert c.steps[-2].endswith("print(round(bought_tops))")


def test_percentages_parentheses_and_substitution():
    lines = _code_lines(_convert(JAMES))
    assert lines[:3] == ["accommodation = 15 * 0.01 * 1000", "food = 30 * 0.01 * 1000",
                         "entertainment = 25 * 0.01 * 1000"]
    assert lines[3] == "coursework_materials = 1000 - (accommodation + food + entertainment)"


def test_thousands_separators_and_givens_are_not_substituted():
    lines = _code_lines(_convert(MARK))
    # 60 is "seconds per minute", not the earlier result; 54,000 comes from the question.
    assert lines == ["times_per = 3 * 60", "per_hour = times_per * 60", "hours = 54000 / per_hour",
                     "print(round(hours))"]


def test_percentage_points_and_unit_words_in_written_out_calculations():
    lines = _code_lines(_convert(JANET))
    assert lines[1].endswith("= 50 / snowballs * 100")


def test_unicode_minus():
    assert _code_lines(_convert(ALBERT))[1] == "albert = wooden_easel - 6.5"


@pytest.mark.parametrize("solution,code", [
    ("He pays 1,000*2 = <<1,000*2=2,000>>2,000 dollars.\n#### 2,000", "dollars = 1000 * 2"),
    ("She keeps <<20%*50=10>>10 apples.\n#### 10", "apples = 20 / 100 * 50"),
    ("That is <<3 x 4=12>>12 eggs.\n#### 12", "eggs = 3 * 4"),
    ("It costs <<$5+$3=$8>>$8 total.\n#### 8", "costs = 5 + 3"),
    ("He has <<2(3+4)=14>>14 cards.\n#### 14", "cards = 2 * (3 + 4)"),
    ("They share <<14÷2=7>>7 cards.\n#### 7", "cards = 14 / 2"),
    ("They walk <<05*2=10>>10 miles.\n#### 10", "miles = 5 * 2"),
])
def test_odd_annotations_are_normalised(solution, code):
    c = convert_gsm8k("Some question?", solution)
    assert c.reason == "" and c.steps[0].splitlines()[1] == code


def test_two_annotations_on_one_line_give_one_step_with_two_assignments():
    c = convert_gsm8k("Q?", "He has <<2*3=6>>6 cards and <<6+1=7>>7 stamps.\n#### 7")
    assert c.steps[0] == "# He has 6 cards and 7 stamps.\ncards = 2 * 3\nstamps = cards + 1"


def test_variable_names_are_identifiers_unique_and_not_builtins():
    solution = ("The sum is <<2+3=5>>5.\nThe sum is <<5+1=6>>6.\nThe sum is <<6+1=7>>7.\n"
                "<<7*2=14>>14\nThen print <<14+1=15>>15 list\n#### 15")
    names = [line.split(" = ")[0] for line in _code_lines(convert_gsm8k("Q?", solution)) if " = " in line]
    assert names == ["sum_value", "sum_value_2", "sum_value_3", "step_4", "list_value"]


@pytest.mark.parametrize("solution,reason", [
    ("He sold 48/2 = 24 clips.\n", "no_final_answer"),
    ("He sold 48/2 = <<48/2=24>>24 clips.\n####   \n", "no_final_answer"),
    (SNYDER[1], "no_annotations"),
    ("He sold <<48/2=24 clips.\n#### 24", "malformed_annotation"),
    ("He sold 48/2=24>>24 clips.\n#### 24", "malformed_annotation"),
    ("He sold <<48/2>>24 clips.\n#### 24", "malformed_annotation"),
    ("He sold <<abs(-3)=3>>3 clips.\n#### 3", "malformed_annotation"),
    ("He sold <<4/0=4>>4 clips.\n#### 4", "malformed_annotation"),
    ("He sold <<9**99999=1>>1 clips.\n#### 1", "malformed_annotation"),
])
def test_rejections_carry_a_reason(solution, reason):
    c = convert_gsm8k("Q?", solution)
    assert c.steps is None and c.reason == reason


def test_final_answer_loses_thousands_separator():
    assert convert_gsm8k("Q?", "A <<1000*2=2000>>2000 b\n#### 2,000").problem.answer == "2000"


def test_verify_runs_steps_cumulatively_and_appends_output():
    executor = InlineExecutor()
    result = _run(verify([_convert(NATALIA, id="n")], executor))
    [trajectory] = result.trajectories
    assert trajectory.steps[2] == "# Print the answer.\nprint(round(clips_april))\nOutput: 72"
    assert trajectory.steps[:2] == _convert(NATALIA).steps[:2]  # no output, nothing appended
    assert trajectory.printed == "72"
    # Like the search: each run is every earlier code step plus the new one.
    codes = list(_convert(NATALIA).steps[:3])
    assert executor.programs == [accumulate_code(codes[:i], codes[i]) for i in range(3)]
    assert trajectory.to_record() == {"id": "n", "question": NATALIA[0], "answer": "72",
                                      "steps": list(trajectory.steps)}


def test_verify_keeps_correct_and_counts_every_outcome():
    pairs = [NATALIA, WENG, ANN, JAMES, MARK, JANET, ALBERT, SNYDER, CARTER]
    conversions = [_convert(pair, id=str(i)) for i, pair in enumerate(pairs)]
    result = _run(verify(conversions, InlineExecutor(), concurrency=3))
    assert [t.problem.id for t in result.trajectories] == ["0", "1", "2", "3", "4", "5", "6"]
    assert result.counts == {"total": 9, "converted": 8, "ran": 8, "correct": 7,
                             "rejected": {"no_annotations": 1, "wrong_answer": 1}}
    for trajectory in result.trajectories:
        assert answers_match(trajectory.printed, trajectory.problem.answer)
        assert trajectory.steps[-2].endswith(f"\nOutput: {trajectory.printed}")


class _FailingExecutor:
    def __init__(self, status):
        self.status = status

    async def run(self, code, *, timeout_s=None):
        return ExecutionResult(self.status, error="boom")


@pytest.mark.parametrize("status", [ExecutionStatus.ERROR, ExecutionStatus.TIMEOUT])
def test_execution_failures_are_counted_by_status(status):
    result = _run(verify([_convert(NATALIA)], _FailingExecutor(status)))
    assert result.trajectories == []
    assert result.counts == {"total": 1, "converted": 1, "ran": 0, "correct": 0,
                             "rejected": {status.value: 1}}


def test_verify_rejects_bad_concurrency():
    with pytest.raises(ValueError, match="concurrency"):
        _run(verify([], InlineExecutor(), concurrency=0))
