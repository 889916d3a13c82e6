"""The server's edges: limits, the error shape and its OpenAPI declarations, and the ASGI middleware that checks the
API key and the body size and records request metrics before a route runs."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from encoderforge import EncoderforgeError
from encoderforge.serving import metrics
from encoderforge.serving.schemas import ErrorBody


@dataclass
class Limits:
    """Args:
    max_items: inputs per request (OpenAI allows 2048).
    max_chars: characters per text; longer texts are cut (truncate=true) or rejected (413).
    max_body_bytes: request body size; larger bodies get 413 before they are parsed.
    max_batch_tokens: the batcher's token budget per forward pass.
    max_wait_ms: how long a batch waits for more requests once the queue is empty (0: requests arriving while the
        model runs form the next batch; no added latency at low load).
    max_queue: requests waiting; beyond it 429 with Retry-After.
    timeout_s: a request still unanswered after this gets 503 (its work is dropped if not started).
    """

    max_items: int = 2048
    max_chars: int = 20000
    max_body_bytes: int = 4 << 20
    max_batch_tokens: int = 8192
    max_wait_ms: float = 0.0
    max_queue: int = 256
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_items", "max_chars", "max_body_bytes", "max_batch_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise EncoderforgeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise EncoderforgeError("--max-wait-ms must be >= 0 and --timeout-s > 0")


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type, param, headers


def error(status: int, message: str, type: str = "invalid_request_error", param: str | None = None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": str(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Invalid input (texts too long with truncate=false, token ids outside the vocabulary, ...)",
        401: "Missing or wrong API key",
        404: "This model does not serve the endpoint",
        413: "Too many inputs, a text too long, or a body too large",
        422: "The body is not valid JSON or does not match the schema",
        429: "The queue is full; retry after the Retry-After seconds",
        503: "Timed out waiting for the model, or the server is draining",
    }.items()
}


POSITIVE = ("1", "true", "yes", "relevant", "positive", "entailment", "match", "duplicate")


def positive_label(labels: list[str]) -> str:
    """The class whose probability ranks documents for a classifier cross-encoder: a conventional positive name, else
    the last label (binary "0"/"1" sorts "1" last)."""
    for lab in labels:
        if str(lab).lower() in POSITIVE:
            return lab
    return labels[-1]


OPEN_PATHS = ("/health", "/ready", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect")


class Guard:
    """API key, body size and request metrics as plain ASGI middleware (Starlette's BaseHTTPMiddleware costs
    time per request and hides client disconnects from the routes)."""

    def __init__(self, inner: Any, *, limits: Limits, api_key: str | None):
        self.inner = inner
        self.lim = limits
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if self.key_digest is not None and path not in OPEN_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            # digests of equal length: the comparison leaks neither content nor the key's length
            ok = hmac.compare_digest(hashlib.sha256(given.strip()).digest(), self.key_digest)
            if scheme.lower() != b"bearer" or not ok:
                metrics.observe("other", 401, 0.0)
                response = error(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                 "authentication_error", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
                return await response(scope, receive, send)
        size = headers.get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.lim.max_body_bytes):
            metrics.observe("other", 413, 0.0)
            response = error(413, f"request body over {self.lim.max_body_bytes} bytes; send fewer or shorter inputs")
            return await response(scope, receive, send)
        t0, status = time.perf_counter(), [500]
        if size is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # a chunked body has no Content-Length: read it here, bounded, and hand it on as one message
            chunks, seen, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                more = message.get("more_body", False)
                if seen > self.lim.max_body_bytes:
                    metrics.observe("other", 413, 0.0)
                    response = error(413, f"request body over {self.lim.max_body_bytes} bytes; send fewer or shorter inputs")
                    return await response(scope, receive, send)
            body = b"".join(chunks)
            replayed = [False]

            async def replay() -> Any:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = replay

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.inner(scope, receive, send_status)
        finally:
            route = scope.get("route")
            metrics.observe(getattr(route, "path", "other"), status[0], time.perf_counter() - t0)
