"""The encoder's unpadded forward (model_repo/runtime/unpadded.py) against the model's own padded forward:
every supported architecture and task head, texts of different lengths in one batch, int8, and the
architectures it refuses. The served path (tritonserver) is covered by the serving tests, whose BERT
checkpoints run unpadded; the runtime in-process below shows it chooses it and falls back with a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_bert_checkpoint, save_bert_tokenizer

from model_repo.runtime import unpadded
from model_repo.runtime.helpers import pad_batch, pool_hidden_states, quantize_int8
from model_repo.runtime.unpadded import (
    ATTENTION_GROUP_COST,
    PackedBatch,
    UnpaddedEncoder,
    Unsupported,
    _Attention,
    plan_attention_groups,
)

VOCAB = 120
PAD = 1  # RoBERTa's padding id; BERT's configs below use it too, so pad positions mean the same
MASK = 4
HEADS = {
    "feature-extraction": "Model",
    "text-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
    "fill-mask": "ForMaskedLM",
}
ARCHITECTURES = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}


def _model(model_type: str, task: str) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    prefix = ARCHITECTURES[model_type]
    config = getattr(transformers, f"{prefix}Config")(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
        pad_token_id=PAD,
        num_labels=3,
        type_vocab_size=2,
    )
    return getattr(transformers, prefix + HEADS[task])(config).eval()


def _texts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    texts = [[int(t) for t in rng.integers(5, VOCAB, size=n)] for n in (3, 17, 9, 40, 1, 25)]
    for text in texts:
        text[0] = MASK if len(text) == 1 else text[0]
        if len(text) > 1:
            text[len(text) // 2] = MASK
    return texts


def _own_forward(model: Any, task: str, texts: list[list[int]], types: list[list[int]] | None) -> Any:
    """The model's own padded forward, reduced as the runtime reduces it (encoder.py)."""
    import torch

    ids = torch.from_numpy(pad_batch(texts, PAD))
    lengths = torch.tensor([len(t) for t in texts])
    attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    arguments = {"input_ids": ids, "attention_mask": attention}
    if types is not None:
        arguments["token_type_ids"] = torch.from_numpy(pad_batch(types, 0))
    with torch.inference_mode():
        output = model(**arguments)
    if task == "feature-extraction":
        return pool_hidden_states(output.last_hidden_state, attention, "mean", True), attention
    if task == "fill-mask":
        first = (ids == MASK).long().argmax(dim=1)
        return output.logits[torch.arange(len(texts)), first], attention
    return output.logits, attention


# The test models are 32 wide, where the runtime's cost of a group keeps these short texts in one; at
# MiniLM's 4,096 pairs per group they run in two groups, so the grouped attention is what is compared.
GROUPED = 4096 * 32


