from rstar_core.data import build_ppm_pairs, difficulty, select_sft, trajectories
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
