"""The generation engine's arithmetic: per-row token choice, the running batch, and the prompt-prefix cache.

No Triton here (generation.py is the glue): these run in tests as they run in the server.

Why an own scheduler rather than transformers' continuous-batching manager: on a CPU the manager's paged
attention path reached half of a static `generate` batch at 4-16 sequences, and handing its per-token
results to another thread added a polling cadence per token. The running batch here is what `generate`
itself runs for a left-padded batch (one `DynamicCache`, a 2-D attention mask, explicit positions), made
continuous: a request is prefilled alone and joins between decoding steps by left-padding, a finished
one leaves by dropping its row, and columns no row needs any more are trimmed.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

from . import hf_adapter

MAX_TOP_LOGPROBS = 20
# A reused prefix shorter than this saves less than the lookup and copy cost.
MIN_PREFIX_TOKENS = 8


def check_internals(model: Any) -> None:
    """Refuse the model (hf_adapter.UnsupportedTransformers) unless the internals used here are there."""
    hf_adapter.check(model)


@dataclass(frozen=True)
class Sampling:
    """What one request asked for, validated (the checkpoint's generation_config fills what it left out)."""

    prompt: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    truncate_prompt_tokens: int | None = None
    stream: bool = False
    exclude_input_in_output: bool = True
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    min_tokens: int = 0
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that needs this row's scores on their own (the batched argmax suffices)."""
        return (
            self.greedy
            and self.repetition_penalty == 1.0
            and self.frequency_penalty == 0.0
            and self.presence_penalty == 0.0
            and self.min_tokens == 0
            and not self.logprobs
        )


@dataclass
class Choice:
    """One generated token, with its log-probability under the model (raw logits) when asked for."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Row:
    """One sequence's decoding state."""

    sampling: Sampling
    prompt_ids: list[int]
    end_ids: frozenset[int]  # the checkpoint's EOS and the request's stop_token_ids
    generator: Any = None
    generated: list[int] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, token: int) -> None:
        self.generated.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.generated)


def choose(scores: Any, row: Row) -> Choice:
    """The next token of one row from its [vocab] logits, with the request's controls.

    The order is `generate`'s: repetition penalty (over prompt and answer, as transformers applies it),
    then OpenAI's frequency/presence penalties (over the answer, as vLLM applies them), then min_tokens
    (the end tokens masked), then greedy argmax or temperature, top-k, top-p and a draw from the row's own
    `torch.Generator`. Log-probabilities are those of the model's raw logits (log-softmax).
    """
    import torch

    sampling = row.sampling
    raw = scores.float()
    logits = raw
    if sampling.repetition_penalty != 1.0:
        seen = torch.tensor(sorted({*row.prompt_ids, *row.generated}), device=raw.device)
        picked = logits[seen]
        penalised = torch.where(
            picked < 0, picked * sampling.repetition_penalty, picked / sampling.repetition_penalty
        )
        logits = logits.clone()
        logits[seen] = penalised
    if (sampling.frequency_penalty or sampling.presence_penalty) and row.counts:
        ids = torch.tensor(list(row.counts), device=raw.device)
        counts = torch.tensor(list(row.counts.values()), dtype=logits.dtype, device=raw.device)
        logits = logits.clone()
        logits[ids] -= sampling.frequency_penalty * counts + sampling.presence_penalty
    if len(row.generated) < sampling.min_tokens and row.end_ids:
        logits = logits.clone()
        logits[torch.tensor(sorted(row.end_ids), device=raw.device)] = -math.inf
    token = int(torch.argmax(logits)) if sampling.greedy else draw(logits, sampling, row.generator)
    choice = Choice(token)
    if sampling.logprobs:
        log_probabilities = torch.log_softmax(raw, dim=-1)
        choice.logprob = float(log_probabilities[token])
        if sampling.top_logprobs:
            best = torch.topk(log_probabilities, sampling.top_logprobs)
            choice.top = [
                (int(t), float(v)) for t, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
            ]
    return choice


def draw(logits: Any, sampling: Sampling, generator: Any) -> int:
    """Temperature, top-k and top-p (nucleus), then one draw from the request's own generator, so a seed
    reproduces a request's tokens whatever else shares the batch."""
    import torch

    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        threshold = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, -math.inf)
    probabilities = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1:
        ordered, order = torch.sort(probabilities, descending=True)
        cumulative = torch.cumsum(ordered, dim=-1)
        drop = cumulative - ordered >= sampling.top_p  # keep the smallest prefix reaching top_p
        ordered = ordered.masked_fill(drop, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
    return int(torch.multinomial(probabilities.cpu(), 1, generator=generator)[0])


def choose_rows(logits: Any, rows: list[Row]) -> list[Choice]:
    """Next tokens of [rows, vocab] logits: one batched argmax for plain greedy rows, `choose` for others."""
    import torch

    greedy = torch.argmax(logits, dim=-1).tolist()
    return [
        Choice(int(greedy[index])) if row.sampling.plain_greedy else choose(logits[index], row)
        for index, row in enumerate(rows)
    ]


def last_logits(model: Any, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any) -> Any:
    """[batch, vocab] logits of each row's last position (only that position's logits are computed)."""
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1, :]


