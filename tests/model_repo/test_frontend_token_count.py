"""The frontend's `usage` counts: the Rust tokenizer's count equals what transformers' tokenizer call
gives (special tokens included, truncated to the model's limit), whatever padding or truncation another
caller left set on the shared tokenizer. No server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import SENTENCES, make_gpt2_checkpoint, save_bert_tokenizer

from model_repo.openai_frontend.model import ServedModel

TEXTS = [*SENTENCES, "x " * 200, "a", "ünïcödé and emoji 🙂 " * 3]


def transformers_count(tokenizer: Any, texts: list[str], limit: int) -> int:
    encoded = tokenizer(texts, truncation=limit > 0, max_length=limit or None)["input_ids"]
    return sum(len(ids) for ids in encoded)


def served(tokenizer: Any, limit: int) -> ServedModel:
    return ServedModel("m", "m", "feature-extraction", "python", limit, tokenizer, 0)


@pytest.fixture(scope="module", params=["wordpiece", "byte-level-bpe", "all-MiniLM-L6-v2"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    directory: Path
    if request.param == "wordpiece":
        directory = tmp_path_factory.mktemp("wordpiece")
        save_bert_tokenizer(directory)
    elif request.param == "byte-level-bpe":
        directory = make_gpt2_checkpoint(tmp_path_factory.mktemp("bpe") / "gpt2")
    else:
        directory = request.getfixturevalue("minilm_path")
    return AutoTokenizer.from_pretrained(str(directory))


@pytest.mark.parametrize("limit", [0, 8, 512])
def test_count_equals_the_tokenizer_call(tokenizer: Any, limit: int) -> None:
    model = served(tokenizer, limit)
    assert model.count_tokens(TEXTS) == transformers_count(tokenizer, TEXTS, limit)
    for text in TEXTS:
        assert model.count_tokens([text]) == transformers_count(tokenizer, [text], limit)


def test_count_ignores_padding_and_truncation_left_on_the_shared_tokenizer(tokenizer: Any) -> None:
    model = served(tokenizer, 0)
    expected = transformers_count(tokenizer, TEXTS, 0)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer(TEXTS, padding="max_length", truncation=True, max_length=4)
    assert model.count_tokens(TEXTS) == expected
    assert model.count_tokens(TEXTS) > 4 * len(TEXTS)
