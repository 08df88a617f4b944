"""The OpenAI-compatible frontend (model_repo/openai_frontend) in front of the real tritonserver, called
with the real `openai` SDK (`OpenAI(base_url=...)`).

Served here: the real all-MiniLM-L6-v2 (embeddings), the tiny Llama of conftest with a chat template
written into its tokenizer config (chat and completions), and the tiny GPT-2 (no chat template). Each
frontend runs as its own process, started exactly as `modeldeploy serve --openai` starts it.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from conftest import all_at_once, make_gpt2_checkpoint, make_llama_checkpoint, triton_request_count
from test_generation_serving import Served, metrics, reference, wait_for

from model_repo.build import BuildOptions, build_repository
from model_repo.openai_local import LocalFrontend
from model_repo.triton import TritonServer, free_port, free_ports
from model_repo.triton_args import repository_server_args

pytestmark = [pytest.mark.triton, pytest.mark.slow]

CHAT, PLAIN, MINILM = "chat-llama", "plain-gpt2", "minilm"
MINILM_HELD = "minilm-held"
# A template of the kind checkpoints ship (role markers, generation prompt), written into the tokenizer
# config the way `tokenizer.save_pretrained` stores one.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "you answer in short sentences"},
    {"role": "user", "content": "what is the capital of france"},
]
SENTENCES = [
    "How do I run a language model on my Kubernetes cluster?",
    "Deploying transformer models on Kubernetes with GPU nodes and an inference server.",
    "The recipe needs two cups of flour, a pinch of salt and three eggs.",
]


@dataclass
class Stack:
    server: TritonServer
    paths: dict[str, Path]
    urls: dict[str, str]
    repositories: dict[str, Path]

    @property
    def served(self) -> Served:  # the generation tests' helpers (metrics) take this shape
        return Served(self.server, self.paths)

    def client(self, model: str) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.urls[model], api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("openai")
    paths = {CHAT: make_llama_checkpoint(root / "llama"), PLAIN: make_gpt2_checkpoint(root / "gpt2")}
    config_file = paths[CHAT] / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_file.write_text(json.dumps(config))
    paths[MINILM] = minilm_path
    options = {
        CHAT: BuildOptions(source=f"file://{paths[CHAT]}", model_name=CHAT, max_concurrent_sequences=8),
        PLAIN: BuildOptions(source=f"file://{paths[PLAIN]}", model_name=PLAIN),
        MINILM: BuildOptions(source=f"file://{minilm_path}", model_name=MINILM, max_batch_size=2),
        # MiniLM again, each batch held in Triton's queue for 200 ms: a call stays in flight long enough
        # that requests sent together reach the sidecar while it runs (the sharing test).
        MINILM_HELD: BuildOptions(
            source=f"file://{minilm_path}",
            model_name=MINILM_HELD,
            max_batch_size=2,
            max_queue_delay_us=200_000,
        ),
    }
    repositories = {
        name: build_repository(option, root / f"repo-{name}").path for name, option in options.items()
    }
    args = ["--strict-readiness=true", *repository_server_args()]
    args += [f"--model-repository={path}" for path in repositories.values()]
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        frontends = [
            LocalFrontend(repositories[name], server.grpc_url, free_port(), log_path=root / f"{name}.log")
            for name in (CHAT, PLAIN, MINILM)
        ]
        try:
            for frontend in frontends:
                frontend.start()
            urls = {
                name: frontend.base_url
                for name, frontend in zip((CHAT, PLAIN, MINILM), frontends, strict=True)
            }
            yield Stack(server, paths, urls, repositories)
        finally:
            for frontend in frontends:
                frontend.stop()


def _greedy_chat_chunks(client: Any, max_tokens: int, **options: Any) -> list[Any]:
    """The chunks of CHAT's greedy answer to MESSAGES, streamed; ``options`` as the SDK takes them."""
    return list(
        client.chat.completions.create(
            model=CHAT, messages=MESSAGES, max_tokens=max_tokens, temperature=0, stream=True, **options
        )
    )


