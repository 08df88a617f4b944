"""Bad requests against the real tritonserver: each kind gets the exact HTTP status and gRPC code that
says who must act (the client: 400 / INVALID_ARGUMENT), a message naming the input and the rule, and
fails alone: under a 64-client load with 10% malformed requests every good one still returns exactly what
transformers computes in-process."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SENTENCES

from model_repo.build import build_repository
from model_repo.options import BuildOptions
from model_repo.triton import TritonServer
from model_repo.triton_args import repository_server_args

pytestmark = pytest.mark.triton

ENCODER = "encoder"
FILL_MASK = "fill_mask"
MAX_BATCH = 8


@dataclass
class Served:
    server: TritonServer
    checkpoints: dict[str, Path]


@pytest.fixture(scope="module")
def served(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("bad-request-repos")
    repositories = [
        build_repository(
            BuildOptions(source=f"file://{checkpoints[task]}", model_name=name, max_batch_size=MAX_BATCH),
            root / name,
        ).path
        for task, name in (("feature-extraction", ENCODER), ("fill-mask", FILL_MASK))
    ]
    args = ["--strict-readiness=true", *repository_server_args()]
    args += [f"--model-repository={path}" for path in repositories]
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        yield Served(server, checkpoints)


# -- the bad requests --------------------------------------------------------------------------------------

Tensor = tuple[str, list[int], str, Any]  # name, shape, Triton datatype, numpy data


def _texts(*items: bytes) -> Tensor:
    return ("TEXT", [len(items), 1], "BYTES", np.array([[item] for item in items], dtype=np.object_))


@dataclass(frozen=True)
class BadRequest:
    kind: str
    model: str
    inputs: list[Tensor]
    message: str  # a substring of the error the server sends back
    answered_by: str  # "runtime" (our model.py) or "triton" (Triton's own validation; its message)


BAD_REQUESTS = [
    BadRequest(
        "empty text", ENCODER, [_texts(b"")], "input TEXT item 0 must be non-empty text, got empty", "runtime"
    ),
    BadRequest(
        "whitespace-only text",
        ENCODER,
        [_texts(b" \t\n ")],
        "input TEXT item 0 must be non-empty text, got whitespace only",
        "runtime",
    ),
    BadRequest(
        "non-UTF-8 text",
        ENCODER,
        [_texts(b"caf\xe9 au lait")],
        "input TEXT item 0 must be UTF-8 text: byte 0xe9 at offset 3 is not valid UTF-8",
        "runtime",
    ),
    BadRequest(
        "one empty text in a batch",
        ENCODER,
        [_texts(b"hello world", b"")],
        "input TEXT item 1 must be non-empty text, got empty",
        "runtime",
    ),
    BadRequest(
        "fill-mask text without the mask token",
        FILL_MASK,
        [_texts(b"no mask here")],
        "input TEXT must contain the mask token [MASK] within its first 64 tokens",
        "runtime",
    ),
    BadRequest(
        "wrong shape",
        ENCODER,
        [("TEXT", [1, 2], "BYTES", np.array([[b"a", b"b"]], dtype=np.object_))],
        "unexpected shape for input 'TEXT' for model 'encoder'. Expected [-1,1], got [1,2]",
        "triton",
    ),
    BadRequest(
        "wrong datatype",
        ENCODER,
        [("TEXT", [1, 1], "INT32", np.array([[3]], dtype=np.int32))],
        "inference input 'TEXT' data-type is 'INT32', but model 'encoder' expects 'BYTES'",
        "triton",
    ),
    BadRequest(
        "batch over max_batch_size",
        ENCODER,
        [_texts(*[b"hello"] * (MAX_BATCH + 1))],
        f"inference request batch-size must be <= {MAX_BATCH} for 'encoder'",
        "triton",
    ),
    BadRequest(
        "unknown extra input",
        ENCODER,
        [_texts(b"hello"), ("EXTRA", [1, 1], "BYTES", np.array([[b"x"]], dtype=np.object_))],
        "expected 1 inputs but got 2 inputs for model 'encoder'. Got input(s) ['EXTRA','TEXT']",
        "triton",
    ),
    BadRequest(
        "misspelt input",
        ENCODER,
        [("TXT", [1, 1], "BYTES", np.array([[b"hello"]], dtype=np.object_))],
        "unexpected inference input 'TXT' for model 'encoder'",
        "triton",
    ),
    BadRequest(
        "no inputs",
        ENCODER,
        [],
        "expected 1 inputs but got 0 inputs for model 'encoder'. Got input(s) [], but missing required "
        "input(s) ['TEXT']",
        "triton",
    ),
]


def call(served: Served, protocol: str, model: str, inputs: list[Tensor]) -> tuple[int | str, Any]:
    """(status, outputs or error message) through tritonclient's `protocol` client: the HTTP status
    code, or the gRPC status code's name."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    http = protocol == "http"
    module: Any = httpclient if http else grpcclient
    client = module.InferenceServerClient(served.server.http_url if http else served.server.grpc_url)
    try:
        tensors = []
        for name, shape, datatype, data in inputs:
            tensor = module.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(data, **({"binary_data": True} if http else {}))
            tensors.append(tensor)
        try:
            result = client.infer(model, tensors)
        except InferenceServerException as exc:
            status = int(exc.status()) if http else str(exc.status()).removeprefix("StatusCode.")
            return status, exc.message()
        response = result.get_response()
        names = [o["name"] for o in response["outputs"]] if http else [o.name for o in response.outputs]
        return (200 if http else "OK"), {name: result.as_numpy(name) for name in names}
    finally:
        client.close()


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=[bad.kind for bad in BAD_REQUESTS])
def test_bad_request_is_the_clients_error_over_http_and_grpc(served: Served, bad: BadRequest) -> None:
    status, message = call(served, "http", bad.model, bad.inputs)
    assert status == 400, (status, message)
    assert bad.message in message
    code, message = call(served, "grpc", bad.model, bad.inputs)
    assert code == "INVALID_ARGUMENT", (code, message)
    assert bad.message in message


