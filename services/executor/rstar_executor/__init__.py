"""rstar executor service: runs model-generated Python steps in a process sandbox.

`SandboxExecutor` (see `rstar_executor.sandbox` for exactly what it isolates and what it
does not) implements `rstar_core.ports.CodeExecutor`.
"""

from rstar_executor.sandbox import SandboxExecutor, SandboxSettings

__all__ = ["SandboxExecutor", "SandboxSettings"]
