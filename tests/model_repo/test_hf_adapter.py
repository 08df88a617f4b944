"""The generation runtime's fence over transformers' internals, checked against the pinned transformers
without Triton: `hf_adapter.check` passes for the tiny checkpoints, refuses (naming the attribute and the
supported versions) when an internal is gone, and the running batch built on it (rows joining, alone or
prefilled as a group, and leaving between steps) gives `generate`'s greedy tokens, its steps through the
model's forward or through decode_step.py's."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import greedy_continuation, make_gpt2_checkpoint, make_llama_checkpoint

from model_repo.runtime import decoding, hf_adapter
from model_repo.runtime.decode_step import DecodeStep


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("adapter")
    loaded = {}
    for name, path in (
        ("llama", make_llama_checkpoint(root / "llama")),
        ("gpt2", make_gpt2_checkpoint(root / "gpt2")),
    ):
        loaded[name] = (
            AutoModelForCausalLM.from_pretrained(str(path)).eval(),
            AutoTokenizer.from_pretrained(str(path)),
        )
    return loaded


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_check_passes_against_the_pinned_transformers(models: dict[str, Any], name: str) -> None:
    import transformers

    assert transformers.__version__.rsplit(".", 1)[0] in hf_adapter.SUPPORTED_TRANSFORMERS
    hf_adapter.check(models[name][0])


def test_check_refuses_naming_the_attribute_and_the_versions(
    models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A future transformers cannot be installed here: the rename is simulated on the real class.
    from transformers.cache_utils import DynamicCache

    monkeypatch.delattr(DynamicCache, "__iter__")  # unrelated attribute: still accepted
    hf_adapter.check(models["llama"][0])
    original = DynamicCache.__init__

    def without_layers(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.layer_list = self.__dict__.pop("layers")

    monkeypatch.setattr(DynamicCache, "__init__", without_layers)
    with pytest.raises(
        hf_adapter.UnsupportedTransformers, match=r"`layers`.*supported transformers versions: 5\.23\.x"
    ):
        hf_adapter.check(models["llama"][0])


@pytest.mark.parametrize("name", ["llama", "llama-own-step", "gpt2"])
@pytest.mark.parametrize(
    "arrivals",
    [{0: [0], 1: [1], 3: [2], 4: [3]}, {0: [0, 1, 2], 2: [3]}, {0: [0, 1, 2, 3, 4], 6: [5]}],
    ids=["one-by-one", "grouped", "finished-rows-ride-along"],
)
@pytest.mark.parametrize("room", [hf_adapter.GROWTH_POSITIONS, 1], ids=["room", "growing-every-step"])
def test_running_batch_with_joins_and_leaves_equals_generate(
    models: dict[str, Any],
    name: str,
    arrivals: dict[int, list[int]],
    room: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows join while others decode: alone, or a group prefilled together (one left-padded forward)
    joining with one `join_many`. The running batch's cache layers write each step in place; with one free
    position they run out of room every other step and grow, which must change nothing. A finished row
    stays in the cache (masked) until a join or enough finished rows drop it: in the last case "hello"
    (4 tokens) finishes among five rows and rides along until the sixth prompt joins."""
    import torch

    monkeypatch.setattr(hf_adapter, "GROWTH_POSITIONS", room)

    model, tokenizer = models[name.removesuffix("-own-step")]
    # "-own-step": decoding steps through decode_step.py's forward instead of the model's.
    own_step, why = DecodeStep.attach(model) if name.endswith("-own-step") else (None, "")
    assert own_step is not None or not name.endswith("-own-step"), why
    prompts = [
        "the quick brown fox",
        "hello",
        "paris is the capital of france and",
        "a b c d e f g",
        "one two three four five six",
        "the weather today is",
    ]
    counts = [9, 4, 7, 6, 8, 5]
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    expected = [
        greedy_continuation(model, torch.tensor([ids]), n, pad_token_id=0, min_new_tokens=n)
        for ids, n in zip(prompt_ids, counts, strict=True)
    ]

    class Job:
        def __init__(self, index: int) -> None:
            self.index = index
            self.row = decoding.Row(decoding.Sampling("p", temperature=0.0), prompt_ids[index], frozenset())

    batch = decoding.RunningBatch(model, own_step)
    prefixes = decoding.PrefixCache(4096)
    results: dict[int, list[int]] = {}
    layer_types: set[str] = set()
    finished_held = []
    with torch.inference_mode():
        for step in range(40):
            arrived = [Job(index) for index in arrivals.get(step, [])]
            for group in decoding.plan_prefill(model, [job.row.prompt_ids for job in arrived], prefixes):
                members = [arrived[index] for index in group.indices]
                logits, tensors = decoding.prefill_group(model, group, prefixes)
                choices = decoding.choose_rows(logits, [job.row for job in members])
                for job, choice in zip(members, choices, strict=True):
                    job.row.add(choice.token)
                batch.join_many([(j, t, c.token) for j, t, c in zip(members, tensors, choices, strict=True)])
            if not len(batch):
                break
            logits = batch.step()
            layer_types.update(type(layer).__name__ for layer in batch.cache.layers)
            finished_held.append(batch.finished_held)
            gone = set()
            for index, (job, choice) in enumerate(
                zip(batch.rows, decoding.choose_rows(logits, [j.row for j in batch.rows]), strict=True)
            ):
                job.row.add(choice.token)
                batch.pending[index] = choice.token
                if len(job.row.generated) >= counts[job.index]:
                    results[job.index] = job.row.generated
                    gone.add(index)
            batch.leave(gone)
    arrived = sorted(index for indices in arrivals.values() for index in indices)
    assert results == {index: expected[index] for index in arrived}
    assert (max(finished_held) > 0) == (len(arrived) == 6)
    assert layer_types == {"GrowingLayer"}
