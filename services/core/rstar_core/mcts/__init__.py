"""MCTS over code-augmented steps (see `search`)."""

from .search import MCTS, SearchResult, each_bounded, pick_answer, pick_terminal

__all__ = ["MCTS", "SearchResult", "each_bounded", "pick_answer", "pick_terminal"]
