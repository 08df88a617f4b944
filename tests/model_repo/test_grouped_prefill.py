"""Grouped prefill (decoding.plan_prefill / prefill_group / RunningBatch.join_many) without Triton, on the
tiny random Llama and GPT-2: prompts of different lengths prefilled together in one left-padded forward
give each prompt what prefilling it alone gives (first token, logits, keys/values), the prefix cache keeps
each prompt's own unpadded tensors, and `join_many` builds the batch one join at a time would (that a
group then decodes as `generate` alone is test_hf_adapter.py's running-batch test)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_gpt2_checkpoint, make_llama_checkpoint

from model_repo.runtime import decoding

PROMPTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello",
    "paris is the capital of france and triton serves the model over http and grpc",
    "a b c d e f g",
    "short",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, list[list[int]]]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("grouped")
    loaded = {}
    for name, path in (
        ("llama", make_llama_checkpoint(root / "llama")),
        ("gpt2", make_gpt2_checkpoint(root / "gpt2")),
    ):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        loaded[name] = (model, [tokenizer(p)["input_ids"] for p in PROMPTS])
    return loaded


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_group_gives_each_prompt_what_it_gets_alone(models: dict[str, Any], name: str) -> None:
    import torch

    model, prompt_ids = models[name]
    assert len({len(ids) for ids in prompt_ids}) > 2  # the group really pads
    with torch.inference_mode():
        alone = [decoding.prefill(model, ids, None) for ids in prompt_ids]
        # the accelerator's plan (no cut for padding): every prompt in one left-padded forward
        (group,) = decoding.plan_prefill(
            model, prompt_ids, None, overhead_tokens=decoding.PREFILL_TOKEN_BUDGET
        )
        logits, tensors = decoding.prefill_group(model, group, None)
    assert sorted(group.indices) == list(range(len(prompt_ids)))
    assert logits.shape[0] == len(prompt_ids)
    for row, index in enumerate(group.indices):
        alone_logits, alone_tensors, _ = alone[index]
        assert int(torch.argmax(logits[row])) == int(torch.argmax(alone_logits))
        torch.testing.assert_close(logits[row], alone_logits, atol=1e-4, rtol=1e-4)
        assert len(tensors[row]) == len(alone_tensors)
        for (keys, values), (alone_keys, alone_values) in zip(tensors[row], alone_tensors, strict=True):
            assert keys.shape == alone_keys.shape == (1, keys.shape[1], len(prompt_ids[index]), keys.shape[3])
            torch.testing.assert_close(keys, alone_keys, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(values, alone_values, atol=1e-4, rtol=1e-4)


def test_groups_keep_the_token_budget_cut_where_padding_costs_a_pass_and_cache_hits_group_apart() -> None:
    prompts = [[7] * 100, [1] * 10, [2] * 30, [3] * 20, [4] * 300]
    groups = list(decoding.plan_prefill(None, prompts, None, token_budget=200, overhead_tokens=10**6))
    assert sorted(index for group in groups for index in group.indices) == list(range(len(prompts)))
    for group in groups:
        assert group.prompts == [prompts[index] for index in group.indices]
        assert len(group.prompts) == 1 or len(group.prompts) * max(map(len, group.prompts)) <= 200
    assert [group.indices for group in groups] == [[1, 3, 2], [0], [4]]  # shortest first; 300 runs alone
    # Without a padding cut the default budget takes all 5 x 300 padded tokens in one forward ...
    everything = decoding.plan_prefill(None, prompts, None, overhead_tokens=decoding.PREFILL_TOKEN_BUDGET)
    assert len(list(everything)) == 1
    # ... a CPU's does not pad 10-30 token prompts to 100 or 300 (3 x 70 and 1 x 200 padded tokens > 64).
    assert decoding.CPU_PASS_OVERHEAD_TOKENS == 64
    assert [group.indices for group in decoding.plan_prefill(None, prompts, None)] == [[1, 3, 2], [0], [4]]
    same = [[9] * 200] * 25
    assert [len(group.indices) for group in decoding.plan_prefill(None, same, None)] == [20, 5]  # 4096 // 200

    import torch

    prefixes = decoding.PrefixCache(4096)
    layer = (torch.zeros((1, 2, 100, 4)), torch.zeros((1, 2, 100, 4)))
    prefixes.store(prompts[0], [layer])
    extended = prompts[0] + [5, 6]
    groups = list(decoding.plan_prefill(None, [prompts[1], extended, prompts[2]], prefixes))
    hit = next(group for group in groups if group.prefix is not None)
    assert (hit.indices, hit.reused) == ([1], 100)
    assert [group.indices for group in groups if group.prefix is None] == [[0, 2]]


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_the_prefix_cache_stores_each_prompt_unpadded_on_its_own_tensors(
    models: dict[str, Any], name: str
) -> None:
    import torch

    model, prompt_ids = models[name]
    prefixes = decoding.PrefixCache(4096)
    with torch.inference_mode():
        (group,) = decoding.plan_prefill(model, prompt_ids, prefixes)
        _, tensors = decoding.prefill_group(model, group, prefixes)
    stored = [ids for ids in prompt_ids if len(ids) >= decoding.MIN_PREFIX_TOKENS]
    assert stored and set(prefixes.entries) == {tuple(ids) for ids in stored}
    storages = set()
    for key, layers in prefixes.entries.items():
        row = group.prompts.index(list(key))
        for (keys, values), (row_keys, row_values) in zip(layers, tensors[row], strict=True):
            assert keys.shape[0] == 1 and keys.shape[2] == len(key)
            assert torch.equal(keys, row_keys) and torch.equal(values, row_values)
            # its own storage, holding its positions only (not a view into the group's padded batch)
            assert keys.untyped_storage().nbytes() == keys.numel() * keys.element_size()
            storages.add(keys.untyped_storage().data_ptr())
    assert len(storages) == len(stored) * len(model.model.layers if name == "llama" else model.transformer.h)


def test_join_many_equals_one_join_at_a_time() -> None:
    import torch

    def rows(length: int, seed: int) -> list[tuple[Any, Any]]:
        generator = torch.Generator().manual_seed(seed)
        return [(torch.randn((1, 2, length, 4), generator=generator),) * 2 for _ in range(3)]  # type: ignore[misc]

    class Model:
        pass

    arrivals = [[(0, rows(5, 0), 11)], [(1, rows(3, 1), 12), (2, rows(9, 2), 13), (3, rows(1, 3), 14)]]
    one_by_one, many = decoding.RunningBatch(Model()), decoding.RunningBatch(Model())
    for joining in arrivals:
        for job, tensors, token in joining:
            one_by_one.join(job, tensors, token)
        many.join_many(joining)
    assert many.rows == one_by_one.rows == [0, 1, 2, 3] and many.pending == one_by_one.pending
    assert torch.equal(many.mask, one_by_one.mask) and many.mask.shape == (4, 9)
    from model_repo.runtime import hf_adapter

    for (keys, values), (keys_one, values_one) in zip(
        hf_adapter.layer_tensors(many.cache), hf_adapter.layer_tensors(one_by_one.cache), strict=True
    ):
        assert torch.equal(keys, keys_one) and torch.equal(values, values_one)


@pytest.mark.parametrize(("context", "rows"), [(512, 8), (1000, 5), (4096, 1), (8192, 1)])
def test_the_memory_estimate_covers_a_full_prefill_group(context: int, rows: int) -> None:
    """The builder's activation budget is a group's (token budget / context rows at the full context), not
    one prompt's; a context past the budget prefills alone."""
    from model_repo import memory

    assert decoding.PREFILL_TOKEN_BUDGET == 4096
    assert memory.prefill_group_rows(context) == rows


