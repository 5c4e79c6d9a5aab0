"""`python -m rstar_store migrate [--url URL] [--revision REV]`: bring a database's schema up to date.

Meant for deployment (an init container, a compose one-shot service) and for operators;
the URL defaults to `RSTAR_DATABASE_URL`, then the embedded SQLite file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .db import migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rstar_store", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    upgrade = commands.add_parser("migrate", help="upgrade the schema (Alembic upgrade)")
    upgrade.add_argument("--url", help="database URL (default: $RSTAR_DATABASE_URL, else sqlite:///./rstar.db)")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        migrate(args.url, args.revision)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, not a traceback
        print(f"migration failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
