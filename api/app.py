"""The FastAPI application: `/api/v1` routes, health probes, the console's static files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from visioninapp import __version__
from visioninapp.api.console import ConsoleFiles
from visioninapp.api.container import ApiContainer
from visioninapp.api.routes import (
    activity,
    datasets,
    deployments,
    models,
    projects,
    retrain,
    summaries,
    training,
)
from visioninapp.api.routes.common import no_control_characters
from visioninapp.settings import Settings
from visioninapp.web.errors import ErrorBody, install_error_handlers
from visioninapp.web.middleware import BodyLimitMiddleware, RequestIdMiddleware

__all__ = ["create_app"]

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"  # a checkout; images set console_dir

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Bad request"),
        (401, "Missing, invalid or expired Firebase ID token"),
        (403, "Your role does not allow this"),
        (404, "Not found, or not in your projects"),
        (409, "Conflicts with the current state"),
        (422, "Invalid input; `details` names each field"),
        (429, "Too many write requests"),
        (502, "The Kubernetes API failed"),
    )
}


def create_app(container: ApiContainer, background: bool = False) -> FastAPI:
    """The app over a ready container; `background` also runs the consumers and the cluster sync."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            container.start_background()
        yield
        if background:
            container.close()

    app = FastAPI(
        title="VisionInApp API",
        version=__version__,
        description="Train, register and roll out object detectors. Every `/api/v1` route needs "
        "`Authorization: Bearer <Firebase ID token>`.",
        lifespan=lifespan,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.container = container
    install_error_handlers(app)

    # Multipart uploads are spooled to disk before a route runs: their size is limited while read.
    # (The largest upload plus room for the form's other parts.)
    limit = container.settings.api_max_upload_mb * 2**20 + 2**20
    # JSON, the console's own modules and styles compressed (vendor files come precompressed; images,
    # archives, model files and event streams are sent as they are).
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1024,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"),
    )
    app.add_middleware(BodyLimitMiddleware, limit=limit)
    app.add_middleware(RequestIdMiddleware, log_requests=True)  # outermost: a 413 has the id too

    api = APIRouter(
        prefix="/api/v1",
        responses=_ERRORS,
        dependencies=[Depends(no_control_characters)],  # NUL & co. in any parameter: a 422, not a 500
    )
    for module in (projects, training, models, deployments, datasets, retrain, summaries, activity):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(_public_routes(container))

    console = container.settings.console_dir or FRONTEND
    if console.is_dir():
        settings = container.settings
        app.mount("/", ConsoleFiles(console, lambda: _console_settings(settings)), name="console")
    return app


def _console_settings(settings: Settings) -> dict[str, object]:
    """The version, and the Firebase web settings the console signs in with (None: no Firebase)."""
    firebase = None
    if settings.firebase_project_id:
        firebase = {
            "projectId": settings.firebase_project_id,
            "apiKey": settings.firebase_api_key or "local-emulator-key",
            "authDomain": settings.firebase_auth_domain or f"{settings.firebase_project_id}.firebaseapp.com",
            "emulatorUrl": settings.console_auth_emulator_url,
        }
    return {"version": __version__, "firebase": firebase}


def _public_routes(container: ApiContainer) -> APIRouter:
    """Routes without a login: the console's configuration and the health probes."""
    router = APIRouter(tags=["health"])

    @router.get("/api/config", summary="What the console needs to start (public)")
    def console_config() -> dict[str, object]:
        return _console_settings(container.settings)

    @router.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="The database answers", responses={503: {"model": ErrorBody}})
    def readyz() -> JSONResponse:
        try:
            container.db.ping()
        except Exception as error:
            return JSONResponse({"status": "unavailable", "reason": str(error)[:200]}, status_code=503)
        return JSONResponse({"status": "ok"})

    return router
