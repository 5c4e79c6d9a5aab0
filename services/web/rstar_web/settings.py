"""Wiring of the web console, read once from `RSTAR_*` environment variables.

`RSTAR_WEB_HOST` (default 127.0.0.1) and `RSTAR_WEB_PORT` (8080) say where it listens,
`RSTAR_DATABASE_URL` which store it reads, `RSTAR_WEB_TOKEN` the shared secret,
`RSTAR_EVAL_DIR` (default runs/eval) and `RSTAR_EVOLVE_DIR` (default runs/evolve) where it
finds `rstar eval` report folders (relative to its working directory). Bound to a
loopback address, read-only pages need no token; bound anywhere else, every request needs
it (so the console refuses to start without one). Enqueueing always needs it: without a
token the upload is disabled.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

__all__ = ["WebSettings", "is_loopback"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Where `rstar eval` and `rstar evolve` write by default (their --out / --work-dir).
DEFAULT_EVAL_DIR = "runs/eval"
DEFAULT_EVOLVE_DIR = "runs/evolve"
# Shortest token accepted: a guessable secret protects nothing.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class WebSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str | None = None
    token: str | None = None
    # Report folders of `rstar eval`: its default root, and the evolve runs' work dir.
    eval_dir: str = DEFAULT_EVAL_DIR
    evolve_dir: str = DEFAULT_EVOLVE_DIR
    # How often the live view looks for a newer snapshot of a running search.
    live_poll_s: float = 1.0
    # Seconds between SSE keep-alive comments (proxies close silent connections).
    keepalive_s: float = 15.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {self.port!r}")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"RSTAR_WEB_TOKEN must have at least {MIN_TOKEN_CHARS} characters")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"binding the web console to {self.host} needs RSTAR_WEB_TOKEN "
                             "(only 127.0.0.1 / localhost may serve read-only pages without one)")
        if self.live_poll_s <= 0 or self.keepalive_s <= 0:
            raise ValueError("live_poll_s and keepalive_s must be > 0")

    @property
    def token_required(self) -> bool:
        """Every request needs the token (the console is reachable from other machines)."""
        return not is_loopback(self.host)

    @classmethod
    def from_env(cls, **overrides) -> "WebSettings":
        values = {
            "host": os.environ.get("RSTAR_WEB_HOST", DEFAULT_HOST),
            "port": int(os.environ.get("RSTAR_WEB_PORT", DEFAULT_PORT)),
            "database_url": os.environ.get("RSTAR_DATABASE_URL"),
            "token": os.environ.get("RSTAR_WEB_TOKEN") or None,
            "eval_dir": os.environ.get("RSTAR_EVAL_DIR") or DEFAULT_EVAL_DIR,
            "evolve_dir": os.environ.get("RSTAR_EVOLVE_DIR") or DEFAULT_EVOLVE_DIR,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
