"""Request and response bodies (pydantic): what the OpenAPI document declares and what the server validates.

/v1/embeddings follows OpenAI's shape (input as a string, a list of strings, a token-id array or a list of them;
encoding_format float | base64; dimensions) so that the OpenAI SDKs work against it unchanged.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

TokenIds = list[int]
EmbeddingInput = Union[str, list[str], TokenIds, list[TokenIds]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: {"error": {"message", "type", "param", "code"}} (OpenAI's error shape)."""

    error: ErrorDetail


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: EmbeddingInput = Field(description="A text, a list of texts, a token-id array, or a list of token-id arrays.")
    model: str | None = Field(None, description="Ignored beyond logging: the server serves one model.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64 = the float32 little-endian bytes of each vector (the OpenAI SDK default)."
    )
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions and re-normalize (Matryoshka).")
    truncate: bool = Field(True, description="Cut texts longer than the model's max length; false = reject them (400).")
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class TextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Union[str, list[str]] = Field(description="A text or a list of texts.")
    truncate: bool = Field(True, description="Cut texts longer than the model's max length; false = reject them (400).")


class ClassifyResponse(BaseModel):
    """One prediction per input: {"label", "score", "scores"} (single-label), {"labels", "scores"} (multi-label) or
    {"value"} (regression)."""

    object: Literal["list"] = "list"
    model: str
    data: list[dict[str, Any]]


class Entity(BaseModel):
    text: str
    label: str
    start: int
    end: int


class NerItem(BaseModel):
    index: int
    tokens: list[str]
    tags: list[str]
    entities: list[dict[str, object]]


class NerResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[NerItem]


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    truncate: bool = Field(True, description="Cut pairs longer than the model's max length; false = reject them (400).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    results: list[RerankResult]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Union[str, list[str]] = Field(description="A query text or a list of them (one result list per query).")
    k: int = Field(10, ge=1, le=100, description="Results per query.")
    return_documents: bool = Field(True, description="Include each hit's stored text and metadata.")
    truncate: bool = Field(True, description="Cut queries longer than the index's max length; false = reject them (400).")


class SearchHit(BaseModel):
    """One result: `rank` counts from 1; `text` and `metadata` only with return_documents (and what the index stored)."""

    id: str
    score: float
    rank: int
    metadata: dict[str, Any] | None = None
    text: str | None = None


class IndexInfo(BaseModel):
    kind: str  # flat | hnsw | ivfpq | bm25
    count: int


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    index: IndexInfo
    results: list[list[SearchHit]]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    model: str
    task: str | None
    endpoints: list[str]
    precision: str = "fp32"  # what the engine runs: fp32 or bf16 (`serve --precision`)
    kernel: str = "torch"  # what runs its linear layers, measured on this machine: onednn-packed or torch