def _unpadded(model: Any, task: str, texts: list[list[int]], types: list[list[int]] | None) -> Any:
    import torch

    encoder = UnpaddedEncoder(model, task, MASK)
    with torch.inference_mode():
        out = encoder.run(
            PackedBatch(texts, types),
            torch.from_numpy,
            lambda hidden, mask: pool_hidden_states(hidden, mask, "mean", True),
        )
    return next(iter(out.values()))


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@pytest.mark.parametrize("task", sorted(HEADS))
def test_the_unpadded_forward_equals_the_models_own_on_a_batch_of_mixed_lengths(
    model_type: str, task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(unpadded, "ATTENTION_GROUP_COST", GROUPED)
    model = _model(model_type, task)
    texts = _texts()
    types = [[0] * (len(t) // 2) + [1] * (len(t) - len(t) // 2) for t in texts]
    reference, attention = _own_forward(model, task, texts, types)
    got, want = _unpadded(model, task, texts, types), reference
    if task == "token-classification":  # padding rows are not outputs; real tokens' rows are
        real = attention.bool()
        got, want = got[real], want[real]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.float(), atol=2e-5, rtol=1e-4)
    # The fused projections are the modules' own weights: the model's own forward is unchanged.
    again, _ = _own_forward(model, task, texts, types)
    torch.testing.assert_close(again, reference, atol=0, rtol=0)


def test_the_mixed_batch_runs_its_attention_in_several_length_groups_on_a_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So the test above covers the grouped attention, not only one padded block."""
    import torch

    batch = PackedBatch(_texts(), None)
    assert len(_Attention(batch, torch.from_numpy, torch.device("cpu"), 32).groups) == 1  # the default
    monkeypatch.setattr(unpadded, "ATTENTION_GROUP_COST", GROUPED)
    layout = _Attention(batch, torch.from_numpy, torch.device("cpu"), 32)
    assert len(layout.groups) > 1
    # Every real token has its own row in the groups' buffer, inside its text's group block.
    places = layout.places.numpy()
    assert len(set(places.tolist())) == batch.tokens and places.max() < layout.buffer_rows


def test_attention_groups_are_consecutive_runs_of_the_texts_sorted_by_length() -> None:
    lengths = np.array([3, 17, 9, 40, 1, 25])
    groups = plan_attention_groups(lengths, ATTENTION_GROUP_COST / 384)  # MiniLM's width
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert (np.diff(lengths[flat]) >= 0).all()  # shortest first, no group overlaps another
    assert len(groups) == 2  # 1-25 tokens, then the 40-token text alone
    # The cost decides: free groups give one per text; an expensive one keeps the batch whole.
    assert [g.tolist() for g in plan_attention_groups(lengths, 0)] == [[4], [0], [2], [1], [5], [3]]
    assert len(plan_attention_groups(lengths, 1e9)) == 1


def test_roberta_positions_skip_padding_tokens_inside_a_text_as_the_model_does() -> None:
    import torch

    model = _model("roberta", "feature-extraction")
    texts = [[7, 8, PAD, 9, 10], [11, 12, 13]]
    want, _ = _own_forward(model, "feature-extraction", texts, None)
    torch.testing.assert_close(
        _unpadded(model, "feature-extraction", texts, None), want, atol=2e-5, rtol=1e-4
    )


def test_an_int8_model_runs_unpadded_with_its_quantized_layers() -> None:
    import torch

    model = quantize_int8(_model("bert", "text-classification"), [])
    for text in _texts(1):  # one text per pass: the same activations, so the same int8 scales
        want, _ = _own_forward(model, "text-classification", [text], None)
        torch.testing.assert_close(
            _unpadded(model, "text-classification", [text], None), want, atol=1e-5, rtol=1e-4
        )


def test_other_architectures_are_refused_with_the_reason() -> None:
    import transformers

    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=4, hidden_dim=64)
    distilbert: Any = transformers.DistilBertModel(config)
    with pytest.raises(Unsupported, match="model type distilbert"):
        UnpaddedEncoder(distilbert.eval(), "feature-extraction")
    with pytest.raises(Unsupported, match="BertForPreTraining serving text-classification"):
        UnpaddedEncoder(
            transformers.BertForPreTraining(_model("bert", "feature-extraction").config),
            "text-classification",
        )


def test_packed_rows_and_the_padded_view_line_up() -> None:
    batch = PackedBatch([[5, 6, 7], [8], [9, 4, 10, 4]], None)
    assert batch.tokens == 8 and batch.longest == 4
    assert batch.starts.tolist() == [0, 3, 4]
    assert batch.offsets.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert batch.padded_rows.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert batch.first_rows_of(4).tolist() == [0, 3, 5]  # a text without one gets its first row
    assert batch.positions("roberta", PAD).tolist() == [2, 3, 4, 2, 2, 3, 4, 5]


# The runtime in-process: it serves a BERT checkpoint unpadded and another architecture padded, saying why.


def _runtime_role(repository: Path) -> Any:
    import importlib.util

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    model_dir = next(path for path in repository.iterdir() if (path / "config.pbtxt").exists())
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    spec = importlib.util.spec_from_file_location(
        f"unpadded_test_{model_dir.name}", model_dir / "1" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runtime = module.TritonPythonModel()
    runtime.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    return runtime.role


def _build(checkpoint: Path, target: Path) -> Path:
    from model_repo.build import build_repository
    from model_repo.options import BuildOptions

    options = BuildOptions(source=f"file://{checkpoint}", model_name="m", device="cpu")
    return build_repository(options, target).path


def test_the_runtime_serves_bert_unpadded_and_equal_to_padded_passes(tmp_path: Path) -> None:
    checkpoint = make_bert_checkpoint(tmp_path / "ckpt", "BertForSequenceClassification", num_labels=3)
    role = _runtime_role(_build(checkpoint, tmp_path / "repo"))
    assert role.unpadded is not None and role.group_overhead is None
    texts = ["the quick brown fox", "hello world", "paris is the capital of france and a city", "short"]
    unpadded, _ = role.encode(texts)
    role.unpadded, role.group_overhead = None, 16
    padded, _ = role.encode(texts)
    np.testing.assert_allclose(unpadded["SCORES"], padded["SCORES"], atol=1e-6)
    assert unpadded["LABEL"].tolist() == padded["LABEL"].tolist()


def test_the_runtime_keeps_padded_passes_for_other_architectures_and_says_why(tmp_path: Path) -> None:
    import transformers

    tokenizer = save_bert_tokenizer(tmp_path / "ckpt")
    config = transformers.DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        n_layers=1,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
    )
    model: Any = transformers.DistilBertModel(config)
    model.eval().save_pretrained(str(tmp_path / "ckpt"))
    role = _runtime_role(_build(tmp_path / "ckpt", tmp_path / "repo"))
    assert role.unpadded is None and role.group_overhead is not None
    assert "model type distilbert" in role.padded_reason
    embeddings, failures = role.encode(["hello world", "the quick brown fox jumps"])
    assert not failures and embeddings["EMBEDDING"].shape == (2, 32)
