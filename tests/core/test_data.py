from rstar_core.data import (
    build_ppm_pairs,
    difficulty,
    outcome_trajectories,
    select_sft,
    step_values,
    trajectories,
)
from rstar_core.types import NodeKind, Problem, TerminalReason, Tree


def _terminal(tree, parent, reason, value, **fields):
    node = tree.add_child(parent, terminal=reason, terminal_value=value, **fields)
    walk = node
    while walk is not None:
        walk.visits += 1
        walk.value_sum += value
        walk = tree.nodes[walk.parent] if walk.parent is not None else None
    return node


def mixed_tree() -> Tree:
    """root -> A -> {A1 correct, A2 wrong}; root -> B -> B1 wrong; root -> C -> code errors."""
    tree = Tree.new(Problem("q?", "7"))
    a = tree.add_child(tree.root, kind=NodeKind.CODE, text="# a\nx = 7")
    b = tree.add_child(tree.root, kind=NodeKind.CODE, text="# b\nx = 8")
    c = tree.add_child(tree.root, kind=NodeKind.CODE, text="# c\nx = 1")
    _terminal(tree, a, TerminalReason.ANSWER, 1.0, kind=NodeKind.ANSWER, text="\\boxed{7}", answer="7", correct=True)
    _terminal(tree, a, TerminalReason.ANSWER, -1.0, kind=NodeKind.ANSWER, text="\\boxed{6}", answer="6", correct=False)
    _terminal(tree, b, TerminalReason.ANSWER, -1.0, kind=NodeKind.ANSWER, text="\\boxed{8}", answer="8", correct=False)
    _terminal(tree, c, TerminalReason.TOO_MANY_ERRORS, -1.0, kind=NodeKind.CODE, text="# err\nx = y")
    return tree


def test_trajectories_carry_q_per_step():
    trajs = trajectories(mixed_tree())
    assert len(trajs) == 4
    best = next(t for t in trajs if t.correct)
    assert best.steps == ("# a\nx = 7", "\\boxed{7}")
    assert best.q_values == (0.0, 1.0) and best.mean_q == 0.5
    assert {t.terminal for t in trajs} == {TerminalReason.ANSWER, TerminalReason.TOO_MANY_ERRORS}


def test_difficulty_buckets():
    assert difficulty(mixed_tree()) == "medium"
    easy = Tree.new(Problem("q?", "7"))
    _terminal(easy, easy.root, TerminalReason.ANSWER, 1.0, kind=NodeKind.ANSWER, answer="7", correct=True)
    assert difficulty(easy) == "easy"
    hard = Tree.new(Problem("q?", "7"))
    _terminal(hard, hard.root, TerminalReason.ANSWER, -1.0, kind=NodeKind.ANSWER, answer="3", correct=False)
    assert difficulty(hard) == "hard"
    assert difficulty(Tree.new(Problem("q?"))) == "unknown"


def test_sft_selection_top2_correct_by_mean_q():
    tree = Tree.new(Problem("q?", "7"))
    for i, first_q in enumerate([0.2, 0.9, 0.5]):
        step = tree.add_child(tree.root, kind=NodeKind.CODE, text=f"s{i}", visits=1, value_sum=first_q)
        _terminal(tree, step, TerminalReason.ANSWER, 1.0, kind=NodeKind.ANSWER, answer="7", correct=True)
    picked = select_sft(tree)
    assert [t.steps[0] for t in picked] == ["s1", "s2"]
    assert select_sft(mixed_tree())[0].correct


def test_ppm_pairs_share_prefix_and_relax_final_step():
    pairs = build_ppm_pairs(mixed_tree())
    step_pairs = [p for p in pairs if not p.whole_solution]
    final_pairs = [p for p in pairs if p.whole_solution]
    assert [(p.prefix, p.pos, p.neg) for p in step_pairs] == [((), ("# a\nx = 7",), ("# b\nx = 8",))]
    assert all(p.q_pos > p.q_neg for p in pairs)
    assert [p.neg for p in final_pairs] == [("# b\nx = 8", "\\boxed{8}"), ("# a\nx = 7", "\\boxed{6}")]
    assert all(p.pos == ("# a\nx = 7", "\\boxed{7}") for p in final_pairs)


def test_ppm_pairs_need_both_outcomes():
    easy = Tree.new(Problem("q?", "7"))
    _terminal(easy, easy.root, TerminalReason.ANSWER, 1.0, kind=NodeKind.ANSWER, answer="7", correct=True)
    assert build_ppm_pairs(easy) == []


def test_orm_examples_are_the_graded_whole_solutions():
    trajs = outcome_trajectories(mixed_tree())
    assert [(t.steps, t.correct) for t in trajs] == [(("# a\nx = 7", "\\boxed{7}"), True),
                                                     (("# a\nx = 7", "\\boxed{6}"), False),
                                                     (("# b\nx = 8", "\\boxed{8}"), False)]


def test_pqm_steps_are_the_ppms_steps_with_their_q_once_each():
    steps = step_values(mixed_tree())
    # Breadth first; C (only a code error below it) is left out as from the PPM pairs.
    assert [(s.steps, s.q) for s in steps] == [
        (("# a\nx = 7",), 0.0), (("# b\nx = 8",), -1.0),
        (("# a\nx = 7", "\\boxed{7}"), 1.0), (("# a\nx = 7", "\\boxed{6}"), -1.0), (("# b\nx = 8", "\\boxed{8}"), -1.0)]
    assert len({s.node_id for s in steps}) == len(steps)


def test_orm_and_pqm_use_only_the_ppms_trees():
    easy = Tree.new(Problem("q?", "7"))
    step = easy.add_child(easy.root, kind=NodeKind.CODE, text="s")
    _terminal(easy, step, TerminalReason.ANSWER, 1.0, kind=NodeKind.ANSWER, answer="7", correct=True)
    assert build_ppm_pairs(easy) == outcome_trajectories(easy) == step_values(easy) == []
