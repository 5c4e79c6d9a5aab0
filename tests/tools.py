"""External command-line tools some tests use when present, and a free local port.

`make deploy-tools` installs docker-compose with apt and unpacks Debian's prometheus
package (prometheus, promtool) into .cache/tools without installing it: no root needed
and no daemon started. Tests that need a tool skip without it (`needs`).
"""

import shutil
import socket
from pathlib import Path

import pytest

UNPACKED = Path(__file__).resolve().parents[1] / ".cache" / "tools" / "usr" / "bin"


def find_tool(name: str) -> str | None:
    """The tool on PATH, else the one `make deploy-tools` unpacked, else None."""
    return shutil.which(name) or shutil.which(name, path=str(UNPACKED))


def needs(tool: str):
    """Skip the test when `tool` cannot be found."""
    return pytest.mark.skipif(find_tool(tool) is None, reason=f"{tool} not available (make deploy-tools)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
