"""rstar core: pure search logic (MCTS over code-augmented steps), grading and data builders.

Imports no grpc, celery or torch; talks to models and the sandbox only through `ports`.
"""
