"""rstar web console: runs, search trees (final and growing live), rounds and models in a browser.

`create_app(settings)` builds the FastAPI app over the store; `serve(settings)` runs it
under uvicorn (`rstar web`, `python -m rstar_web`). Every page is also a JSON API under
`/api`, documented at `/docs`. Not here: anything that writes results or trains.
"""

from .app import create_app
from .server import serve
from .settings import WebSettings

__all__ = ["WebSettings", "create_app", "serve"]
