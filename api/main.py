"""`visioninapp-api`: serve the API, migrate the database, run the stream consumers, rebuild search."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

import typer

from visioninapp.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

app = typer.Typer(help="The VisionInApp API server and its maintenance commands.", no_args_is_help=True)


def app_from_environment() -> FastAPI:
    """The app of one server process, from VISIONINAPP_* settings (uvicorn factory)."""
    from visioninapp.api.app import create_app
    from visioninapp.api.container import ApiContainer

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    background = os.environ.get("VISIONINAPP_API_BACKGROUND", "true") == "true"
    return create_app(ApiContainer.build(settings), background=background)


@app.command()
def serve(
    host: str = typer.Option(None, help="Listen address (VISIONINAPP_API_HOST)."),
    port: int = typer.Option(None, help="Port (VISIONINAPP_API_PORT)."),
    workers: int = typer.Option(1, min=1, help="Server processes (one per core is a good start)."),
    consumers: bool = typer.Option(True, help="Also run the stream consumers and the cluster sync."),
) -> None:
    """Serve /api/v1, the OpenAPI document and the console."""
    import uvicorn

    settings = Settings()
    os.environ["VISIONINAPP_API_BACKGROUND"] = "true" if consumers else "false"
    uvicorn.run(
        "visioninapp.api.main:app_from_environment",
        factory=True,
        workers=workers,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,  # our middleware logs each request with its id
    )


@app.command()
def migrate() -> None:
    """Bring the SQL schema to the newest migration."""
    from visioninapp.api.db import Database

    settings = Settings()
    Database(settings.resolved_database_url).migrate()
    typer.echo(f"database at {settings.resolved_database_url.split('@')[-1]} is up to date")


@app.command()
def consume() -> None:
    """Run only the stream consumers (training-events, edge-events) until SIGTERM."""
    from visioninapp.api.consumers import make_consumers, run_consumers
    from visioninapp.api.db import Database
    from visioninapp.factory import build_event_bus, build_search_index

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    db = Database(settings.resolved_database_url)
    db.migrate()
    bus, search = build_event_bus(settings), build_search_index(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = run_consumers(make_consumers(settings, db, bus, search), stop)
    stop.wait()
    for thread in threads:
        thread.join(10)
    bus.close()
    db.dispose()


def main() -> None:
    try:
        app()
    except Exception as error:  # configuration problems: one clear line, non-zero exit
        print(f"visioninapp-api: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
