"""MCTS over code-augmented steps (see `search`)."""

from .search import MCTS, SearchResult, pick_answer, pick_terminal

__all__ = ["MCTS", "SearchResult", "pick_answer", "pick_terminal"]
