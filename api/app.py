"""The FastAPI application: `/api/v1` routes, health probes, the console's static files."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from visioninapp import __version__
from visioninapp.api.errors import ErrorBody, install_error_handlers
from visioninapp.api.routes import activity, datasets, deployments, models, projects, summaries, training
from visioninapp.api.services import Services

__all__ = ["create_app"]

log = logging.getLogger("visioninapp.api")
FRONTEND = Path(__file__).resolve().parent.parent / "frontend"

_ERRORS = {
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


def create_app(services: Services, background: bool = False) -> FastAPI:
    """The app over ready services; `background` also runs the consumers and the cluster sync."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            services.start_background()
        yield
        if background:
            services.close()

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
    app.state.services = services
    install_error_handlers(app)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
        request.state.request_id = rid
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        log.info(
            "%s %s %d %.1fms rid=%s user=%s",
            request.method,
            request.url.path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
            rid,
            getattr(request.state, "user", "-"),
        )
        return response

    api = APIRouter(prefix="/api/v1", responses=_ERRORS)  # type: ignore[arg-type]
    for module in (projects, training, models, deployments, datasets, summaries, activity):
        api.include_router(module.router)
    app.include_router(api)

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["health"], summary="The database answers", responses={503: {"model": ErrorBody}}
    )
    def readyz() -> JSONResponse:
        try:
            services.db.ping()
        except Exception as error:
            return JSONResponse({"status": "unavailable", "reason": str(error)[:200]}, status_code=503)
        return JSONResponse({"status": "ok"})

    if FRONTEND.is_dir():
        app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="console")
    return app
