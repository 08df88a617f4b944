"""Repositories built from tiny checkpoints and the real all-MiniLM-L6-v2, served by the real tritonserver
bundled in nvidia-pytriton (CPU), queried over HTTP and gRPC, compared with in-process transformers."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SENTENCES, infer_texts

from model_repo.build import build_repository
from model_repo.options import BuildOptions
from model_repo.triton import TritonServer
from model_repo.triton_args import repository_server_args

pytestmark = pytest.mark.triton

MODEL_NAMES = {
    "text-classification": "classifier",
    "token-classification": "ner",
    "feature-extraction": "encoder",
    "fill-mask": "fill_mask",
}  # text-generation is served and tested in test_generation_serving.py
MINILM = "minilm"


@dataclass
class Served:
    server: TritonServer
    checkpoints: dict[str, Path]
    minilm: Path


@pytest.fixture(scope="module")
def served(
    checkpoints: dict[str, Path], minilm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("repos")
    repositories = []
    for task, name in MODEL_NAMES.items():
        # Small batches keep warm-up quick; instances are left at one so tests see cross-request batching.
        options = BuildOptions(source=f"file://{checkpoints[task]}", model_name=name, max_batch_size=8)
        repositories.append(build_repository(options, root / name).path)
    minilm_options = BuildOptions(source=f"file://{minilm_path}", model_name=MINILM, max_batch_size=32)
    repositories.append(build_repository(minilm_options, root / MINILM).path)
    # Exactly the flags a container would get, plus one repository per model.
    args = ["--strict-readiness=true", *repository_server_args()]
    args += [f"--model-repository={path}" for path in repositories]
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        yield Served(server, checkpoints, minilm_path)


def http_infer(served: Served, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    return infer_texts(served.server.http_url, model, texts)


def grpc_infer(served: Served, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    result = client.infer(model, [text])
    return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}


PROTOCOLS = [http_infer, grpc_infer]


def transformers_outputs(
    served: Served, task: str, auto_class: str, texts: list[str]
) -> tuple[Any, list[Any]]:
    """The task's checkpoint run by transformers on each text alone (truncated to the tiny models' 64
    positions): (the model, one output per text)."""
    import torch
    import transformers

    path = served.checkpoints[task]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = getattr(transformers, auto_class).from_pretrained(str(path)).eval()
    with torch.inference_mode():
        encoded = [tokenizer(text, return_tensors="pt", truncation=True, max_length=64) for text in texts]
        return model, [model(**batch) for batch in encoded]


@pytest.mark.parametrize("infer", PROTOCOLS, ids=["http", "grpc"])
def test_text_classification_matches_transformers(served: Served, infer: Any) -> None:
    import torch

    model, references = transformers_outputs(
        served, "text-classification", "AutoModelForSequenceClassification", SENTENCES
    )
    outputs = infer(served, MODEL_NAMES["text-classification"], SENTENCES)
    assert outputs["SCORES"].shape == (len(SENTENCES), 3)
    for row, reference in enumerate(references):
        expected = torch.softmax(reference.logits[0], -1).numpy()
        np.testing.assert_allclose(outputs["SCORES"][row], expected, atol=1e-5)
        assert outputs["LABEL"][row][0].decode() == model.config.id2label[int(expected.argmax())]
        assert outputs["SCORE"][row][0] == pytest.approx(float(expected.max()), abs=1e-5)


@pytest.mark.parametrize("infer", PROTOCOLS, ids=["http", "grpc"])
def test_token_classification_matches_pipeline(served: Served, infer: Any) -> None:
    from transformers import pipeline

    path = served.checkpoints["token-classification"]
    reference = pipeline("token-classification", model=str(path), aggregation_strategy="simple", device="cpu")
    outputs = infer(served, MODEL_NAMES["token-classification"], SENTENCES)
    found_any = False
    for row, sentence in enumerate(SENTENCES):
        entities = json.loads(outputs["ENTITIES"][row][0])
        expected = reference(sentence)
        assert [(e["entity_group"], e["start"], e["end"]) for e in entities] == [
            (e["entity_group"], e["start"], e["end"]) for e in expected
        ]
        for got, want in zip(entities, expected, strict=True):
            assert got["score"] == pytest.approx(float(want["score"]), abs=1e-5)
            assert got["word"] == sentence[got["start"] : got["end"]]
            found_any = True
    assert found_any, "the random model tagged nothing: the comparison would be vacuous"


@pytest.mark.parametrize("infer", PROTOCOLS, ids=["http", "grpc"])
def test_feature_extraction_is_cls_of_last_hidden_state(served: Served, infer: Any) -> None:
    _, references = transformers_outputs(served, "feature-extraction", "AutoModel", SENTENCES)
    outputs = infer(served, MODEL_NAMES["feature-extraction"], SENTENCES)
    assert outputs["EMBEDDING"].shape == (len(SENTENCES), 32)
    for row, reference in enumerate(references):
        expected = reference.last_hidden_state[0, 0].numpy()
        np.testing.assert_allclose(outputs["EMBEDDING"][row], expected, atol=1e-4)


@pytest.mark.parametrize("infer", PROTOCOLS, ids=["http", "grpc"])
def test_fill_mask_matches_pipeline(served: Served, infer: Any) -> None:
    from transformers import pipeline

    path = served.checkpoints["fill-mask"]
    reference = pipeline("fill-mask", model=str(path), top_k=5, device="cpu")
    texts = [
        "paris is the [MASK] of france",
        "[MASK] world",
        "the quick brown [MASK] jumps over the lazy dog",
    ]
    outputs = infer(served, MODEL_NAMES["fill-mask"], texts)
    assert outputs["TOKENS"].shape == (3, 5)
    for row, text in enumerate(texts):
        expected = reference(text)
        np.testing.assert_allclose(outputs["SCORES"][row], [e["score"] for e in expected], atol=1e-5)
        assert [t.decode() for t in outputs["TOKENS"][row]] == [e["token_str"] for e in expected]


def test_minilm_embeddings_match_sentence_transformers_under_32_concurrent_clients(served: Served) -> None:
    from sentence_transformers import SentenceTransformer

    words = SENTENCES[5].split()
    sentences = [" ".join(words[: 1 + i % len(words)] * (1 + i // len(words))) for i in range(64)]
    sentences += [sentence.capitalize() + "?" for sentence in SENTENCES]
    reference = SentenceTransformer(str(served.minilm), device="cpu").encode(sentences, convert_to_numpy=True)

    def one_client(index: int) -> list[tuple[int, np.ndarray]]:
        mine = list(range(index, len(sentences), 32))
        results = []
        for position in mine:
            embedding = http_infer(served, MINILM, [sentences[position]])["EMBEDDING"][0]
            results.append((position, embedding))
        return results

    with ThreadPoolExecutor(max_workers=32) as pool:
        collected = [item for chunk in pool.map(one_client, range(32)) for item in chunk]
    assert sorted(position for position, _ in collected) == list(range(len(sentences)))
    for position, embedding in collected:
        want = reference[position]
        cosine = float(np.dot(embedding, want) / (np.linalg.norm(embedding) * np.linalg.norm(want)))
        assert cosine >= 0.9999, (sentences[position], cosine)
    assert _metric(served, "nv_inference_exec_count", MINILM) < _metric(
        served, "nv_inference_count", MINILM
    ), "32 concurrent clients never shared an execution: the dynamic batcher did not batch"


def test_each_bert_encoder_runs_its_batches_unpadded_after_checking_it_at_load(served: Served) -> None:
    # Every checkpoint here is BERT-family, so each passed the load-time comparison with its own forward
    # (the padded fallback and its calibration: tests/model_repo/test_unpadded_forward.py).
    log = served.server.log()
    for name in [*MODEL_NAMES.values(), MINILM]:
        assert f"{name}: each batch runs as one forward pass over its real tokens on cpu" in log, name
        assert f"{name}: padded forward passes" not in log, name


def _metric(served: Served, name: str, model: str) -> float:
    with urllib.request.urlopen(served.server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- bad requests: each fails alone and the server keeps serving -----------------------------------------


def _assert_still_serving(served: Served) -> None:
    outputs = http_infer(served, MODEL_NAMES["text-classification"], ["hello world"])
    assert outputs["SCORES"].shape == (1, 3)


def test_wrong_dtype_is_rejected(served: Served) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(served.server.http_url)
    wrong = httpclient.InferInput("TEXT", [1, 1], "INT32")
    wrong.set_data_from_numpy(np.array([[3]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match=r"(?i)data.?type|expected"):
        client.infer(MODEL_NAMES["text-classification"], [wrong])
    _assert_still_serving(served)


def test_wrong_shape_is_rejected(served: Served) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    wrong = grpcclient.InferInput("TEXT", [1, 2], "BYTES")
    wrong.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"(?i)shape"):
        client.infer(MODEL_NAMES["text-classification"], [wrong])
    _assert_still_serving(served)


def test_empty_text_fails_only_its_request(served: Served) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="input TEXT item 0 must be non-empty text, got empty"):
        http_infer(served, MODEL_NAMES["feature-extraction"], [""])
    # Concurrent good requests batched with bad ones still succeed.
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(
                http_infer, served, MODEL_NAMES["feature-extraction"], ["  " if i % 2 else "hello world"]
            )
            for i in range(8)
        ]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result()["EMBEDDING"].shape)
            except InferenceServerException as exc:
                outcomes.append(str(exc))
    assert outcomes[0::2] == [(1, 32)] * 4
    assert all("must be non-empty text, got whitespace only" in str(o) for o in outcomes[1::2])
    _assert_still_serving(served)


def test_fill_mask_without_mask_token_is_an_error(served: Served) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="mask token"):
        grpc_infer(served, MODEL_NAMES["fill-mask"], ["no mask here"])
    _assert_still_serving(served)


def test_text_longer_than_the_model_maximum_is_truncated(served: Served) -> None:
    import torch

    long_text = " ".join(SENTENCES * 20)  # far beyond the 64 positions of the tiny model
    outputs = http_infer(served, MODEL_NAMES["text-classification"], [long_text])
    _, (reference,) = transformers_outputs(
        served, "text-classification", "AutoModelForSequenceClassification", [long_text]
    )
    expected = torch.softmax(reference.logits[0], -1).numpy()
    np.testing.assert_allclose(outputs["SCORES"][0], expected, atol=1e-5)
