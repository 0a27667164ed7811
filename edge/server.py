"""HTTP API of the edge runtime (`visioninapp-edge`).

`POST /v1/detect`, `GET /v1/model`, `PUT /v1/admin/model`, `GET /healthz`, `GET /readyz` (200 only
while the desired model serves; 503 with the reason otherwise), `GET /metrics` (Prometheus),
`GET /v1/cameras` (each camera's state and totals) and `GET /v1/cameras/{name}/detections` (the
camera's detections live, as server-sent events: one `data:` JSON object per processed frame).

Every error has the project's one error body, `{"error": {status, code, message, details,
requestId}}` (`visioninapp.web.errors`: FastAPI and pydantic only, which the edge image has). Request
bodies are limited while they are read (`MAX_UPLOAD_BYTES`, chunked bodies included): a body over the
limit is answered 413 and never held whole, and an image whose header declares too many pixels is
answered 413 before any pixel is decoded (`visioninapp.images`).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, Field

from visioninapp.backends.auth import is_loopback
from visioninapp.edge.models import ModelSpec
from visioninapp.edge.runtime import EdgeRuntime, ModelGovernedError, NoModelError
from visioninapp.images import ImageError
from visioninapp.settings import Settings
from visioninapp.web.errors import ApiError, install_error_handlers
from visioninapp.web.middleware import BodyLimitMiddleware, RequestIdMiddleware

__all__ = ["MAX_UPLOAD_BYTES", "create_app", "main"]

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
KEEPALIVE_SECONDS = 15.0  # an SSE comment line so that proxies keep an idle stream open
log = logging.getLogger(__name__)


class DesiredModel(BaseModel):
    uri: str = Field(description="s3:// or file:// URI of the ONNX file.")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$", description="Expected sha256 of the file.")
    format: str = Field("onnx", pattern=r"^(onnx|onnx-int8|tensorrt)$")
    version: str | None = Field(None, max_length=253, description="Name reported in responses.")


def create_app(runtime: EdgeRuntime, start: bool = True, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start:
            runtime.start()
        try:
            yield
        finally:
            if start:
                await run_in_threadpool(runtime.stop)

    app = FastAPI(title="VisionInApp edge runtime", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer, a 413 included, has the id
    _add_detect_route(app, runtime, max_upload_bytes)
    _add_status_routes(app, runtime)
    _add_camera_routes(app, runtime)
    _add_admin_route(app, runtime)
    return app


async def _image_bytes(request: Request) -> bytes:
    """The image of a detect request: the multipart `file` part, or else the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "multipart upload without a `file` part: send the image as `file`")
            return await upload.read()
    return await request.body()  # at most max_upload_bytes: BodyLimitMiddleware


def _add_detect_route(app: FastAPI, runtime: EdgeRuntime, max_upload_bytes: int) -> None:
    @app.post(
        "/v1/detect",
        summary="Detect objects in one image (multipart `file` or raw bytes)",
        description=f"A JPEG, PNG, WebP, TIFF or BMP of at most {max_upload_bytes // 2**20} MiB and "
        "8192x8192 pixels. 413: the body or the image is too large (the pixel count is read from the "
        "header, before decoding); 415: not one of those formats; 400: empty or corrupt; 503: no model "
        "loaded yet.",
    )
    async def detect(
        request: Request,
        conf: float | None = Query(None, ge=0, le=1, description="Confidence threshold"),
        iou: float | None = Query(None, gt=0, le=1, description="NMS IoU threshold"),
    ) -> Any:
        data = await _image_bytes(request)
        try:
            return await run_in_threadpool(runtime.detect, data, conf, iou)
        except ImageError as error:
            raise ApiError(error.status, str(error)) from None
        except NoModelError as error:
            raise ApiError(503, str(error)) from None
        except Exception as error:  # never crash the server on one request
            log.exception("detect failed")
            raise ApiError(500, f"inference failed: {type(error).__name__}: {error}") from None