def test_unknown_model_is_not_found(served: Served) -> None:
    status, message = call(served, "http", "no_such_model", [_texts(b"hello")])
    code, _ = call(served, "grpc", "no_such_model", [_texts(b"hello")])
    assert (status, code) == (404, "NOT_FOUND"), message
    assert "Request for unknown model: 'no_such_model' is not found" in message


# Bodies only a hand-written HTTP client sends. Triton's HTTP frontend (2.51, the bundled one) parses them
# itself and reports a parse failure as INTERNAL, so HTTP 500 with its parser's message; our model never
# sees them and cannot change the status (triton-inference-server/server#8762). gRPC cannot express them.
JSON_BODIES = [
    ("malformed JSON", b'{"inputs": [', "failed to parse the request JSON buffer"),
    ("no inputs key", b'{"outputs": []}', "Unable to parse 'inputs'"),
    ("not an object", b"[1, 2]", "Unable to parse 'inputs'"),
    (
        "number in BYTES data",
        json.dumps(
            {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [3]}]}
        ).encode(),
        "Unable to parse JSON bytes array",
    ),
]


def http_post(served: Served, model: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{served.server.http_url}/v2/models/{model}/infer",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, str(json.loads(exc.read())["error"])


@pytest.mark.parametrize(("kind", "body", "message"), JSON_BODIES, ids=[kind for kind, _, _ in JSON_BODIES])
def test_unparseable_json_is_answered_by_triton_itself(
    served: Served, kind: str, body: bytes, message: str
) -> None:
    status, error = http_post(served, ENCODER, body)
    assert (status, message in error) == (500, True), (status, error)


# -- 64 clients, 10% malformed -----------------------------------------------------------------------------

CLIENTS = 64
REQUESTS_PER_CLIENT = 10


def _reference_embeddings(path: Path, texts: list[str]) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    reference = {}
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
            reference[text] = model(**encoded).last_hidden_state[0, 0].numpy()
    return reference


def test_64_clients_with_10_percent_malformed_requests(served: Served) -> None:
    words = " ".join(SENTENCES).split()
    good_texts = sorted({" ".join(words[i : i + 1 + i % 9]) for i in range(len(words))} | set(SENTENCES))
    reference = _reference_embeddings(served.checkpoints["feature-extraction"], good_texts)
    encoder_bad = [bad for bad in BAD_REQUESTS if bad.model == ENCODER]
    total = CLIENTS * REQUESTS_PER_CLIENT
    # Every tenth request is malformed, cycling through every kind and both protocols.
    plan: list[tuple[str, Any]] = []
    for index in range(total):
        protocol = "http" if index % 2 == 0 else "grpc"
        if index % 10 == 9:
            plan.append((protocol, encoder_bad[(index // 10) % len(encoder_bad)]))
        else:
            plan.append((protocol, good_texts[index % len(good_texts)]))
    random.Random(15).shuffle(plan)

    def one_client(client: int) -> list[tuple[str, Any, Any, Any]]:
        outcomes = []
        for protocol, item in plan[client::CLIENTS]:
            inputs = item.inputs if isinstance(item, BadRequest) else [_texts(item.encode())]
            status, body = call(served, protocol, ENCODER, inputs)
            outcomes.append((protocol, item, status, body))
        return outcomes

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        outcomes = [outcome for chunk in pool.map(one_client, range(CLIENTS)) for outcome in chunk]

    assert len(outcomes) == total
    bad_seen = {outcome[1].kind for outcome in outcomes if isinstance(outcome[1], BadRequest)}
    assert bad_seen == {bad.kind for bad in encoder_bad}, "not every kind of bad request was sent"
    for protocol, item, status, body in outcomes:
        if isinstance(item, BadRequest):
            assert status == {"http": 400, "grpc": "INVALID_ARGUMENT"}[protocol], (protocol, item.kind, body)
            assert item.message in body, (protocol, item.kind, body)
        else:
            assert status == {"http": 200, "grpc": "OK"}[protocol], (protocol, item, body)
            np.testing.assert_allclose(body["EMBEDDING"][0], reference[item], atol=1e-4, err_msg=item)
    assert sum(isinstance(item, BadRequest) for _, item, _, _ in outcomes) == total // 10
