"""HTTP API of the edge runtime (`visioninapp-edge`).

`POST /v1/detect`, `GET /v1/model`, `PUT /v1/admin/model`, `GET /healthz`, `GET /readyz` (200 only
while the desired model serves; 503 with the reason otherwise), `GET /metrics` (Prometheus).
"""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, Field

from visioninapp.backends.auth import is_loopback
from visioninapp.edge.inference import ImageError
from visioninapp.edge.models import ModelSpec
from visioninapp.edge.runtime import EdgeRuntime, NoModelError
from visioninapp.settings import Settings

__all__ = ["create_app", "main"]

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
log = logging.getLogger(__name__)


class DesiredModel(BaseModel):
    uri: str = Field(description="s3:// or file:// URI of the ONNX file.")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$", description="Expected sha256 of the file.")
    format: str = Field("onnx", pattern=r"^(onnx|onnx-int8|tensorrt)$")
    version: str | None = Field(None, max_length=253, description="Name reported in responses.")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(runtime: EdgeRuntime, start: bool = True) -> FastAPI:
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

    @app.post("/v1/detect", summary="Detect objects in one image (multipart `file` or raw bytes)")
    async def detect(
        request: Request,
        conf: float | None = Query(None, ge=0, le=1, description="Confidence threshold"),
        iou: float | None = Query(None, gt=0, le=1, description="NMS IoU threshold"),
    ) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
            return _error(413, f"image too large: {length} bytes, at most {MAX_UPLOAD_BYTES}")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return _error(400, "multipart upload without a `file` part: send the image as `file`")
            data = await upload.read()
        else:
            data = await request.body()
        if len(data) > MAX_UPLOAD_BYTES:
            return _error(413, f"image too large: {len(data)} bytes, at most {MAX_UPLOAD_BYTES}")
        try:
            return await run_in_threadpool(runtime.detect, data, conf, iou)
        except ImageError as error:
            return _error(413 if "too large" in str(error) else 400, str(error))
        except NoModelError as error:
            return _error(503, str(error))
        except Exception as error:  # never crash the server on one request
            log.exception("detect failed")
            return _error(500, f"inference failed: {type(error).__name__}: {error}")

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

    @app.put("/v1/admin/model", summary="Swap to another model (verified, self-tested, atomic)")
    async def set_model(desired: DesiredModel, request: Request) -> JSONResponse:
        token = runtime.settings.edge_admin_token
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token:
            if not hmac.compare_digest(token, supplied):
                raise HTTPException(401, "a valid admin bearer token is required")
        elif not is_loopback(request.client.host if request.client else None):
            raise HTTPException(403, "the admin API is only open on loopback unless an admin token is set")
        spec = ModelSpec(desired.uri, desired.sha256, desired.format, desired.version)
        serving = await run_in_threadpool(runtime.models.set_desired, spec)
        info = runtime.model_info()
        return JSONResponse(info, status_code=200 if serving else 422)

    return app


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