def _add_status_routes(app: FastAPI, runtime: EdgeRuntime) -> None:
    @app.get("/healthz", summary="Liveness: the process serves HTTP")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 only while the desired model serves")
    async def readyz() -> JSONResponse:
        info = runtime.model_info()
        body = {
            "ready": info["ready"],
            "reason": info["reason"],
            "provider": info["serving"]["provider"] if info["serving"] else None,
            "model": info["serving"]["version"] if info["serving"] else None,
        }
        return JSONResponse(body, status_code=200 if info["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        runtime.metrics.ready.set(1 if runtime.models.ready else 0)
        return PlainTextResponse(
            generate_latest(runtime.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
        )

    @app.get("/v1/model", summary="The model serving, the desired one and why they differ")
    async def model() -> dict[str, Any]:
        return runtime.model_info()


def _add_camera_routes(app: FastAPI, runtime: EdgeRuntime) -> None:
    @app.get("/v1/cameras", summary="Each camera of this node: state, last error and totals")
    async def cameras() -> dict[str, Any]:
        return {"cameras": runtime.streams.states()}

    @app.get(
        "/v1/cameras/{name}/detections",
        summary="A camera's detections live (server-sent events)",
        description="One `data:` line per processed frame: `{camera, seq, time, latencyMs, model, image, "
        "detections}`. A consumer that reads slower than the camera loses the oldest results, never "
        "delays the pipeline. 404: no such camera on this node.",
        response_class=StreamingResponse,
    )
    async def detections(name: str, request: Request) -> StreamingResponse:
        if name not in runtime.streams.cameras:
            known = ", ".join(runtime.streams.cameras) or "none"
            raise ApiError(404, f"no camera {name!r} on this node (cameras: {known})")
        subscriber = runtime.streams.broadcaster.subscribe(name)

        async def events() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        message = await asyncio.wait_for(subscriber.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if message is None:  # the camera was removed from this node
                        return
                    yield f"data: {json.dumps(message, separators=(',', ':'))}\n\n"
            finally:
                runtime.streams.broadcaster.unsubscribe(name, subscriber)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )


def _check_admin(runtime: EdgeRuntime, request: Request) -> None:
    """401 without the admin token when one is set; 403 off loopback when none is."""
    token = runtime.settings.edge_admin_token
    supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if token:
        if not hmac.compare_digest(token.encode(), supplied.encode()):
            raise ApiError(401, "a valid admin bearer token is required")
    elif not is_loopback(request.client.host if request.client else None):
        raise ApiError(403, "the admin API is only open on loopback unless an admin token is set")


def _add_admin_route(app: FastAPI, runtime: EdgeRuntime) -> None:
    @app.put(
        "/v1/admin/model",
        summary="Swap to another model (verified, self-tested, atomic)",
        description="For a device whose model nobody else sets. When a deployment governs this node's "
        "model (`VISIONINAPP_EDGE_MODEL_URI`, set by the operator from the EdgeDeployment, or a watched "
        "`VISIONINAPP_EDGE_MODEL_CONFIG` file), the swap is refused with 409 and nothing changes: the "
        "runtime would put the deployment's model back moments later, and a node serving another model "
        "than its rollout believes would defeat the rollout's health gate. Change the EdgeDeployment "
        "(or the config file) instead. 200: the model now serves; 422: it was rejected (checksum, load "
        "or self-test) and the previous one keeps serving; 401/403: no admin token, or not on loopback.",
    )
    async def set_model(desired: DesiredModel, request: Request) -> JSONResponse:
        _check_admin(runtime, request)
        spec = ModelSpec(desired.uri, desired.sha256, desired.format, desired.version)
        try:
            serving = await run_in_threadpool(runtime.set_model_by_admin, spec)
        except ModelGovernedError as error:
            raise ApiError(409, str(error)) from None
        if not serving:
            reason = runtime.models.not_ready_reason or f"model {spec.label} was not swapped in"
            raise ApiError(422, reason, code="model_rejected")
        return JSONResponse(runtime.model_info())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="visioninapp-edge",
        description="Serve YOLO detection on an edge node: the last-good cached model at once, then the "
        "desired model (VISIONINAPP_EDGE_MODEL_* or a watched config file) after verification.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, help="port (default: VISIONINAPP_EDGE_PORT, 8080)")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvicorn

    uvicorn.run(
        create_app(EdgeRuntime(settings)),
        host=args.host,
        port=args.port or settings.edge_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