class PrefixCache:
    """Keys and values of recent prompts, so a request sharing a prefix (a system prompt, few-shot
    examples) prefills only what follows it. Least recently used entries go once `token_budget` is spent.

    The stored tensors are never written: the cache grows by concatenation into new tensors.
    """

    def __init__(self, token_budget: int) -> None:
        self.token_budget = token_budget
        self.entries: collections.OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = (
            collections.OrderedDict()
        )
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, prompt_ids: list[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """(tokens reused, their per-layer tensors): the longest stored prefix, leaving at least one prompt
        token to run (its logits choose the first answer token)."""
        best, best_key = 0, None
        limit = len(prompt_ids) - 1
        for key in self.entries:
            common = 0
            for stored, wanted in zip(key, prompt_ids[:limit], strict=False):
                if stored != wanted:
                    break
                common += 1
            if common > best:
                best, best_key = common, key
        if best_key is None or best < MIN_PREFIX_TOKENS:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        tensors = [(keys[:, :, :best], values[:, :, :best]) for keys, values in self.entries[best_key]]
        return best, tensors

    def store(self, prompt_ids: list[int], tensors: list[tuple[Any, Any]]) -> None:
        if len(prompt_ids) < MIN_PREFIX_TOKENS or len(prompt_ids) > self.token_budget:
            return
        key = tuple(prompt_ids)
        # An entry this prompt extends holds nothing the new one lacks.
        for old in [k for k in self.entries if len(k) <= len(key) and key[: len(k)] == k]:
            self.tokens -= len(old)
            del self.entries[old]
        self.entries[key] = tensors
        self.tokens += len(key)
        while self.tokens > self.token_budget:
            evicted, _ = self.entries.popitem(last=False)
            self.tokens -= len(evicted)


def prefill(
    model: Any, prompt_ids: list[int], prefixes: PrefixCache | None
) -> tuple[Any, list[tuple[Any, Any]], int]:
    """Run one prompt: (its last position's [vocab] logits, per-layer keys/values [1, heads, len, dim],
    prompt tokens taken from the prefix cache)."""
    import torch

    device = next(model.parameters()).device
    reused, tensors = (0, None) if prefixes is None else prefixes.lookup(prompt_ids)
    cache = hf_adapter.new_cache(model) if tensors is None else hf_adapter.cache_from_tensors(tensors)
    rest = torch.tensor([prompt_ids[reused:]], dtype=torch.long, device=device)
    positions = torch.arange(reused, len(prompt_ids), device=device)[None]
    mask = torch.ones((1, len(prompt_ids)), dtype=torch.long, device=device)
    logits = last_logits(model, rest, mask, positions, cache)
    layers = hf_adapter.layer_tensors(cache)
    if prefixes is not None:
        prefixes.store(prompt_ids, layers)
    return logits[0], layers, reused


class RunningBatch:
    """The sequences decoding together: one cache whose rows are right-aligned (each row's newest position
    is the last column; shorter rows are padded on the left and masked)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows: list[Any] = []  # the caller's jobs, each with a `.row: Row`
        self.cache: Any = None
        self.mask: Any = None  # [rows, columns] 1 where a row has a position
        self.pending: list[int] = []  # each row's newest token, not yet in the cache

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def positions_held(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0

    def join(self, job: Any, tensors: list[tuple[Any, Any]], first_token: int) -> None:
        import torch
        import torch.nn.functional as functional

        length = tensors[0][0].shape[2]
        if self.cache is None:
            self.cache = hf_adapter.cache_from_tensors(tensors)
            self.mask = torch.ones((1, length), dtype=torch.long, device=tensors[0][0].device)
        else:
            columns = self.mask.shape[1]
            width = max(columns, length)
            joined = []
            for (keys, values), (new_keys, new_values) in zip(
                hf_adapter.layer_tensors(self.cache), tensors, strict=True
            ):
                joined.append(
                    (
                        torch.cat(
                            [
                                functional.pad(keys, (0, 0, width - columns, 0)),
                                functional.pad(new_keys, (0, 0, width - length, 0)),
                            ]
                        ),
                        torch.cat(
                            [
                                functional.pad(values, (0, 0, width - columns, 0)),
                                functional.pad(new_values, (0, 0, width - length, 0)),
                            ]
                        ),
                    )
                )
            hf_adapter.set_layer_tensors(self.cache, joined)
            row_mask = torch.zeros((1, width), dtype=torch.long, device=self.mask.device)
            row_mask[0, width - length :] = 1
            self.mask = torch.cat([functional.pad(self.mask, (width - columns, 0)), row_mask])
        self.rows.append(job)
        self.pending.append(first_token)

    def leave(self, gone: set[int]) -> None:
        """Drop the rows at these indices, and the columns no remaining row uses."""
        import torch

        if not gone:
            return
        keep = [index for index in range(len(self.rows)) if index not in gone]
        self.rows = [self.rows[index] for index in keep]
        self.pending = [self.pending[index] for index in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(torch.nonzero(mask.any(dim=0))[0, 0])
        self.mask = mask[:, first:]
        hf_adapter.set_layer_tensors(
            self.cache,
            [
                (keys.index_select(0, index)[:, :, first:], values.index_select(0, index)[:, :, first:])
                for keys, values in hf_adapter.layer_tensors(self.cache)
            ],
        )

    def step(self) -> Any:
        """One decoding step for every row: feeds each row's pending token, returns [rows, vocab] logits."""
        import torch

        device = self.mask.device
        ids = torch.tensor(self.pending, dtype=torch.long, device=device)[:, None]
        positions = self.mask.sum(dim=1, keepdim=True)  # a row's positions so far = the new token's index
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        return last_logits(self.model, ids, self.mask, positions, self.cache)
