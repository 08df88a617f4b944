"""Hugging Face Text Embeddings Inference (TEI) routes (docs/tei.md), in TEI's request and response
shapes, for `huggingface_hub.InferenceClient`, LangChain's Hugging Face integration and other TEI clients:

- `POST /embed` (feature-extraction), `POST /rerank` (text-ranking), `POST /predict` (text-classification,
  single texts or pairs), `POST /tokenize`, `POST /decode`, `GET /info`;
- `POST /`: the Inference API shape `{"inputs": ..., "parameters": {...}}` that `InferenceClient(base_url)`
  posts, answered per task as TEI does (embeddings; `{"source_sentence", "sentences"}` as cosine
  similarity for an embedder and as relevance scores for a reranker; classification as a list per input).

Errors are TEI's: `{"error": message, "error_type": ...}` with 413 for a request over a limit, 422 for a
body that does not parse (naming the field), 400 for empty input and 424 when the model fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from . import scoring
from .json_body import JSONAnswer
from .model import CLASSIFICATION_TASK, EMBEDDING_TASK, RANKING_TASK
from .protocol import OpenAIError
from .scoring import Frontend

# Texts one request may carry (TEI's --max-client-batch-size); larger requests are split for Triton.
MAX_CLIENT_BATCH_SIZE = 1024
VERSION = "modeldeploy-tei-compatible"
PATHS = ("/embed", "/rerank", "/predict", "/tokenize", "/decode", "/info", "/")


class TEIError(Exception):
    def __init__(self, status: int, message: str, error_type: str = "Validation") -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type

    def response(self) -> JSONAnswer:
        return JSONAnswer({"error": self.message, "error_type": self.error_type}, status_code=self.status)


def _empty(message: str, _field: str = "") -> TEIError:
    return TEIError(400, message, "Empty")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Sequence = StrictStr | list[StrictStr]


class EmbedRequest(_Strict):
    inputs: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    normalize: StrictBool = True
    truncate: StrictBool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = None
    dimensions: StrictInt | None = None


class RerankRequest(_Strict):
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: str | None = None


class PredictRequest(_Strict):
    inputs: StrictStr | list[StrictStr] | list[list[StrictStr]]
    raw_scores: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: str | None = None


class TokenizeRequest(_Strict):
    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: str | None = None


class DecodeRequest(_Strict):
    ids: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: StrictBool = True


class InferenceApiRequest(_Strict):
    inputs: Any
    parameters: dict[str, Any] | None = None


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise TEIError(422, f"{field}: {first.get('msg', 'invalid')}") from exc


class TEI:
    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.model = frontend.model

    def require(self, task: str, route: str) -> None:
        if self.model.task != task:
            raise TEIError(
                400, f"{route} serves {task} models; {self.model.model_id} is a {self.model.task} model"
            )

    def check_batch(self, texts: list[str], truncate: bool | None) -> None:
        if not texts:
            raise _empty("`inputs` cannot be empty")
        if len(texts) > MAX_CLIENT_BATCH_SIZE:
            raise TEIError(
                413, f"batch size {len(texts)} > maximum allowed batch size {MAX_CLIENT_BATCH_SIZE}"
            )
        scoring.check_texts(texts, "inputs", _empty)
        limit = self.model.max_sequence_length
        if not truncate and limit:
            for index, ids in enumerate(self.model.tokenizer(texts)["input_ids"]):
                if len(ids) > limit:
                    raise TEIError(
                        413,
                        f"inputs[{index}] must have less than {limit} tokens. Given: {len(ids)} "
                        "(set truncate to true to cut it instead)",
                    )

    async def embed(self, body: EmbedRequest) -> list[np.ndarray[Any, Any]]:
        self.require(EMBEDDING_TASK, "/embed")
        if body.dimensions is not None:
            raise TEIError(422, "dimensions: this model cannot shorten its embeddings")
        items: list[Any] = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if items and all(isinstance(item, int) for item in items):
            items = [items]
        if items and all(isinstance(item, list) for item in items):
            texts = scoring.texts_of_token_arrays(
                self.model.vocabulary, items, "inputs", lambda m, f: TEIError(422, m)
            )
        else:
            texts = [str(item) for item in items]
        self.check_batch(texts, body.truncate)
        vectors = await self.frontend.embed_texts(texts)
        if body.normalize:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return list(vectors.astype(np.float32, copy=False))  # rows written by the JSON encoder (json_body.py)

    async def rerank(self, body: RerankRequest) -> list[dict[str, Any]]:
        self.require(RANKING_TASK, "/rerank")
        if body.raw_scores:
            raise TEIError(422, "raw_scores: this server returns the model's activated scores only")
        scoring.check_texts([body.query], "query", _empty)
        self.check_batch(body.texts, body.truncate)
        scores = await scoring.relevance(self.frontend, body.query, body.texts)
        results = []
        for index in np.argsort(-scores, kind="stable"):
            result: dict[str, Any] = {"index": int(index), "score": float(scores[index])}
            if body.return_text:
                result["text"] = body.texts[index]
            results.append(result)
        return results

    async def predict(self, body: PredictRequest) -> list[Any]:
        """TEI's rule: a string or a list of two strings is one input (a text or a pair); otherwise a
        list is a batch of inputs, and the answer is a list per input."""
        self.require(CLASSIFICATION_TASK, "/predict")
        if body.raw_scores:
            raise TEIError(422, "raw_scores: this server returns probabilities only")
        value = body.inputs
        single = isinstance(value, str) or (len(value) == 2 and all(isinstance(v, str) for v in value))
        items: list[Any] = [value] if single else list(value)
        texts, pairs = [], []
        for index, item in enumerate(items):
            parts = [item] if isinstance(item, str) else list(item)
            if len(parts) not in (1, 2):
                raise TEIError(422, f"inputs[{index}]: a text or a pair of texts")
            texts.append(parts[0])
            pairs.append(parts[1] if len(parts) == 2 else None)
        self.check_batch(texts, body.truncate)
        scoring.check_texts([p for p in pairs if p is not None], "inputs", _empty)
        answer = [self.labelled(row) for row in await self.classify(texts, pairs)]
        return answer[0] if single else answer

    async def classify(self, texts: list[str], pairs: list[str | None]) -> Any:
        return await scoring.class_probabilities(self.frontend, texts, pairs)

    def labelled(self, row: Any, top_k: int | None = None) -> list[dict[str, Any]]:
        order = np.argsort(-row, kind="stable")[: top_k or len(row)]
        return [{"label": self.model.labels[i], "score": float(row[i])} for i in order]

    def tokenize(self, body: TokenizeRequest) -> list[list[dict[str, Any]]]:
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not texts:
            raise _empty("`inputs` cannot be empty")
        tokenizer = self.model.tokenizer
        special_ids = set(tokenizer.all_special_ids)
        answer = []
        for text in texts:
            encoded = tokenizer(
                text,
                add_special_tokens=body.add_special_tokens,
                return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)),
            )
            offsets = encoded.get("offset_mapping") or [(0, 0)] * len(encoded["input_ids"])
            tokens = []
            for token_id, (start, stop) in zip(encoded["input_ids"], offsets, strict=True):
                special = token_id in special_ids
                tokens.append(
                    {
                        "id": int(token_id),
                        "text": tokenizer.convert_ids_to_tokens(token_id) if special else text[start:stop],
                        "special": special,
                        "start": None if special else int(start),
                        "stop": None if special else int(stop),
                    }
                )
            answer.append(tokens)
        return answer

    def decode(self, body: DecodeRequest) -> list[str]:
        rows: list[Any] = [body.ids] if body.ids and isinstance(body.ids[0], int) else list(body.ids)
        if not rows:
            raise _empty("`ids` cannot be empty")
        size = self.model.vocabulary.size
        for index, row in enumerate(rows):
            bad = [token for token in row if token < 0 or token >= size]
            if bad:
                raise TEIError(
                    422, f"ids[{index}]: token id {bad[0]} is outside the vocabulary (0..{size - 1})"
                )
        tokenizer = self.model.tokenizer
        return [str(tokenizer.decode(row, skip_special_tokens=body.skip_special_tokens)) for row in rows]

    async def info(self) -> dict[str, Any]:
        batch = await scoring.max_batch_size(self.frontend.backend, self.model)
        labels = {str(i): label for i, label in enumerate(self.model.labels)}
        kinds: dict[str, Any] = {
            EMBEDDING_TASK: {"embedding": {"pooling": "see the model's sentence-transformers config"}},
            CLASSIFICATION_TASK: {
                "classifier": {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}
            },
            RANKING_TASK: {"reranker": {"id2label": {"0": "score"}, "label2id": {"score": 0}}},
        }
        return {
            "model_id": self.model.model_id,
            "model_sha": None,
            "model_dtype": "see the model repository",
            "model_type": kinds.get(self.model.task, {}),
            "max_concurrent_requests": 512,
            "max_input_length": self.model.max_sequence_length,
            "max_batch_tokens": batch * self.model.max_sequence_length,
            "max_batch_requests": batch,
            "max_client_batch_size": MAX_CLIENT_BATCH_SIZE,
            "auto_truncate": False,
            "tokenization_workers": 1,
            "version": VERSION,
        }

    async def inference_api(self, body: InferenceApiRequest) -> Any:
        """`POST /` as the Hugging Face Inference API (what InferenceClient(base_url) posts)."""
        parameters = {key: value for key, value in (body.parameters or {}).items() if value is not None}
        inputs = body.inputs
        if isinstance(inputs, dict):
            source, sentences = inputs.get("source_sentence"), inputs.get("sentences")
            if (
                not isinstance(source, str)
                or not isinstance(sentences, list)
                or set(inputs)
                - {
                    "source_sentence",
                    "sentences",
                }
            ):
                raise TEIError(422, "inputs: {source_sentence: text, sentences: [text, ...]}")
            texts = [str(s) for s in sentences]
            self.check_batch([source, *texts], parameters.get("truncate"))
            if self.model.task == RANKING_TASK:
                scores = await scoring.relevance(self.frontend, source, texts)
                return [float(value) for value in scores]
            self.require(EMBEDDING_TASK, "sentence similarity")
            vectors = await self.frontend.embed_texts([source, *texts])
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
            return [float(value) for value in vectors[1:] @ vectors[0]]
        if self.model.task == EMBEDDING_TASK:
            unknown = set(parameters) - {"normalize", "truncate"}
            if unknown:
                raise TEIError(422, f"parameters.{sorted(unknown)[0]} is not supported")
            try:
                request = EmbedRequest.model_validate({"inputs": inputs, **parameters})
            except ValidationError as exc:
                raise TEIError(422, f"inputs: {exc.errors()[0].get('msg', 'invalid')}") from exc
            return await self.embed(request)
        if self.model.task == CLASSIFICATION_TASK:
            unknown = set(parameters) - {"top_k", "truncate"}
            if unknown:
                raise TEIError(422, f"parameters.{sorted(unknown)[0]} is not supported")
            items = [inputs] if isinstance(inputs, str) else inputs
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise TEIError(422, "inputs: a text or a list of texts")
            self.check_batch(items, parameters.get("truncate"))
            rows = await self.classify(items, [None] * len(items))
            return [self.labelled(row, parameters.get("top_k")) for row in rows]
        raise TEIError(400, f"POST / does not serve {self.model.task} models with these inputs")


def register(app: FastAPI, frontend: Frontend) -> None:
    tei = TEI(frontend)

    async def answer(work: Any) -> JSONAnswer:
        try:
            return JSONAnswer(await work)
        except TEIError as exc:
            return exc.response()
        except OpenAIError as exc:  # from Triton: the model failed or refused the input
            status = 413 if exc.status == 400 else 424
            return TEIError(status, exc.message, "Validation" if status == 413 else "Backend").response()

    async def parsed(request: Request, model: type[BaseModel], run: Any) -> Any:
        return run(await _parse(request, model))

    async def call(request: Request, model: type[BaseModel], run: Any) -> JSONAnswer:
        async def work() -> Any:
            result = await parsed(request, model, run)
            return await result if hasattr(result, "__await__") else result

        return await answer(work())

    def post(path: str, model: type[BaseModel], run: Any) -> None:
        async def route(request: Request) -> JSONAnswer:
            return await call(request, model, run)

        app.add_api_route(path, route, methods=["POST"], name=run.__name__)

    for path, model, run in (
        ("/embed", EmbedRequest, tei.embed),
        ("/rerank", RerankRequest, tei.rerank),
        ("/predict", PredictRequest, tei.predict),
        ("/tokenize", TokenizeRequest, tei.tokenize),
        ("/decode", DecodeRequest, tei.decode),
        ("/", InferenceApiRequest, tei.inference_api),
    ):
        post(path, model, run)

    @app.get("/info")
    async def info() -> JSONAnswer:
        return await answer(tei.info())
