"""What the frontend knows about its one model: read from the model repository the builder wrote.

The builder's record (`modeldeploy.json`) gives the task, Triton's model name and the maximum sequence
length; the checkpoint copy in the repository gives the tokenizer and its chat template. Only the tokenizer
is loaded (never the weights): chat prompts are rendered with the checkpoint's own template, and embedding
inputs are counted for `usage` (the encoder runtime returns no token counts).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .protocol import ChatMessage, invalid
from .token_arrays import ModelVocabulary

RECORD_FILE = "modeldeploy.json"
EMBEDDING_TASK = "feature-extraction"
GENERATION_TASK = "text-generation"
RANKING_TASK = "text-ranking"
CLASSIFICATION_TASK = "text-classification"
TASKS = (EMBEDDING_TASK, GENERATION_TASK, RANKING_TASK, CLASSIFICATION_TASK)
_TOKENIZER_MARKERS = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json")


class RepositoryError(RuntimeError):
    """The model repository cannot be served by this frontend (missing record, unsupported task)."""


def tokenizer_directory(repository: Path, model_name: str) -> Path:
    """The python and vllm formats keep the checkpoint at <model>/1/checkpoint; the onnx ensemble keeps
    the tokenizer files in its tokenizer step, found by the files themselves."""
    checkpoint = repository / model_name / "1" / "checkpoint"
    if checkpoint.is_dir():
        return checkpoint
    for marker in _TOKENIZER_MARKERS:
        found = sorted(repository.rglob(marker))
        if found:
            return found[0].parent
    raise RepositoryError(f"no tokenizer files under {repository}")


@dataclass
class ServedModel:
    model_id: str  # what clients put in `model`: the ModelDeployment's name
    triton_name: str
    task: str
    model_format: str
    max_sequence_length: int
    tokenizer: Any
    created: int
    labels: tuple[str, ...] = ()  # text-classification: the checkpoint's id2label, in id order

    @classmethod
    def load(cls, repository: Path, model_id: str | None = None) -> ServedModel:
        try:
            record = json.loads((repository / RECORD_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RepositoryError(f"{repository} holds no readable {RECORD_FILE}: {exc}") from exc
        task = str(record["task"])
        if task not in TASKS:
            raise RepositoryError(f"the frontend serves {', '.join(TASKS)} models; this repository is {task}")
        from transformers import AutoTokenizer

        name = str(record["model_name"])
        directory = tokenizer_directory(repository, name)
        # Never the checkpoint's own code: the tokenizer is read from its files only.
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        created = int((repository / RECORD_FILE).stat().st_mtime)
        return cls(
            model_id=model_id or name,
            triton_name=name,
            task=task,
            model_format=str(record.get("format", "python")),
            max_sequence_length=int(record.get("max_sequence_length") or 0),
            tokenizer=tokenizer,
            created=created or int(time.time()),
            labels=tuple(str(label) for label in record.get("labels") or ()),
        )

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the encoder sees for these texts (special tokens included, truncated as it truncates:
        a single text truncated to the limit keeps its special tokens, so its count is min(length, limit))."""
        limit = self.max_sequence_length
        counter = self.token_counter
        if counter is not None:
            # The Rust tokenizer alone: transformers' per-call Python (padding/truncation set-up, the
            # conversion of every encoding) was a third of the rerank route's own CPU, for a count.
            lengths = [len(encoding) for encoding in counter.encode_batch_fast(texts)]
        else:
            lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        return sum(min(length, limit) if limit else length for length in lengths)

    @cached_property
    def token_counter(self) -> Any:
        """A private copy of the fast tokenizer's Rust backend without padding or truncation (transformers
        changes those on the shared backend per call); None for a slow tokenizer."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        from tokenizers import Tokenizer

        counter = Tokenizer.from_str(backend.to_str())
        counter.no_padding()
        counter.no_truncation()
        return counter

    @cached_property
    def vocabulary(self) -> ModelVocabulary:
        """The model's own ids, as token arrays hold them (TEI's routes; /v1/embeddings by default); made
        once: its size is the tokenizer's length, which transformers recomputes on every call."""
        return ModelVocabulary(self.tokenizer)

    def render_chat(self, messages: list[ChatMessage]) -> str:
        """The prompt for a chat: the checkpoint's chat template with the generation prompt appended."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise invalid(
                f"model {self.model_id} has no chat template (its tokenizer config defines none); "
                "use /v1/completions with a prompt instead",
                "messages",
                "no_chat_template",
            )
        conversation = []
        for index, message in enumerate(messages):
            item: dict[str, Any] = message.model_dump(exclude_none=True)
            if isinstance(message.content, list):
                if any(part.type != "text" or part.text is None for part in message.content):
                    raise invalid(
                        f"messages[{index}].content: only text parts are supported",
                        f"messages[{index}].content",
                    )
                item["content"] = "".join(part.text or "" for part in message.content)
            conversation.append(item)
        try:
            rendered = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template's own raise_exception(...) or a Jinja error
            raise invalid(f"the model's chat template refused the messages: {exc}", "messages") from exc
        text = str(rendered)
        # The runtime tokenises the prompt with the tokenizer's special tokens; a template that writes the
        # BOS token itself would otherwise start the prompt with two.
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos) and self._adds_bos():
            text = text[len(bos) :]
        return text

    def _adds_bos(self) -> bool:
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        ids = self.tokenizer("a")["input_ids"]
        return bos_id is not None and bool(ids) and ids[0] == bos_id
