"""The web page, served by the same service at ``/ui/`` (static files, no external asset).

``webui/index.html``, ``app.js`` and ``app.css`` call the service's own routes (``/model_info``,
``/predict``, ``/explain``, ``/similar``) with the API key the page asks for when the service
answers 401. The files carry no data, so the request guard lets ``GET /ui/...`` through without
the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["WEBUI_DIR", "WEBUI_PATH", "webui_app"]

WEBUI_PATH = "/ui"
WEBUI_DIR = Path(__file__).with_name("webui")


def webui_app() -> Any:
    """The Starlette app to mount at :data:`WEBUI_PATH` (``/ui/`` serves ``index.html``)."""
    from starlette.staticfiles import StaticFiles

    return StaticFiles(directory=WEBUI_DIR, html=True)
