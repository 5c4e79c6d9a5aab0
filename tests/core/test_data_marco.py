"""Training data from Marco-o1 trees: partial mini-steps fold into the step they complete,
reflections are left out (the rule in `rstar_core.data`'s docstring)."""

from rstar_core.curation import orm_examples, ppm_examples, pqm_examples, sft_examples
from rstar_core.data import (
    PreferencePair,
    StepValue,
    build_ppm_pairs,
    difficulty,
    outcome_trajectories,
    select_sft,
    step_values,
    trajectories,
)
from rstar_core.steps import REFLECTION_PROMPT
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree

CODE, ANSWER, PARTIAL, REFLECTION = NodeKind.CODE, NodeKind.ANSWER, NodeKind.PARTIAL, NodeKind.REFLECTION


def _terminal(tree, parent, reason, value, **fields):
    node = tree.add_child(parent, terminal=reason, terminal_value=value, **fields)
    walk = node
    while walk is not None:
        walk.visits += 1
        walk.value_sum += value
        walk = tree.nodes[walk.parent] if walk.parent is not None else None
    return node


def _answer(tree, parent, text, answer, correct):
    return _terminal(tree, parent, TerminalReason.ANSWER, 1.0 if correct else -1.0, kind=ANSWER, text=text,
                     answer=answer, correct=correct)


def _reflection(tree, first):
    return tree.add_child(tree.nodes[first.parent], kind=REFLECTION, text=f"{first.text}\n{REFLECTION_PROMPT}",
                          reflection_of=first.id)


def ministep_tree() -> Tree:
    """Ids in creation order; (p) partial, (r) reflection::

        root -> 1 "# a\\nx"(p) -> 2 "# a\\nx = 7" -> 5 "The answer"(p) -> 6 "The answer is \\boxed{7}." right
                                                  -> 7 "# c\\nw"(p): too many errors
                              -> 3 "# a\\nx = 8" -> 8 "\\boxed{8}" wrong
             -> 4 "# b\\ny = 7" -> 9 "\\boxed{6}" wrong
                                -> 10 "\\boxed{6}\\nWait! ..."(r) -> 11 "# redo\\nz = 7" -> 12 "\\boxed{7}" right
    """
    tree = Tree.new(Problem("q?", "7", id="p1"))
    chunk = tree.add_child(tree.root, kind=PARTIAL, text="# a\nx")
    a = tree.add_child(chunk, kind=CODE, text="# a\nx = 7", code="# a\nx = 7")
    a2 = tree.add_child(chunk, kind=CODE, text="# a\nx = 8", code="# a\nx = 8")
    b = tree.add_child(tree.root, kind=CODE, text="# b\ny = 7", code="# b\ny = 7")
    _answer(tree, tree.add_child(a, kind=PARTIAL, text="The answer"), "The answer is \\boxed{7}.", "7", True)
    _terminal(tree, a, TerminalReason.TOO_MANY_ERRORS, -1.0, kind=PARTIAL, text="# c\nw")
    _answer(tree, a2, "\\boxed{8}", "8", False)
    first = _answer(tree, b, "\\boxed{6}", "6", False)
    redo = tree.add_child(_reflection(tree, first), kind=CODE, text="# redo\nz = 7", code="# redo\nz = 7")
    _answer(tree, redo, "\\boxed{7}", "7", True)
    assert [n.id for n in tree.nodes] == list(range(13))
    return tree


def test_trajectories_are_whole_steps_and_skip_reflections():
    tree = ministep_tree()
    got = [(t.node_ids, t.steps, t.q_values, t.terminal, t.correct) for t in trajectories(tree)]
    assert got == [
        # The answer's chunk "The answer" and the first chunk "# a\nx" are not steps of their own.
        ((2, 6), ("# a\nx = 7", "The answer is \\boxed{7}."), (0.0, 1.0), TerminalReason.ANSWER, True),
        # Ended inside a step: the half step is left out.
        ((2,), ("# a\nx = 7",), (0.0,), TerminalReason.TOO_MANY_ERRORS, None),
        ((3, 8), ("# a\nx = 8", "\\boxed{8}"), (-1.0, -1.0), TerminalReason.ANSWER, False),
        # The first answer stays; the reflected answer (node 12) is no trajectory.
        ((4, 9), ("# b\ny = 7", "\\boxed{6}"), (0.0, -1.0), TerminalReason.ANSWER, False),
    ]
    assert [t.node_ids for t in select_sft(tree)] == [(2, 6)]
    assert [t.node_ids for t in outcome_trajectories(tree)] == [(2, 6), (3, 8), (4, 9)]


def test_ppm_pairs_compare_complete_sibling_steps_only():
    pairs = build_ppm_pairs(ministep_tree())
    solution = ("# a\nx = 7", "The answer is \\boxed{7}.")
    assert pairs == [
        # At the root the steps are 2 and 3 (behind the partial 1) and 4. Node 4 is labelled
        # by its wrong answer only, and its Q (0, from the reflected right answer backed up
        # through it) is not below node 2's, so it makes no pair.
        PreferencePair("q?", (), ("# a\nx = 7",), ("# a\nx = 8",), 0.0, -1.0),
        PreferencePair("q?", (), solution, ("# a\nx = 8", "\\boxed{8}"), 0.5, -1.0, whole_solution=True),
        PreferencePair("q?", (), solution, ("# b\ny = 7", "\\boxed{6}"), 0.5, -0.5, whole_solution=True),
    ]


def test_step_values_are_complete_steps_outside_reflections():
    assert step_values(ministep_tree()) == [
        StepValue(("# a\nx = 7",), 0.0, 2),
        StepValue(("# a\nx = 8",), -1.0, 3),
        StepValue(("# b\ny = 7",), 0.0, 4),
        StepValue(("# a\nx = 7", "The answer is \\boxed{7}."), 1.0, 6),
        StepValue(("# a\nx = 8", "\\boxed{8}"), -1.0, 8),
        StepValue(("# b\ny = 7", "\\boxed{6}"), -1.0, 9),
    ]


def test_curated_examples_hold_no_chunk_and_no_reflection():
    tree = ministep_tree()
    texts = [s for e in sft_examples([tree], round=1) for s in e.steps]
    texts += [s for e in ppm_examples([tree], round=1) for s in (*e.prefix, *e.chosen, *e.rejected)]
    texts += [s for e in orm_examples([tree], round=1) for s in e.steps]
    texts += [s for e in pqm_examples([tree], round=1) for s in e.steps]
    partial = {n.text for n in tree.nodes if n.kind is PARTIAL}
    assert texts and not partial & set(texts)
    assert not any(REFLECTION_PROMPT in s or "# redo" in s for s in texts)


def test_an_answer_found_only_after_reflection_gives_no_data():
    tree = Tree.new(Problem("q?", "7"))
    step = tree.add_child(tree.root, kind=CODE, text="# b\ny = 7")
    first = _answer(tree, step, "\\boxed{6}", "6", False)
    _answer(tree, _reflection(tree, first), "\\boxed{7}", "7", True)
    assert [t.node_ids for t in trajectories(tree)] == [(1, 2)]
    assert difficulty(tree) == "hard"
    assert select_sft(tree) == build_ppm_pairs(tree) == outcome_trajectories(tree) == step_values(tree) == []
