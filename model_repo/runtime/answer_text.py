"""An answer's text, decoded as its tokens arrive.

Decoding the whole answer again for every token (what the engine did) costs in proportion to the answer:
0.25 ms for 1,024 tokens and 1.0 ms for 4,096 with a byte-level BPE on this project's CPU, per row and per
decoding step, so 64 streams 1,024 tokens into their answers would spend 16 ms of every step on text
(bench/README.md, text generation, session 20). Here each token decodes a window of a few tokens, as
vLLM's incremental detokenizer does: the tokens since the last complete text, after the ones before it
(`prefix`), whose text is cut off the front. Decoding from a token boundary inside the answer and
cutting off what the earlier tokens decode to keeps the decoders' boundary effects (SentencePiece's
dropped leading space, byte-level BPE's characters split over tokens) where the whole answer's decode
puts them.

No torch or Triton here; the tokenizer is any transformers tokenizer.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"  # what a decoder makes of the bytes of a character whose last byte has not come


class AnswerText:
    """The text of one answer's tokens so far (`text`); `add` takes the tokens after each step."""

    def __init__(self, tokenizer: Any) -> None:
        self._decode = tokenizer.decode
        self.text = ""
        self._prefix = 0  # the window's first token: the tokens of the text added last
        self._read = 0  # tokens whose text is in `text`

    def _window(self, tokens: list[int]) -> tuple[str, str]:
        before = self._decode(tokens[self._prefix : self._read], skip_special_tokens=True)
        window = self._decode(tokens[self._prefix :], skip_special_tokens=True)
        return before, window

    def add(self, tokens: list[int], final: bool = False) -> str:
        """Bring `text` up to `tokens` (the whole answer so far) and return what it gained. Text ending in
        a partial character waits for the tokens that complete it, unless the answer is `final`."""
        if self._read == len(tokens):
            return ""
        before, window = self._window(tokens)
        if not final and (len(window) <= len(before) or window.endswith(REPLACEMENT)):
            return ""
        new = window[len(before) :]
        self.text += new
        self._prefix, self._read = self._read, len(tokens)
        return new
