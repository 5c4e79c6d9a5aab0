"""Running the console under uvicorn, one process (the store's pool serves its threads)."""

from __future__ import annotations

import logging

from .settings import WebSettings

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(settings: WebSettings | None = None) -> None:
    import uvicorn

    from .app import create_app

    settings = settings or WebSettings.from_env()
    app = create_app(settings)
    log.info("rstar console on http://%s:%d/ (token %s)", settings.host, settings.port,
             "required" if settings.token_required else "for enqueue only" if settings.token else "not set")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                # Live views hold connections open: shut down without waiting for them.
                timeout_graceful_shutdown=3)