def _prompt_tokens(path: Path, prompt: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(path))(prompt)["input_ids"])


def _chat_prompt(path: Path) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return str(tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True))


def _error(stack: Stack, model: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, JSON) of a raw POST, to check the error shape itself."""
    response = httpx.post(stack.urls[model] + path, json=body, timeout=60)
    return response.status_code, response.json()


# -- models ---------------------------------------------------------------------------------------------


def test_models_lists_the_deployment_name_and_its_task(stack: Stack) -> None:
    models = stack.client(MINILM).models.list().data
    assert [model.id for model in models] == [MINILM]
    assert models[0].model_extra is not None
    assert models[0].model_extra["metadata"]["task"] == "feature-extraction"
    card = stack.client(CHAT).models.retrieve(CHAT)
    assert card.id == CHAT and card.model_extra is not None
    assert card.model_extra["metadata"]["task"] == "text-generation"


# -- embeddings -----------------------------------------------------------------------------------------


def test_embeddings_equal_in_process_sentence_transformers_in_both_encodings(stack: Stack) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    want = SentenceTransformer(str(stack.paths[MINILM]), device="cpu").encode(
        SENTENCES, convert_to_numpy=True
    )
    client = stack.client(MINILM)
    # Three texts through a max_batch_size of 2: the frontend splits them into two Triton requests.
    as_float = client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format="float")
    # Without encoding_format the SDK asks for base64 itself and decodes it into floats.
    sdk_default = client.embeddings.create(model=MINILM, input=SENTENCES)
    as_base64 = client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format="base64")
    tokenizer = AutoTokenizer.from_pretrained(str(stack.paths[MINILM]))
    tokens = sum(len(ids) for ids in tokenizer(SENTENCES)["input_ids"])
    for response in (as_float, sdk_default, as_base64):
        assert [item.index for item in response.data] == [0, 1, 2]
        assert response.model == MINILM
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    for index, expected in enumerate(want):
        got = np.array(as_float.data[index].embedding, dtype=np.float32)
        assert got.shape == (384,)
        cosine = float(np.dot(got, expected) / (np.linalg.norm(got) * np.linalg.norm(expected)))
        assert cosine >= 0.9999, (SENTENCES[index], cosine)
        # base64 carries the same little-endian float32 values, bit for bit.
        np.testing.assert_array_equal(np.array(sdk_default.data[index].embedding, dtype=np.float32), got)
        encoded = as_base64.data[index].embedding
        assert isinstance(encoded, str)
        decoded = struct.unpack("<384f", base64.b64decode(encoded))
        np.testing.assert_array_equal(np.array(decoded, dtype=np.float32), got)


def test_embeddings_dimensions_only_when_the_model_has_them(stack: Stack) -> None:
    import openai

    client = stack.client(MINILM)
    same = client.embeddings.create(model=MINILM, input="hello", dimensions=384, encoding_format="float")
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MINILM, input="hello", dimensions=128)
    assert refused.value.param == "dimensions" and "384" in refused.value.message


def test_concurrent_embedding_requests_share_triton_calls_and_keep_their_answers(
    stack: Stack, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [f"{SENTENCES[i % 3]} (request {i})" for i in range(12)]
    want = SentenceTransformer(str(stack.paths[MINILM]), device="cpu").encode(texts, convert_to_numpy=True)
    # One call in flight at a time: requests that arrive while it runs wait and share the next one.
    with LocalFrontend(
        stack.repositories[MINILM_HELD],
        stack.server.grpc_url,
        free_port(),
        log_path=tmp_path / "one-call.log",
        calls_in_flight=1,
    ) as frontend:
        url = f"{frontend.base_url}/embeddings"
        before = triton_request_count(stack.server.metrics_url, MINILM_HELD)
        answers: dict[int, list[float]] = {}

        def ask(index: int) -> None:
            response = httpx.post(url, json={"model": MINILM_HELD, "input": texts[index]}, timeout=120)
            response.raise_for_status()
            answers[index] = response.json()["data"][0]["embedding"]

        all_at_once(len(texts), ask)
        calls = triton_request_count(stack.server.metrics_url, MINILM_HELD) - before
    assert sorted(answers) == list(range(len(texts)))
    for index, expected in enumerate(want):
        got = np.array(answers[index], dtype=np.float32)
        cosine = float(np.dot(got, expected) / (np.linalg.norm(got) * np.linalg.norm(expected)))
        assert cosine >= 0.9999, (texts[index], cosine)
    # max_batch_size 2: at least 6 calls; fewer than 12 means some requests went to Triton together.
    assert len(texts) / 2 <= calls < len(texts), calls


# -- completions and chat -------------------------------------------------------------------------------


def test_completion_greedy_equals_in_process_generate_with_usage(stack: Stack) -> None:
    prompt = "the quick brown fox"
    text, count = reference(stack.paths[CHAT], prompt, 12)
    result = stack.client(CHAT).completions.create(model=CHAT, prompt=prompt, max_tokens=12, temperature=0)
    assert result.choices[0].text == text
    assert result.usage is not None
    assert result.usage.completion_tokens == count
    assert result.usage.prompt_tokens == _prompt_tokens(stack.paths[CHAT], prompt)
    assert result.usage.total_tokens == result.usage.prompt_tokens + count
    assert result.choices[0].finish_reason == ("length" if count == 12 else "stop")
    echoed = stack.client(CHAT).completions.create(
        model=CHAT, prompt=prompt, max_tokens=12, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + text


def test_streamed_completion_adds_up_to_generate_and_reports_usage_last(stack: Stack) -> None:
    prompt = "paris is the capital of"
    text, count = reference(stack.paths[CHAT], prompt, 16)
    chunks = list(
        stack.client(CHAT).completions.create(
            model=CHAT,
            prompt=prompt,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1  # really streamed
    assert "".join(pieces) == text
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count
    assert chunks[-1].usage.prompt_tokens == _prompt_tokens(stack.paths[CHAT], prompt)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")


def test_chat_uses_the_checkpoints_template_and_equals_generate(stack: Stack) -> None:
    prompt = _chat_prompt(stack.paths[CHAT])
    assert prompt.endswith("<|assistant|>")
    text, count = reference(stack.paths[CHAT], prompt, 10)
    client = stack.client(CHAT)
    result = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        max_completion_tokens=10,
        temperature=0,  # type: ignore[arg-type]
    )
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == text
    assert result.usage is not None
    assert result.usage.prompt_tokens == _prompt_tokens(stack.paths[CHAT], prompt)
    assert result.usage.completion_tokens == count
    # The legacy max_tokens means the same.
    legacy = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,  # type: ignore[arg-type]
    )
    assert legacy.choices[0].message.content == text
    chunks = _greedy_chat_chunks(client, 10, stream_options={"include_usage": True})
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == count


def test_without_a_token_limit_the_answer_runs_to_the_deployments_max_tokens(stack: Stack) -> None:
    config = httpx.get(f"http://{stack.server.http_url}/v2/models/{PLAIN}/config", timeout=30).json()
    limit = int(config["parameters"]["max_tokens_limit"]["string_value"])
    context = int(config["parameters"]["max_sequence_length"]["string_value"])
    prompt = "hello world"
    room = context - _prompt_tokens(stack.paths[PLAIN], prompt)
    text, count = reference(stack.paths[PLAIN], prompt, min(limit, room))
    result = stack.client(PLAIN).completions.create(model=PLAIN, prompt=prompt, temperature=0)
    assert result.choices[0].text == text
    assert result.usage is not None and result.usage.completion_tokens == count > 16  # not OpenAI's 16
    assert result.choices[0].finish_reason == ("length" if count == min(limit, room) else "stop")
    chat_prompt = _chat_prompt(stack.paths[CHAT])
    chat = stack.client(CHAT).chat.completions.create(
        model=CHAT,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        extra_body={"min_tokens": 80},  # the tiny Llama may end early by itself; 80 > the old default 64
    )
    assert chat.usage is not None and chat.usage.completion_tokens > 64
    expected, _ = reference(stack.paths[CHAT], chat_prompt, 40)
    assert (chat.choices[0].message.content or "").startswith(expected)


def test_controls_and_logprobs_in_openais_shapes(stack: Stack) -> None:
    client = stack.client(CHAT)
    prompt = "the quick brown fox"
    plain = client.completions.create(model=CHAT, prompt=prompt, max_tokens=12, temperature=0)
    penalised = client.completions.create(
        model=CHAT,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        frequency_penalty=1.5,
        presence_penalty=0.5,
        extra_body={"repetition_penalty": 1.3, "top_k": 5},
        logprobs=2,
    )
    assert penalised.choices[0].text != plain.choices[0].text  # the controls reached the runtime
    logprobs = penalised.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == penalised.choices[0].text
    assert all(value is not None and value <= 0 for value in logprobs.token_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    chat = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 8
    assert "".join(item.token for item in content) == chat.choices[0].message.content
    for item in content:
        assert len(item.top_logprobs) == 3 and item.top_logprobs[0].logprob >= item.logprob - 1e-6
    chunks = _greedy_chat_chunks(client, 8, logprobs=True)
    streamed = [
        item
        for chunk in chunks
        if chunk.choices and chunk.choices[0].logprobs
        for item in chunk.choices[0].logprobs.content or []
    ]
    assert [i.token for i in streamed] == [i.token for i in content]
    # Two requests may run with different thread counts (the runtime measures each pass's), so their
    # float sums may differ in the last bits: within 1e-5, well inside the 1e-4 the logprob tests allow.
    assert all(abs(s.logprob - c.logprob) <= 1e-5 for s, c in zip(streamed, content, strict=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_sampling_settings_reach_the_runtime(stack: Stack) -> None:
    client = stack.client(CHAT)

    def sample(seed: int) -> str:
        result = client.completions.create(
            model=CHAT, prompt="hello", max_tokens=12, temperature=1.0, top_p=0.9, seed=seed
        )
        return result.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1
    # A stop string ends the text before it.
    text, _ = reference(stack.paths[CHAT], "the quick brown fox", 12)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        stopped = client.completions.create(
            model=CHAT, prompt="the quick brown fox", max_tokens=12, temperature=0, stop=[stop]
        )
        assert stopped.choices[0].text == text[: text.find(stop)]


# -- several choices (n) ----------------------------------------------------------------------------------

# Longer than the prefix cache's least reusable prefix (8 tokens), so the choices can share it.
SHARED_PROMPT = "the choices of this completion share one prompt of more than eight tokens"


def _chunk_choices(chunks: list[Any]) -> dict[int, list[Any]]:
    """Each choice's chunk choices, by index, in order."""
    by_index: dict[int, list[Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index.setdefault(choice.index, []).append(choice)
    return by_index


def test_greedy_choices_are_the_one_choice_answer_and_share_the_prompt(stack: Stack) -> None:
    client = stack.client(CHAT)
    before = metrics(stack.served, CHAT)
    three = client.completions.create(model=CHAT, prompt=SHARED_PROMPT, max_tokens=12, temperature=0, n=3)
    # The n requests went out together: the first stores the prompt, the other two reuse it.
    shared = _prompt_tokens(stack.paths[CHAT], SHARED_PROMPT) - 1

    def counted() -> bool:
        after = metrics(stack.served, CHAT)
        hits = after["prefix_cache_hits_total"] - before.get("prefix_cache_hits_total", 0)
        reused = after["prefix_cache_tokens_total"] - before.get("prefix_cache_tokens_total", 0)
        return hits >= 2 and reused >= 2 * shared

    assert wait_for(counted), (before, metrics(stack.served, CHAT))
    one = client.completions.create(model=CHAT, prompt=SHARED_PROMPT, max_tokens=12, temperature=0)
    text, count = reference(stack.paths[CHAT], SHARED_PROMPT, 12)
    assert one.choices[0].text == text
    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert [choice.text for choice in three.choices] == [text] * 3
    assert {choice.finish_reason for choice in three.choices} == {one.choices[0].finish_reason}
    assert three.usage is not None and one.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once
    assert three.usage.completion_tokens == 3 * count
    assert three.usage.total_tokens == three.usage.prompt_tokens + 3 * count
    chat = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        n=2,
    )
    expected, _ = reference(stack.paths[CHAT], _chat_prompt(stack.paths[CHAT]), 8)
    assert [(choice.index, choice.message.content) for choice in chat.choices] == [
        (0, expected),
        (1, expected),
    ]


def test_seeded_choices_are_the_one_choice_answers_of_seed_plus_index(stack: Stack) -> None:
    client = stack.client(CHAT)
    options: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "logprobs": 1}
    three = client.completions.create(model=CHAT, prompt=SHARED_PROMPT, n=3, seed=40, **options)
    alone = [
        client.completions.create(model=CHAT, prompt=SHARED_PROMPT, seed=seed, **options).choices[0]
        for seed in (40, 41, 42)
    ]
    assert [choice.text for choice in three.choices] == [choice.text for choice in alone]
    assert len({choice.text for choice in alone}) > 1  # sampling: the seeds make different choices
    for choice, single in zip(three.choices, alone, strict=True):
        assert choice.logprobs is not None and single.logprobs is not None
        assert "".join(choice.logprobs.tokens or []) == choice.text
        assert choice.logprobs.token_logprobs == pytest.approx(single.logprobs.token_logprobs, abs=1e-4)
    again = client.completions.create(model=CHAT, prompt=SHARED_PROMPT, n=3, seed=40, **options)
    assert [choice.text for choice in again.choices] == [choice.text for choice in three.choices]


