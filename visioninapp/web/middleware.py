"""ASGI middleware shared by the API and the edge runtime: request ids and streamed body limits.

Plain ASGI rather than BaseHTTPMiddleware: no extra task and no body buffering per request.
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visioninapp.web.errors import error_response

__all__ = ["BodyLimitMiddleware", "RequestIdMiddleware"]

log = logging.getLogger("visioninapp.api")


class RequestIdMiddleware:
    """Gives each request an id (X-Request-ID in, or a new one) for the error body and the response;
    with `log_requests`, one log line per request."""

    def __init__(self, app: ASGIApp, log_requests: bool = False) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"")[:64].decode("latin-1")
        rid = incoming or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests:
                log.info(
                    "%s %s %d %.1fms rid=%s user=%s",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                    rid,
                    scope["state"].get("user", "-"),
                )


def _too_large(size: str, limit: int) -> str:
    return f"request body too large: {size}, at most {limit:,} bytes ({limit // 2**20} MiB)"


class BodyLimitMiddleware:
    """Refuses request bodies over `limit` bytes while reading them: a declared Content-Length at once,
    a chunked (or lying) body as soon as the bytes received pass the limit. Nothing over the limit is
    ever held; what was received is dropped with the request."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = error_response(Request(scope), 413, _too_large(f"{int(declared):,} bytes", self.limit))
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the request: the app's handlers answer it in the error body
                    # (FastAPI re-raises HTTPExceptions met while it reads a body).
                    raise HTTPException(413, _too_large(f"over {self.limit:,} bytes sent", self.limit))
            return message

        await self.app(scope, limited, send)
