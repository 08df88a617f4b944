"""bench.generation.profile's engine loop prefills as the server's engine does: the prompts waiting when it
takes new work in one grouped forward (decoding.prefill_group), one at a time when they arrive staggered."""

from __future__ import annotations

from typing import Any

import pytest

from bench.generation import profile
from model_repo.runtime import decoding


@pytest.mark.parametrize("stagger", [False, True])
def test_the_engine_loop_prefills_waiting_prompts_in_one_group(
    monkeypatch: pytest.MonkeyPatch, stagger: bool
) -> None:
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
    model = LlamaForCausalLM(config).eval()
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