def test_streamed_choices_reassemble_to_the_whole_answer(stack: Stack) -> None:
    client = stack.client(CHAT)
    options: dict[str, Any] = {"max_tokens": 10, "temperature": 1.0, "seed": 3, "n": 2}
    whole = client.completions.create(model=CHAT, prompt=SHARED_PROMPT, echo=True, logprobs=1, **options)
    chunks = list(
        client.completions.create(
            model=CHAT,
            prompt=SHARED_PROMPT,
            echo=True,
            logprobs=1,
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
    )
    by_index = _chunk_choices(chunks)
    assert sorted(by_index) == [0, 1]
    for index, pieces in by_index.items():
        expected = whole.choices[index]
        assert "".join(piece.text for piece in pieces) == expected.text
        assert [piece.finish_reason for piece in pieces if piece.finish_reason] == [expected.finish_reason]
        assert pieces[-1].finish_reason is not None  # each choice's own last chunk
        offsets = [o for piece in pieces if piece.logprobs for o in piece.logprobs.text_offset or []]
        assert expected.logprobs is not None and offsets == expected.logprobs.text_offset
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    chat_options: dict[str, Any] = {
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 5,
        "n": 2,
    }
    chat = client.chat.completions.create(model=CHAT, **chat_options)
    streamed = _chunk_choices(list(client.chat.completions.create(model=CHAT, stream=True, **chat_options)))
    for index, pieces in streamed.items():
        assert pieces[0].delta.role == "assistant"
        assert "".join(piece.delta.content or "" for piece in pieces) == chat.choices[index].message.content
        assert pieces[-1].finish_reason == chat.choices[index].finish_reason
    assert sorted(streamed) == [0, 1]


# -- cancellation ---------------------------------------------------------------------------------------


def _running(stack: Stack) -> float:
    return metrics(stack.served, CHAT)["sequences_running"]


def test_client_disconnect_mid_stream_stops_generation(stack: Stack) -> None:
    before = metrics(stack.served, CHAT)["tokens_total"]
    body = {
        "model": CHAT,
        "prompt": "the quick brown fox",
        "max_tokens": 1000,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", stack.urls[CHAT] + "/completions", json=body) as reply,
    ):
        assert reply.status_code == 200
        events = 0
        for line in reply.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break
        assert _running(stack) == 1
    # The connection is closed: the frontend cancels the gRPC call and the runtime drops the sequence.
    assert wait_for(lambda: _running(stack) == 0), metrics(stack.served, CHAT)
    generated = metrics(stack.served, CHAT)["tokens_total"] - before
    time.sleep(0.5)
    assert metrics(stack.served, CHAT)["tokens_total"] - before == generated < 1000


def test_client_disconnect_before_a_whole_answer_stops_generation(stack: Stack) -> None:
    body = {"model": CHAT, "prompt": "the quick brown fox", "max_tokens": 1000, "temperature": 0}
    url = stack.urls[CHAT] + "/completions"
    # How long the whole (greedy, so repeatable) answer takes here: the client below leaves at a quarter
    # of that, whatever this machine's speed (a fixed read timeout was shorter than a fast machine's
    # whole answer, the requested length being clamped to the model's maxTokens).
    started = time.monotonic()
    whole = httpx.post(url, json=body, timeout=60).json()
    whole_s = time.monotonic() - started
    whole_tokens = whole["usage"]["completion_tokens"]
    before = metrics(stack.served, CHAT)["tokens_total"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, timeout=httpx.Timeout(60, read=whole_s / 4))
    assert wait_for(lambda: _running(stack) == 0), metrics(stack.served, CHAT)
    generated = metrics(stack.served, CHAT)["tokens_total"] - before
    time.sleep(0.5)
    assert metrics(stack.served, CHAT)["tokens_total"] - before == generated < whole_tokens


# -- errors ---------------------------------------------------------------------------------------------


def test_another_model_id_is_404_in_openais_shape(stack: Stack) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as missing:
        stack.client(CHAT).completions.create(model="gpt-4o", prompt="hello")
    assert missing.value.code == "model_not_found"
    status, body = _error(stack, MINILM, "/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    assert status == 404
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        stack.client(CHAT).models.retrieve("gpt-4o")


def test_a_checkpoint_without_a_chat_template_is_a_clear_400(stack: Stack) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        stack.client(PLAIN).chat.completions.create(model=PLAIN, messages=MESSAGES)  # type: ignore[arg-type]
    assert refused.value.code == "no_chat_template"
    assert "no chat template" in refused.value.message and "/v1/completions" in refused.value.message
    # Completions still work on it.
    assert stack.client(PLAIN).completions.create(model=PLAIN, prompt="hello", max_tokens=3).choices


@pytest.mark.parametrize(
    ("model", "path", "body", "param"),
    [
        # CHAT decodes 8 sequences together: 9 choices are more than it would run at once.
        (CHAT, "/completions", {"prompt": "hello", "n": 9}, "n"),
        (CHAT, "/chat/completions", {"messages": MESSAGES, "n": 0}, "n"),
        (CHAT, "/completions", {"prompt": "hello", "n": 2, "best_of": 3}, "best_of"),
        (CHAT, "/completions", {"prompt": "hello", "logprobs": 9}, "logprobs"),
        (CHAT, "/completions", {"prompt": "hello", "presence_penalty": 2.5}, "presence_penalty"),
        (CHAT, "/completions", {"prompt": "hello", "repetition_penalty": 0}, "repetition_penalty"),
        (CHAT, "/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        (CHAT, "/completions", {"prompt": "hello", "logit_bias": {"1": 5}}, "logit_bias"),
        (CHAT, "/completions", {"prompt": "hello", "temperature": -1}, "temperature"),
        (CHAT, "/completions", {"prompt": "hello", "top_p": 1.5}, "top_p"),
        (CHAT, "/completions", {"prompt": "hello", "max_tokens": 0}, "max_tokens"),
        (CHAT, "/completions", {"prompt": ["a", "b"]}, "prompt"),
        (CHAT, "/completions", {}, "prompt"),
        (CHAT, "/chat/completions", {"messages": []}, "messages"),
        (CHAT, "/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
        (CHAT, "/embeddings", {"input": "hello"}, "model"),
        (MINILM, "/completions", {"prompt": "hello"}, "model"),
        # Token arrays are embeddings input now (test_rerank_frontend.py): an empty list is not.
        (MINILM, "/embeddings", {"input": []}, "input"),
        (MINILM, "/embeddings", {"input": ["fine", ""]}, "input[1]"),
        (MINILM, "/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_unsupported_or_invalid_requests_are_400_naming_the_parameter(
    stack: Stack, model: str, path: str, body: dict[str, Any], param: str
) -> None:
    status, answer = _error(stack, model, path, {"model": model, **body})
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param, answer
    assert answer["error"]["message"]


def test_runtime_refusals_keep_their_400_and_message(stack: Stack) -> None:
    import openai

    client = stack.client(PLAIN)
    # The tiny GPT-2's context is 64 tokens: the runtime refuses max_tokens above its maximum (63).
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=PLAIN, prompt="hello", max_tokens=500)
    assert "max_tokens 500 exceeds this model's maximum" in refused.value.message
    assert not refused.value.message.startswith("[")
    # The same refusal for a streaming request arrives as the HTTP status, before any event.
    with pytest.raises(openai.BadRequestError):
        list(client.completions.create(model=PLAIN, prompt="hello", max_tokens=500, stream=True))
    # Several choices: the refusal of any is the answer (streaming too: the SDK raises on the status).
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model=PLAIN, prompt="hello", max_tokens=500, n=2, stream=stream)
        assert "max_tokens 500 exceeds this model's maximum" in refused.value.message


def test_readiness_follows_triton(stack: Stack, tmp_path: Path) -> None:
    ready = stack.urls[MINILM].removesuffix("/v1") + "/health/ready"
    with urllib.request.urlopen(ready, timeout=10) as reply:
        assert reply.status == 200
    # A frontend whose Triton is not there is live but never ready.
    repository = Path(stack.server.extra_args[-1].split("=", 1)[1])
    triton_port, frontend_port = free_ports(2)
    orphan = LocalFrontend(repository, f"127.0.0.1:{triton_port}", frontend_port, ready_timeout_s=3)
    with pytest.raises(Exception, match="not ready"):
        orphan.start()
    orphan.stop()


def test_modeldeploy_serve_openai_starts_the_frontend_and_stops_it(stack: Stack, tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    from openai import OpenAI

    from model_repo.openai_local import DEFAULT_LOCAL_PORT

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", DEFAULT_LOCAL_PORT)) == 0:
            pytest.skip(f"port {DEFAULT_LOCAL_PORT} is taken on this machine")
    ports = [str(port) for port in free_ports(3)]
    command = [
        str(Path(sys.executable).parent / "modeldeploy"), "serve",
        "--source", f"file://{stack.paths[PLAIN]}", "--model-name", "tiny", "--openai",
        "--workdir", str(tmp_path), "--http-port", ports[0], "--grpc-port", ports[1],
        "--metrics-port", ports[2],
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{DEFAULT_LOCAL_PORT}/v1", api_key="unused", max_retries=0)
        assert wait_for(lambda: b"Ctrl-C to stop" in log.read_bytes() or process.poll() is not None, 300)
        assert process.poll() is None, log.read_text()
        assert f"OpenAI  http://127.0.0.1:{DEFAULT_LOCAL_PORT}/v1" in log.read_text()
        assert [model.id for model in client.models.list().data] == ["tiny"]
        assert client.completions.create(model="tiny", prompt="hello", max_tokens=3).choices
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log.read_text()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", DEFAULT_LOCAL_PORT)) != 0  # the frontend is gone too
