"""The generation runtime's answer text, decoded token by token (runtime/answer_text.py): the same text as
decoding the whole answer, with real tokenizers of the two families causal LMs use."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from conftest import SENTENCES, _save_bpe_tokenizer

from model_repo.runtime.answer_text import REPLACEMENT, AnswerText
from model_repo.runtime.request_parsing import find_stop

UNICODE_TEXT = "naïve café, 東京 and 🙂 — déjà vu"


def byte_level_tokenizer(directory: Path) -> Any:
    """GPT-2's family: byte-level BPE (a character's bytes can be split over tokens)."""
    return _save_bpe_tokenizer(directory, ["</s>", "<s>"], 1024, bos_token="<s>", eos_token="</s>")


def sentencepiece_tokenizer(directory: Path) -> Any:
    """Llama-2's family: BPE over "▁"-marked words with byte fallback (<0xNN> tokens for what the vocabulary
    lacks), decoded by replacing "▁" with a space, fusing bytes and dropping the first leading space."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, min_frequency=1)
    tokenizer.train_from_iterator(SENTENCES * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(directory))
    return fast


TOKENIZERS = {"byte-level BPE": byte_level_tokenizer, "sentencepiece": sentencepiece_tokenizer}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return TOKENIZERS[request.param](tmp_path_factory.mktemp("tokenizer"))


def answers(tokenizer: Any) -> list[list[int]]:
    """Real text (ASCII and characters of two to four bytes) and random tokens, special ones included: a
    random model's answers are often bytes that never form a character."""
    rng = random.Random(0)
    real = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in [*SENTENCES[:3], UNICODE_TEXT]]
    vocabulary = len(tokenizer)
    return real + [[rng.randrange(vocabulary) for _ in range(rng.randrange(1, 80))] for _ in range(200)]


def test_the_answer_text_added_token_by_token_is_the_whole_answers_decode(tokenizer: Any) -> None:
    checked_partial = False
    for tokens in answers(tokenizer):
        answer = AnswerText(tokenizer)
        pieces = []
        for end in range(1, len(tokens) + 1):
            piece = answer.add(tokens[:end], final=end == len(tokens))
            pieces.append(piece)
            assert answer.text == "".join(pieces)
            if end < len(tokens):
                # Never a partial character before the end: it waits for the bytes that complete it.
                assert not answer.text.endswith(REPLACEMENT)
                checked_partial |= piece == "" and tokenizer.decode(tokens[:end]).endswith(REPLACEMENT)
        assert answer.text == tokenizer.decode(tokens, skip_special_tokens=True), tokens
        assert answer.add(tokens) == ""  # nothing new: nothing added
    assert checked_partial  # the workload did split characters over tokens


def test_a_multi_byte_character_leaves_whole() -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["plain ascii words only"], vocab_size=300, min_frequency=1)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tokens = tokenizer("a🙂b", add_special_tokens=False)["input_ids"]
    assert len(tokens) >= 4  # the emoji's four bytes are four tokens: the vocabulary never saw it
    answer = AnswerText(tokenizer)
    pieces = [answer.add(tokens[:end]) for end in range(1, len(tokens) + 1)]
    assert [piece for piece in pieces if piece] == ["a", "🙂", "b"]


def test_find_stop_from_a_start_finds_only_stops_beginning_there_or_later() -> None:
    text = "one STOP two STOP three"
    assert find_stop(text, ("STOP",)) == (4, "STOP")
    assert find_stop(text, ("STOP",), 5) == (13, "STOP")
    assert find_stop(text, ("STOP", "two"), 5) == (9, "two")
    assert find_stop(text, ("STOP",), 14) is None
