"""`python -m rstar_web`: the console as configured by RSTAR_WEB_* (see `settings`)."""

import logging
import os

from .server import serve

logging.basicConfig(level=os.environ.get("RSTAR_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
serve()
