"""bench.generation.profile's engine loop prefills as the server's engine does: the prompts waiting when it
takes new work in one grouped forward (decoding.prefill_group), one at a time when they arrive staggered."""

from __future__ import annotations

from typing import Any

import pytest

from bench.generation import profile
from model_repo.runtime import decoding


def _tiny_llama() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("stagger", [False, True])
def test_the_engine_loop_prefills_waiting_prompts_in_one_group(
    monkeypatch: pytest.MonkeyPatch, stagger: bool
) -> None:
    model = _tiny_llama()
    prompt_ids = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]
    group_sizes: list[int] = []
    original = decoding.prefill_group

    def counted(model: Any, group: decoding.PrefillGroup, prefixes: Any) -> Any:
        group_sizes.append(len(group.prompts))
        return original(model, group, prefixes)

    monkeypatch.setattr(decoding, "prefill_group", counted)
    tokens = 4
    result = profile._engine(model, prompt_ids, tokens, stagger=stagger)
    assert result["tokens"] == tokens * len(prompt_ids)
    assert 0 < result["forward_s"] <= result["seconds"]
    assert group_sizes == ([1] * len(prompt_ids) if stagger else [len(prompt_ids)])


def test_the_engine_loop_counts_decoding_steps_through_their_own_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runtime decodes a Llama through decode_step.py's forward: the profile's forward time must hold
    those steps too, not only the model's prefills."""
    from model_repo.runtime.decode_step import DecodeStep

    model = _tiny_llama()
    calls = []
    original = DecodeStep.__call__

    def counted(self: DecodeStep, *args: Any) -> Any:
        calls.append(len(args[0]))
        return original(self, *args)

    own_step, why = DecodeStep.attach(model)
    assert own_step is not None, why
    monkeypatch.setattr(DecodeStep, "__call__", counted)
    result = profile._engine(model, [[5, 6, 7], [8, 9]], 4, stagger=False, own_step=own_step)
    assert calls == [2, 2, 2]  # a step per token after the prefill's, each through its own forward
    assert result["tokens"] == 8 and 0 < result["forward_s"] <= result["seconds"]


def test_step_probe_compares_both_forwards_with_equal_logits() -> None:
    from bench.generation import step_probe

    results = step_probe.main(
        ["--sizes", "1,3", "--rounds", "2", "--steps", "2", "--layers", "1", "--hidden", "64"]
    )
    assert [result["rows"] for result in results] == [1, 3]
    for result in results:
        assert all(len(times) == 2 and min(times) > 0 for times in result["ms"].values())
        assert result["difference"] == 0.0


def test_lookup_probe_times_hits_and_misses_on_a_filled_cache() -> None:
    from bench.generation import lookup_probe

    (result,) = lookup_probe.main(["--prefixes", "20", "--budget-per-prefix", "8", "--lookups", "5"])
    assert result["prefix"] == 20 and result["entries"] > 1
    assert result["hit_ms"] > 0 and result["miss_ms"] > 0
