"""The FastAPI application: routes over the dynamic batcher, limits, API key, errors in one shape.

Every error is {"error": {...}} with a 4xx status that names what to fix; bad input never reaches the model.
"""

from __future__ import annotations

import asyncio
import base64
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from encoderforge import EncoderforgeError
from encoderforge.serving import metrics
from encoderforge.serving.batcher import Batcher, QueueFull
from encoderforge.serving.guard import ERRORS, ApiError, Guard, Limits, error, positive_label
from encoderforge.serving.model import Served
from encoderforge.serving.schemas import (
    ClassifyResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Health,
    NerItem,
    NerResponse,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TextsRequest,
)
from encoderforge.serving.search import SearchIndex, register_search


def create_app(
    served: Served, limits: Limits | None = None, *, api_key: str | None = None, index: SearchIndex | None = None
) -> FastAPI:
    """The app serving `served`; `api_key` (read by the caller from a file or the environment) guards every
    route except /health, /ready and the docs; `index` (loaded and checked against the model) adds /v1/search."""
    lim = limits or Limits()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoderforge-model")  # one model call at a time
    state: dict[str, Any] = {"draining": False}
    embed_batcher: Batcher[np.ndarray] = Batcher(
        lambda ids: list(served.embed_ids(ids)), max_tokens=lim.max_batch_tokens, max_wait_ms=lim.max_wait_ms,
        max_queue=lim.max_queue, pool=pool,
    )  # fmt: skip
    head_batcher: Batcher[dict] = Batcher(
        lambda texts: served.predict(texts), max_tokens=lim.max_batch_tokens, max_wait_ms=lim.max_wait_ms,
        max_queue=lim.max_queue, pool=pool,
    )  # fmt: skip
    endpoints = ["/v1/embeddings"]
    if served.pairs and served.kind in ("classify", "regress", "rerank"):
        endpoints.append("/v1/rerank")  # a cross-encoder: its score, regression value or positive-class probability
    elif served.kind in ("classify", "multilabel", "regress"):
        endpoints.append("/v1/classify")
    positive = positive_label(served.predictor.meta["labels"]) if served.kind == "classify" and served.predictor else None

    def relevance(p: dict[str, Any]) -> float:
        for key in ("score", "value"):  # a `rerank` run's logit, a `regress` run's value
            if key in p:
                return float(p[key])
        return float(p["scores"][positive])

    if served.kind == "ner":
        endpoints.append("/v1/ner")
    if index is not None:
        endpoints.append("/v1/search")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embed_batcher.start()
        head_batcher.start()
        served.embed_ids([served.engine.tokenize(["warm up"]).ids[0]])  # first-call costs before /ready says yes
        state["ready"] = True
        yield
        state["draining"] = True  # uvicorn stopped accepting; finish what is queued
        await embed_batcher.stop()
        await head_batcher.stop()
        pool.shutdown(wait=True)

    app = FastAPI(
        title="encoderforge serve",
        version="1",
        lifespan=lifespan,
        description=f"Serving {served.name} ({served.kind or 'embeddings'}); endpoints: {', '.join(endpoints)}.",
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return error(e.status, e.message, e.type, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return error(422, f"{where}: {first.get('msg', 'invalid request')}", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        detail = str(e.detail)
        if e.status_code == 400 and "parsing the body" in detail:  # FastAPI's words for undecodable bytes
            detail = "the body could not be decoded: send JSON encoded as UTF-8 (Content-Type: application/json)"
        return error(e.status_code, detail, "not_found" if e.status_code == 404 else "invalid_request_error", headers=e.headers)

    @app.exception_handler(EncoderforgeError)
    async def _input(request: Request, e: EncoderforgeError) -> JSONResponse:  # the model refused this input
        return error(400, str(e), param="input")

    app.add_middleware(Guard, limits=lim, api_key=api_key)

    async def run(request: Request, batcher: Batcher, items: list[Any], tokens: int) -> list[Any]:
        """Queue the work and wait for it; a client that disconnects meanwhile has its work dropped (if its batch
        has not started), a request past timeout_s gets 503."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(batcher.submit(items, tokens=tokens))
        deadline = loop.time() + lim.timeout_s
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=min(0.1, max(0.0, deadline - loop.time())))
                if done:
                    return task.result()
                if await request.is_disconnected():
                    task.cancel()
                    metrics.disconnected()
                    raise ApiError(499, "the client closed the request; its work was dropped")
                if loop.time() >= deadline:
                    task.cancel()
                    raise ApiError(503, f"no answer within {lim.timeout_s:g} s; retry later", type="timeout",
                                   headers={"Retry-After": "2"})  # fmt: skip
        except asyncio.CancelledError:  # uvicorn gave up on the request (shutdown): drop its queued work too
            task.cancel()
            raise
        except QueueFull:
            raise ApiError(429, f"queue full ({lim.max_queue} requests waiting); retry shortly", type="rate_limit_error",
                           headers={"Retry-After": "1"}) from None  # fmt: skip

    def texts_of(value: str | list[str], truncate: bool, param: str = "input") -> list[str]:
        """The request's texts, checked against the limits (`param`: the field named in error messages)."""
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ApiError(400, f"{param} is empty; send at least one text", param=param)
        if len(texts) > lim.max_items:
            raise ApiError(413, f"{len(texts)} inputs > max {lim.max_items} per request; split the request", param=param)
        out = []
        for i, t in enumerate(texts):
            if len(t) > lim.max_chars:
                if not truncate:
                    raise ApiError(
                        413,
                        f"{param}[{i}] has {len(t)} characters > max {lim.max_chars}; shorten it or send truncate=true",
                        param=param,
                    )  # noqa: E501
                t = t[: lim.max_chars]
            out.append(t)
        return out

    def refuse_truncated(enc: Any, truncate: bool) -> None:
        """With truncate=false, a text longer than the model's max length is a 400 (else it is cut)."""
        if enc.truncated and not truncate:
            i = enc.truncated[0]
            raise ApiError(
                400,
                f"input[{i}] is longer than the model's {served.engine.max_length} tokens; shorten it or send truncate=true",
                param="input",
            )

    def check_tokens(texts: list[str], truncate: bool) -> None:
        if not truncate:
            refuse_truncated(served.engine.tokenize(texts), truncate)

    def token_ids(req: EmbeddingRequest) -> list[list[int]]:
        inp: Any = req.input  # pydantic has checked the union; tell the cases apart
        if isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            arrays: list[list[int]] = [list(inp)]
        elif isinstance(inp, list) and inp and all(isinstance(x, list) for x in inp):
            arrays = [list(x) for x in inp]
        else:
            texts = texts_of(inp, req.truncate)  # type: ignore[arg-type]
            enc = served.engine.tokenize(texts)
            refuse_truncated(enc, req.truncate)
            return enc.ids
        if len(arrays) > lim.max_items:
            raise ApiError(413, f"{len(arrays)} inputs > max {lim.max_items} per request; split the request", param="input")
        for i, ids in enumerate(arrays):
            if not ids or any(not 0 <= x < served.vocab for x in ids):
                raise ApiError(400, f"input[{i}]: token ids must be a non-empty list in [0, {served.vocab})", param="input")
            if len(ids) > served.engine.max_length:
                if not req.truncate:
                    raise ApiError(
                        400, f"input[{i}] has {len(ids)} tokens > {served.engine.max_length}; send truncate=true", param="input"
                    )  # noqa: E501
                arrays[i] = ids[: served.engine.max_length]
        return arrays

    @app.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingResponse}, **ERRORS})
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        """Embeddings in OpenAI's shape (mean pooling, L2-normalized; an `embed` run's own pooling and dims)."""
        if req.input == [] or req.input == "":
            raise ApiError(400, "input is empty; send at least one text", param="input")
        if req.dimensions is not None and req.dimensions > served.dim:
            raise ApiError(400, f"dimensions={req.dimensions} > the model's {served.dim}", param="dimensions")
        small = (
            isinstance(req.input, str)
            and len(req.input) < 4096
            or (
                isinstance(req.input, list)
                and len(req.input) <= 8
                and all(isinstance(x, str) and len(x) < 512 for x in req.input)
            )
        )
        ids = token_ids(req) if small else await asyncio.to_thread(token_ids, req)  # big inputs off the event loop
        tokens = sum(map(len, ids))
        rows = np.asarray(await run(request, embed_batcher, ids, tokens), dtype=np.float32)
        if req.dimensions is not None:
            rows = rows[:, : req.dimensions]
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        metrics.tokens(tokens)
        b64 = req.encoding_format == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(r.astype("<f4").tobytes()).decode() if b64 else r}
            for i, r in enumerate(rows)
        ]
        body = {"object": "list", "data": data, "model": served.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        # orjson writes the float32 rows directly: JSON encoding is a real share of a small request's time
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    async def predict(request: Request, texts: Sequence[str]) -> list[dict]:
        return await run(request, head_batcher, list(texts), sum(len(t) // 4 + 2 for t in texts))  # chars/4 ~ tokens

    def head_texts(req: TextsRequest) -> list[str]:
        """The texts of a head request, checked: limits, no blank text (the head needs a word), token length."""
        texts = texts_of(req.input, req.truncate)
        if any(not t.split() for t in texts):
            raise ApiError(400, "an input is blank; send text with at least one word", param="input")
        check_tokens(texts, req.truncate)
        return texts

    if "/v1/classify" in endpoints:

        @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)
        async def classify(req: TextsRequest, request: Request) -> ClassifyResponse:
            """The fine-tuned head's predictions, one per input."""
            return ClassifyResponse(model=served.name, data=await predict(request, head_texts(req)))

    if "/v1/ner" in endpoints:

        @app.post("/v1/ner", response_model=NerResponse, responses=ERRORS)
        async def ner(req: TextsRequest, request: Request) -> NerResponse:
            """Token tags and entities per input (texts split on whitespace)."""
            preds = await predict(request, head_texts(req))
            return NerResponse(model=served.name, data=[NerItem(index=i, **p) for i, p in enumerate(preds)])

    if "/v1/rerank" in endpoints:

        @app.post("/v1/rerank", response_model=RerankResponse, responses=ERRORS)
        async def rerank(req: RerankRequest, request: Request) -> RerankResponse:
            """Score (query, document) pairs with the cross-encoder head; results best first."""
            docs = texts_of(req.documents, req.truncate) if req.documents else []
            if not docs:
                raise ApiError(400, "documents is empty; send at least one", param="documents")
            query = texts_of(req.query, req.truncate)[0].replace("\t", " ")
            if not query.strip() or any(not d.strip() for d in docs):
                raise ApiError(400, "the query or a document is blank; send text with at least one word", param="documents")
            pairs = [f"{query}\t{d.replace(chr(9), ' ')}" for d in docs]
            check_tokens([p.replace("\t", " ") for p in pairs], req.truncate)
            scores = [relevance(p) for p in await predict(request, pairs)]
            order = sorted(range(len(docs)), key=lambda i: -scores[i])[: req.top_n or len(docs)]
            return RerankResponse(
                model=served.name,
                results=[
                    RerankResult(index=i, relevance_score=scores[i], document=docs[i] if req.return_documents else None)
                    for i in order
                ],
            )

    if index is not None:
        register_search(
            app, served, index, texts_of=texts_of, embed=lambda request, ids, tokens: run(request, embed_batcher, ids, tokens)
        )

    facts: dict[str, Any] = {
        "model": served.name,
        "task": served.kind,
        "endpoints": endpoints,
        "precision": served.engine.precision,
        "kernel": served.engine.kernel,
    }

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness: the process answers (also while draining)."""
        return Health(status="draining" if state["draining"] else "ok", **facts)

    @app.get("/ready", response_model=Health, responses={503: ERRORS[503]})
    async def ready() -> Response:
        """Readiness: the model is loaded and warm and the server is not draining (load balancers route on this)."""
        if state["draining"] or not state.get("ready"):
            return error(503, "not ready (starting or draining)", "unavailable")
        return JSONResponse(Health(status="ok", **facts).model_dump())

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: ERRORS[401]})
    async def prometheus() -> Response:
        """Prometheus text format; summed over all workers when served with --workers N."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    embed_batcher.on_drop = head_batcher.on_drop = metrics.dropped
    embed_batcher.on_depth = head_batcher.on_depth = lambda: metrics.queue_depth(embed_batcher.waiting + head_batcher.waiting)
    app.state.batchers = (embed_batcher, head_batcher)
    app.state.pid = os.getpid()
    return app
