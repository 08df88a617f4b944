"""Rerank, score and classify in the shapes retrieval stacks speak (docs/rerank.md):

- `POST /v1/rerank`, `/v2/rerank`: Cohere's (and Jina's, vLLM's) rerank: `query`, `documents` (strings or
  objects with `text`), `top_n`, `return_documents`; `results` sorted by `relevance_score`, each with the
  document's `index`. A `top_n` above the number of documents returns them all, as Cohere's API does.
- `POST /v1/score`: vLLM's score: `text_1` against `text_2` (one against many, or pairwise).
- `POST /v1/classify`: vLLM's classify for text-classification models: a label and the probabilities of
  every label (the checkpoint's `id2label`) per input; an input may be a pair of texts.

Errors use the OpenAI shape of the rest of this server (vLLM answers these routes the same way). Unknown
fields are refused, not ignored: a misspelt `top_n` would otherwise rank everything silently.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from . import scoring
from .json_body import JSONAnswer
from .model import CLASSIFICATION_TASK, RANKING_TASK
from .protocol import invalid
from .scoring import Frontend

# app.py's unless_disconnected: the work, cancelled if the HTTP client leaves first.
Guard = Callable[[Request, Awaitable[Any]], Awaitable[Any]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentObject(_Strict):
    text: StrictStr


class RerankRequest(_Strict):
    model: str
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    # Cohere's client sends these when set: a scheduling hint (ignored) and per-document truncation.
    priority: int | None = None
    max_tokens_per_doc: int | None = Field(default=None, ge=1)


class ScoreRequest(_Strict):
    model: str
    text_1: StrictStr | list[StrictStr]
    text_2: StrictStr | list[StrictStr]


class ClassifyRequest(_Strict):
    model: str
    input: StrictStr | list[StrictStr | list[StrictStr]]


def _document_texts(documents: list[str | DocumentObject]) -> list[str]:
    if not documents:
        raise invalid("documents must hold at least one document", "documents")
    texts = [item if isinstance(item, str) else item.text for item in documents]
    scoring.check_texts(texts, "documents", invalid)
    return texts


def _truncate(frontend: Frontend, texts: list[str], tokens: int | None) -> list[str]:
    """Cohere's max_tokens_per_doc: each document cut to its first `tokens` tokens."""
    if tokens is None:
        return texts
    tokenizer = frontend.model.tokenizer
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [
        str(tokenizer.decode(row[:tokens])) if len(row) > tokens else text
        for row, text in zip(ids, texts, strict=True)
    ]


async def rerank(frontend: Frontend, body: RerankRequest, version: str) -> dict[str, Any]:
    frontend.check_model(body.model, RANKING_TASK, f"/{version}/rerank")
    scoring.check_texts([body.query], "query", invalid)
    documents = _document_texts(body.documents)
    scores = await scoring.relevance(
        frontend, body.query, _truncate(frontend, documents, body.max_tokens_per_doc)
    )
    order = np.argsort(-scores, kind="stable")[: body.top_n or len(documents)]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": int(index), "relevance_score": float(scores[index])}
        if body.return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    # Each pair holds the query: counted once per document, as the model reads it.
    query_tokens = frontend.model.count_tokens([body.query])
    tokens = query_tokens * len(documents) + frontend.model.count_tokens(documents)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": frontend.model.model_id,
        "results": results,
        "meta": {"api_version": {"version": version[1:]}, "billed_units": {"search_units": 1}},
        "usage": {"total_tokens": tokens},
    }


async def score(frontend: Frontend, body: ScoreRequest) -> dict[str, Any]:
    frontend.check_model(body.model, RANKING_TASK, "/v1/score")
    firsts = [body.text_1] if isinstance(body.text_1, str) else body.text_1
    seconds = [body.text_2] if isinstance(body.text_2, str) else body.text_2
    for name, texts in (("text_1", firsts), ("text_2", seconds)):
        if not texts:
            raise invalid(f"{name} must not be empty", name)
        scoring.check_texts(texts, name, invalid)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    elif len(firsts) != len(seconds):
        raise invalid(
            f"text_1 holds {len(firsts)} texts and text_2 {len(seconds)}: "
            "give one text_1, or as many as text_2",
            "text_2",
        )
    scores = await scoring.pair_scores(frontend, firsts, seconds)
    tokens = frontend.model.count_tokens(firsts) + frontend.model.count_tokens(seconds)
    return {
        "id": f"score-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": frontend.model.model_id,
        "data": [{"index": i, "object": "score", "score": float(value)} for i, value in enumerate(scores)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def split_pairs(items: list[str | list[str]], field: str) -> tuple[list[str], list[str | None]]:
    """Texts and their optional second texts from items that are a text or a [text, text_pair] list."""
    texts: list[str] = []
    pairs: list[str | None] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            pairs.append(None)
        elif len(item) == 2:
            texts.append(item[0])
            pairs.append(item[1])
            scoring.check_texts([item[1]], f"{field}[{index}]", invalid)
        else:
            raise invalid(f"{field}[{index}] must be a text or a pair [text, text_pair]", f"{field}[{index}]")
    scoring.check_texts(texts, field, invalid)
    return texts, pairs


async def classify(frontend: Frontend, body: ClassifyRequest) -> dict[str, Any]:
    frontend.check_model(body.model, CLASSIFICATION_TASK, "/v1/classify")
    items: list[str | list[str]] = [body.input] if isinstance(body.input, str) else list(body.input)
    if not items:
        raise invalid("input must not be empty", "input")
    texts, pairs = split_pairs(items, "input")
    probabilities = await scoring.class_probabilities(frontend, texts, pairs)
    labels = frontend.model.labels
    data = [
        {
            "index": index,
            "label": labels[int(row.argmax())],
            "probs": [float(value) for value in row],
            "num_classes": len(labels),
        }
        for index, row in enumerate(probabilities)
    ]
    tokens = frontend.model.count_tokens(texts)
    return {
        "id": f"classify-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": frontend.model.model_id,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


RERANK_PATHS = ("/v1/rerank", "/v2/rerank", "/v1/score")
CLASSIFY_PATHS = ("/v1/classify",)


def _rerank_route(frontend: Frontend, version: str, guard: Guard) -> Any:
    async def route(request: Request, body: RerankRequest) -> Response:
        return JSONAnswer(await guard(request, rerank(frontend, body, version)))

    return route


def register(app: FastAPI, frontend: Frontend, guard: Guard) -> None:
    for version in ("v1", "v2"):
        app.post(f"/{version}/rerank")(_rerank_route(frontend, version, guard))

    @app.post("/v1/score")
    async def score_route(body: ScoreRequest) -> Response:
        return JSONAnswer(await score(frontend, body))

    @app.post("/v1/classify")
    async def classify_route(body: ClassifyRequest) -> Response:
        return JSONAnswer(await classify(frontend, body))
