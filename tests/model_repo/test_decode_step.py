"""The decoding step's own forward (model_repo/runtime/decode_step.py), without Triton: it attaches to
Llama, Mistral and Qwen2 with logits equal to the model's own step, padded or not; it declines, saying
why, for other architectures, rotary types that depend on the sequence's length and attention
implementations it does not mirror; and a running batch decoding through it gives `generate`'s greedy
tokens and the model's own log-probabilities (test_hf_adapter.py runs the same batch with joins and
leaves through both forwards)."""

from __future__ import annotations

from typing import Any

import pytest

from model_repo.runtime import decoding
from model_repo.runtime.decode_step import DecodeStep

SHAPE = {
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def _model(kind: str, **overrides: Any) -> Any:
    import torch
    import transformers

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    }[kind]
    torch.manual_seed(0)
    shape = {"vocab_size": 300, "n_embd": 64, "n_layer": 2, "n_head": 4} if kind == "gpt2" else SHAPE
    return model_class(config_class(**{**shape, **overrides})).eval()


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("llama", {}),
        ("llama", {"num_key_value_heads": 4}),  # no grouped-query attention
        ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        ("mistral", {"sliding_window": None}),
        ("qwen2", {}),  # biases on the query/key/value projections
    ],
    ids=["llama-gqa", "llama-mha", "llama-linear-rope", "mistral", "qwen2"],
)
def test_attaches_with_logits_equal_to_the_model_s_own(kind: str, overrides: dict[str, Any]) -> None:
    model = _model(kind, **overrides)
    step, why = DecodeStep.attach(model)
    assert step is not None, why
    assert "their own forward" in why
    # Two rows of different lengths (padded, a mask) and one row (no mask), several steps each: float32
    # steps agree exactly here.
    assert step.difference_from_model(steps=6) == 0.0


@pytest.mark.parametrize(
    "kind, overrides, reason",
    [
        ("gpt2", {}, "model type 'gpt2' is not one of llama, mistral, qwen2"),
        ("qwen3", {}, "model type 'qwen3'"),
        ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rotary type 'dynamic'"),
        ("llama", {"hidden_act": "gelu"}, "activation 'gelu' is not silu"),
    ],
    ids=["gpt2", "qwen3", "dynamic-rope", "gelu"],
)
def test_declines_what_it_does_not_mirror_and_says_why(
    kind: str, overrides: dict[str, Any], reason: str
) -> None:
    step, why = DecodeStep.attach(_model(kind, **overrides))
    assert step is None
    assert why.startswith("the model's own forward decodes") and reason in why, why


def test_declines_an_attention_implementation_it_does_not_mirror() -> None:
    model = _model("llama")
    model.config._attn_implementation = "eager"
    step, why = DecodeStep.attach(model)
    assert step is None and "attention implementation 'eager' is not sdpa" in why


def test_declines_when_its_logits_differ_from_the_model_s(monkeypatch: pytest.MonkeyPatch) -> None:
    # A layout that matches but computes otherwise cannot be built from a real transformers model here, so
    # the disagreement is injected into this forward's norm (a mock of that fault, on the real model).
    original = DecodeStep._rms_norm

    def shifted(hidden: Any, norm: Any) -> Any:
        return original(hidden, norm) * 1.01

    monkeypatch.setattr(DecodeStep, "_rms_norm", staticmethod(shifted))
    step, why = DecodeStep.attach(_model("llama"))
    assert step is None and "differ from it by" in why, why


def test_a_running_batch_through_it_decodes_as_generate_with_the_model_s_log_probabilities() -> None:
    import torch

    model = _model("llama")
    step, why = DecodeStep.attach(model)
    assert step is not None, why
    prompts = [[5, 17, 42, 9, 100, 7, 33], [8, 250], [60, 61, 62, 63]]
    steps = 12
    expected = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=steps + 1,
                min_new_tokens=steps + 1,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
            expected.append(
                (
                    out.sequences[0, len(prompt) :].tolist(),
                    [torch.log_softmax(score[0], dim=-1) for score in out.logits],
                )
            )
        batches = {
            name: decoding.RunningBatch(model, forward) for name, forward in (("own", step), ("hf", None))
        }
        tokens: dict[str, list[list[int]]] = {}
        for name, batch in batches.items():
            joining = []
            for index, prompt in enumerate(prompts):
                logits, tensors, _ = decoding.prefill(model, prompt, None)
                joining.append((index, tensors, int(logits.argmax())))
            batch.join_many(joining)
            assert batch.padded  # rows of different lengths: the masked path
            found = [[first] for _, _, first in joining]
            for position in range(steps):
                logits = batch.step()
                log_probabilities = torch.log_softmax(logits, dim=-1)
                for row in range(len(prompts)):
                    torch.testing.assert_close(
                        log_probabilities[row], expected[row][1][position + 1], atol=1e-4, rtol=0
                    )
                batch.pending = logits.argmax(dim=-1).tolist()
                for row, token in enumerate(batch.pending):
                    found[row].append(token)
            tokens[name] = found
    assert tokens["own"] == tokens["hf"] == [tokens_ for tokens_, _ in expected]


def test_rotary_angles_are_extended_as_positions_pass_the_first_table() -> None:
    """The angles are kept for 256 positions at first and extended when a row passes them: steps across that
    boundary give the model's own logits."""
    import torch

    model = _model("llama", max_position_embeddings=1024)
    step, why = DecodeStep.attach(model)
    assert step is not None, why
    prompt = torch.randint(0, 300, (250,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        batches = [decoding.RunningBatch(model, forward) for forward in (None, step)]
        for batch in batches:
            logits, tensors, _ = decoding.prefill(model, prompt, None)
            batch.join(None, tensors, int(logits.argmax()))
        for _ in range(12):  # positions 250-261
            theirs, ours = (batch.step() for batch in batches)
            assert torch.equal(ours, theirs)
            for batch in batches:
                batch.pending = theirs.argmax(dim=-1).tolist()
    assert step.cos is not None and step.cos.shape[0] >= 262
