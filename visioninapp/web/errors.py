"""One error body for every failure: `{"error": {status, code, message, details, requestId}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "ErrorBody", "ErrorDetail", "install_error_handlers"]

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    502: "upstream_failed",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="Where the problem is, e.g. `spec.hyperparameters.epochs`.")
    message: str = Field(description="What is wrong there and how to fix it.")


class ErrorInfo(BaseModel):
    status: int = Field(description="HTTP status code.", examples=[404])
    code: str = Field(description="Stable machine-readable code.", examples=["not_found"])
    message: str = Field(description="What went wrong, for people.", examples=["project 'vision' not found"])
    details: list[ErrorDetail] = Field(default_factory=list, description="Per-field problems.")
    request_id: str | None = Field(
        None, alias="requestId", description="Quote this when reporting a problem."
    )


class ErrorBody(BaseModel):
    error: ErrorInfo


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        details: list[ErrorDetail] | None = None,
        code: str | None = None,
        retry_after: int = 60,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.code = code or _CODES.get(status, "error")
        self.retry_after = retry_after  # seconds, sent as Retry-After with a 429


def error_response(
    request: Request,
    status: int,
    message: str,
    details: list[ErrorDetail] | None = None,
    code: str | None = None,
    retry_after: int = 60,
) -> JSONResponse:
    info = ErrorInfo(
        status=status,
        code=code or _CODES.get(status, "error"),
        message=message,
        details=details or [],
        requestId=getattr(request.state, "request_id", None),
    )
    headers = {"Retry-After": str(retry_after)} if status == 429 else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="visioninapp"'}
    return JSONResponse(
        ErrorBody(error=info).model_dump(mode="json", by_alias=True), status_code=status, headers=headers
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(
            request, error.status, error.message, error.details, error.code, error.retry_after
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            ErrorDetail(field=_location(e.get("loc", ())), message=str(e.get("msg"))) for e in error.errors()
        ]
        summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3])
        return error_response(request, 422, f"invalid request: {summary}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(request, error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal error; the request id is in the server log")
