"""The web console: the static files of service/ui/ at ``/ui/``, and a start page at ``/`` linking to it.

The console is plain HTML, CSS and JavaScript modules: no build step, nothing fetched from another
host, and it calls the gateway's public API the way any client does (no route exists for it alone).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

router = APIRouter(include_in_schema=False)

_START_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>spikeserve</title><link rel="icon" href="data:,">
<style>body{font:16px system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}</style>
</head><body><h1>spikeserve</h1>
<p>Serving spiking neural networks, with spike telemetry in every answer.</p>
<ul>
<li><a href="/ui/">Console</a>: classify images and event recordings, see spike rates, manage models</li>
<li><a href="/docs">API documentation</a> (<a href="/openapi.json">OpenAPI</a>)</li>
<li><a href="/metrics">Prometheus metrics</a></li>
</ul></body></html>
"""


@router.get("/", name="start_page")
async def start_page() -> HTMLResponse:
    return HTMLResponse(_START_PAGE)


def mount_console(app: FastAPI) -> None:
    """Serve service/ui/ at ``/ui/`` (``index.html`` for the folder itself)."""
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