def test_a_burst_behind_one_long_prefix_computes_it_once(models: dict[str, Any]) -> None:
    """With a prefix cache, prompts sharing more than a pass's worth of leading tokens wait for the first
    one's group to store them and reuse them (as they did prefilled one at a time); without one they group."""
    import torch

    model, _ = models["llama"]  # the tiny GPT-2 has 64 positions
    shared = [(7 * index) % 300 + 3 for index in range(decoding.CPU_PASS_OVERHEAD_TOKENS - 4)]
    burst = [[*shared, 11 + index, 12, *[13 + index] * (index + 1)] for index in range(4)]
    # Sharing fewer leading tokens than a pass costs (a chat template's header): grouped, no waiting.
    assert len(list(decoding.plan_prefill(model, burst, decoding.PrefixCache(4096)))) == 1
    other = [(5 * index) % 300 + 4 for index in range(110)]
    prompts = [*[[*shared, *prompt] for prompt in burst], other]
    assert [g.indices for g in decoding.plan_prefill(model, prompts, None)] == [[4, 0, 1, 2, 3]]
    prefixes = decoding.PrefixCache(4096)
    seen = []
    with torch.inference_mode():
        for group in decoding.plan_prefill(model, prompts, prefixes):
            seen.append((group.indices, group.reused))
            logits, tensors = decoding.prefill_group(model, group, prefixes)
            for row, index in enumerate(group.indices):
                alone_logits, alone_tensors, _ = decoding.prefill(model, prompts[index], None)
                torch.testing.assert_close(logits[row], alone_logits, atol=1e-4, rtol=1e-4)
                # each row's keys/values: the prefix and its own positions, the padding between them gone
                for (keys, values), (alone_keys, alone_values) in zip(
                    tensors[row], alone_tensors, strict=True
                ):
                    torch.testing.assert_close(keys, alone_keys, atol=1e-4, rtol=1e-4)
                    torch.testing.assert_close(values, alone_values, atol=1e-4, rtol=1e-4)
    # The three that waited hit the prefix the first group stored, and run together on it (4, 5 and 6 own
    # tokens: two rows padded between the shared prefix and their own tokens).
    assert seen == [([4, 0], 0), ([1, 2, 3], 2 * len(shared))]
