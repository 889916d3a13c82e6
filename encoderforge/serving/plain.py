"""The baseline `bench serve` compares against: what users write today — FastAPI + sentence-transformers, one
`model.encode` per request, no batching across requests. OpenAI-shaped /v1/embeddings (float only) so the same load
runs against it.

    python -m encoderforge.serving.plain MODEL_DIR PORT [THREADS]
"""

import sys
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel


class Req(BaseModel):  # module level: FastAPI resolves the annotation
    input: str | list[str]
    model: str | None = None


def make_app(model_dir: str) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(req: Req) -> dict[str, Any]:  # a sync route: FastAPI runs it on its thread pool, as users do
        texts = [req.input] if isinstance(req.input, str) else req.input
        vecs = model.encode(texts, normalize_embeddings=True)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)],
        }

    return app


if __name__ == "__main__":
    import torch
    import uvicorn

    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
