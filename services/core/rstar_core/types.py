"""Value types of the search: problems, tree nodes, search trees and their counters.

A `Tree` is everything a finished search knows: every node with its statistics, the
counters of what was generated and dropped, the config and model versions. It serializes
to and from plain JSON without loss, so the tree is the unit stored by workers and read
by the data builders. No search logic lives here (see `mcts`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Node", "NodeKind", "Problem", "SearchStats", "TerminalReason", "Tree"]


@dataclass(frozen=True)
class Problem:
    question: str
    # Ground truth: a string, a number or a list (any element may match); None if unknown.
    answer: Any = None
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError("question must be a non-empty string")
        if self.answer is not None and not isinstance(self.answer, (str, int, float, list)):
            raise ValueError(f"answer must be a string, a number or a list, got {type(self.answer).__name__}")


class NodeKind(str, enum.Enum):
    ROOT = "root"
    CODE = "code"
    ANSWER = "answer"
    # A mini-step that ends inside a step (granularity mini-step): no code run yet.
    PARTIAL = "partial"
    # An answer followed by the reflection prompt; the search continues below it.
    REFLECTION = "reflection"


class TerminalReason(str, enum.Enum):
    ANSWER = "answer"  # the step gave a final answer
    NO_ANSWER = "no_answer"  # the model ended the solution without an answer
    TOO_MANY_ERRORS = "too_many_errors"  # every candidate failed errors_threshold times
    MAX_DEPTH = "max_depth"  # the branch reached max_depth without an answer


@dataclass
class Node:
    id: int
    parent: int | None
    depth: int
    kind: NodeKind = NodeKind.ROOT
    # The step exactly as it appears in later prompts, including an appended "Output: ...".
    # Mini-steps: a PARTIAL node holds its own chunk; the node that completes the step holds
    # the whole step (the chunks before it and its own), so a path's non-partial texts are
    # its steps.
    text: str = ""
    # The code of this step alone (empty for root and answer steps).
    code: str = ""
    # What this step printed (stdout of the accumulated program minus earlier output).
    output: str = ""
    # Everything printed along the path up to and including this step.
    stdout: str = ""
    answer: str | None = None
    # The answer was read from the printed output because the model stopped after code.
    answer_from_output: bool = False
    terminal: TerminalReason | None = None
    # Correctness against the ground truth (None when unknown or not an answer).
    correct: bool | None = None
    # Value given to the terminal (±1 from the ground truth, or the PPM score).
    terminal_value: float | None = None
    # PPM score given at creation (rounds 3-4, evaluation).
    init_value: float | None = None
    value_sum: float = 0.0
    visits: int = 0
    children: list[int] = field(default_factory=list)
    expanded: bool = False
    # Every non-terminal child is exhausted or terminal: selection skips this node.
    exhausted: bool = False
    failed_expansions: int = 0
    # Tokens this node's own completion generated, and their mean token confidence
    # (`rstar_core.confidence`; None when logprobs were not asked).
    num_tokens: int = 0
    token_confidence: float | None = None
    # Reflection: on a REFLECTION node, the id of the answer node whose answer it rethinks;
    # on an answer below it, that first answer and whether this answer differs from it.
    reflection_of: int | None = None
    answer_before_reflection: str | None = None
    reflection_changed: bool | None = None

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def is_terminal(self) -> bool:
        return self.terminal is not None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["terminal"] = self.terminal.value if self.terminal else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Node":
        values = dict(data)
        values["kind"] = NodeKind(values["kind"])
        values["terminal"] = TerminalReason(values["terminal"]) if values.get("terminal") else None
        return cls(**values)


@dataclass
class SearchStats:
    rollouts: int = 0
    expansions: int = 0
    policy_calls: int = 0
    reward_calls: int = 0
    executions: int = 0
    candidates: int = 0
    generated_tokens: int = 0
    dropped_duplicate: int = 0
    # Candidates whose code failed in the sandbox, by execution status.
    dropped_exec: dict[str, int] = field(default_factory=dict)
    # Candidates that were neither code nor an answer, by reason (syntax, truncated, ...).
    dropped_invalid: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def dropped(self) -> int:
        return self.dropped_duplicate + sum(self.dropped_exec.values()) + sum(self.dropped_invalid.values())

    def count(self, bucket: dict[str, int], key: str) -> None:
        bucket[key] = bucket.get(key, 0) + 1


@dataclass
class Tree:
    problem: Problem
    nodes: list[Node]
    stats: SearchStats = field(default_factory=SearchStats)
    config: dict[str, Any] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)
    # A few dropped candidates kept for inspection (text, reason), capped by the search.
    dropped_examples: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def new(cls, problem: Problem, **kwargs: Any) -> "Tree":
        return cls(problem=problem, nodes=[Node(id=0, parent=None, depth=0)], **kwargs)

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(self, parent: Node, **fields: Any) -> Node:
        node = Node(id=len(self.nodes), parent=parent.id, depth=parent.depth + 1, **fields)
        self.nodes.append(node)
        parent.children.append(node.id)
        return node

    def path(self, node: Node) -> list[Node]:
        """Nodes from the root's first child down to `node` (the root itself excluded)."""
        out = []
        while node.parent is not None:
            out.append(node)
            node = self.nodes[node.parent]
        return out[::-1]

    def scoring_steps(self, node: Node) -> tuple[str, ...]:
        """The path down to `node` as a reward model scores it: the complete steps, then the
        unfinished step's mini-steps so far as one more step (`steps.split_pending`)."""
        from .steps import split_pending

        steps, pending = split_pending([(n.text, n.kind is NodeKind.PARTIAL) for n in self.path(node)])
        return tuple(steps + [pending] if pending else steps)

    def terminals(self) -> list[Node]:
        return [n for n in self.nodes if n.is_terminal]

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": dataclasses.asdict(self.problem),
            "nodes": [n.to_dict() for n in self.nodes],
            "stats": dataclasses.asdict(self.stats),
            "config": self.config,
            "model_versions": self.model_versions,
            "dropped_examples": self.dropped_examples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tree":
        return cls(
            problem=Problem(**data["problem"]),
            nodes=[Node.from_dict(n) for n in data["nodes"]],
            stats=SearchStats(**data["stats"]),
            config=data.get("config", {}),
            model_versions=data.get("model_versions", {}),
            dropped_examples=data.get("dropped_examples", []),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Tree":
        return cls.from_dict(json.loads(text))
