"""External command-line tools some tests use when they are present.

`make deploy-tools` installs docker-compose with apt and unpacks Debian's prometheus
package (prometheus, promtool) into .cache/tools without installing it: no root needed
and no daemon started. Tests that need a tool skip without it.
"""

import shutil
from pathlib import Path

UNPACKED = Path(__file__).resolve().parents[1] / ".cache" / "tools" / "usr" / "bin"


def find_tool(name: str) -> str | None:
    """The tool on PATH, else the one `make deploy-tools` unpacked, else None."""
    return shutil.which(name) or shutil.which(name, path=str(UNPACKED))
