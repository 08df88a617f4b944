"""The generation engine's arithmetic: per-row token choice, the running batch, and the prompt-prefix cache.

No Triton here (generation.py is the glue): these run in tests as they run in the server.

Why an own scheduler rather than transformers' continuous-batching manager: on a CPU the manager's paged
attention path reached half of a static `generate` batch at 4-16 sequences, and handing its per-token
results to another thread added a polling cadence per token. The running batch here is what `generate`
itself runs for a left-padded batch (one `DynamicCache`, a 2-D attention mask, explicit positions), made
continuous: requests that arrive together are prefilled together (one left-padded forward, as `generate`
prefills its batch) and join between decoding steps by left-padding, a finished one leaves by dropping
its row, and columns no row needs any more are trimmed.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import hf_adapter

MAX_TOP_LOGPROBS = 20
# A reused prefix shorter than this saves less than the lookup and copy cost.
MIN_PREFIX_TOKENS = 8
# Most padded tokens (rows x the longest prompt) one grouped prefill runs. Past a few thousand tokens a
# forward is already compute-bound (larger groups gain nothing per token), while every running row waits
# for the whole group before its next token and the attention scratch grows with rows x length^2; 4096
# still takes 16 prompts of 256 tokens in one pass. A longer prompt runs alone, as it did before grouping.
PREFILL_TOKEN_BUDGET = 4096
# The fixed cost of one more forward on a CPU, in prompt tokens (helpers.py's `fit_pass_overhead` measures a
# few dozen for real encoders): a prompt that would make its group pad more than this starts a new group.
# On an accelerator a pass costs about the same whatever its size below saturation: one group per budget.
CPU_PASS_OVERHEAD_TOKENS = 64


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


def common_length(stored: Any, wanted: Any) -> int:
    """How many leading tokens two 1-D integer arrays share, compared by numpy in one call. A lookup runs
    on the engine's thread between decoding steps; token by token in Python it took 1.39-1.42 ms on 35
    entries behind a 1,000-token system prompt, this way 0.47 (`bench.generation.lookup_probe`;
    bench/README.md, text generation, session 18)."""
    import numpy as np

    length = min(len(stored), len(wanted))
    differ = np.flatnonzero(stored[:length] != wanted[:length])
    return int(differ[0]) if len(differ) else length


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
        self.arrays: dict[tuple[int, ...], Any] = {}  # each entry's tokens as an array, for `common_length`
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, prompt_ids: list[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """(tokens reused, their per-layer tensors): the longest stored prefix, leaving at least one prompt
        token to run (its logits choose the first answer token)."""
        import numpy as np

        best, best_key = 0, None
        limit = len(prompt_ids) - 1
        if limit < MIN_PREFIX_TOKENS:
            return 0, None
        head, wanted = tuple(prompt_ids[:MIN_PREFIX_TOKENS]), None
        for key in self.entries:
            if key[:MIN_PREFIX_TOKENS] != head:  # an unrelated prompt: most entries stop here
                continue
            if wanted is None:
                wanted = np.asarray(prompt_ids[:limit], dtype=np.int64)
            common = common_length(self.arrays[key], wanted)
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
        import numpy as np

        if len(prompt_ids) < MIN_PREFIX_TOKENS or len(prompt_ids) > self.token_budget:
            return
        key = tuple(prompt_ids)
        # An entry this prompt extends holds nothing the new one lacks.
        for old in [k for k in self.entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(old)
        self.entries[key] = tensors
        self.arrays[key] = np.asarray(prompt_ids, dtype=np.int64)
        self.tokens += len(key)
        while self.tokens > self.token_budget:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        del self.entries[key], self.arrays[key]
        self.tokens -= len(key)


@dataclass
class PrefillGroup:
    """Prompts prefilled by one forward, left-padded together: either prompts with no cached prefix, or
    prompts whose first `reused` tokens are the same cached prefix (its keys/values, [1, heads, reused,
    dim] per layer, shared by every row; each row's padding then sits between the prefix and its own
    tokens)."""

    indices: list[int]  # positions in the list handed to `plan_prefill`
    prompts: list[list[int]]
    reused: int = 0
    prefix: list[tuple[Any, Any]] | None = None


def _chunks(
    indices: list[int], lengths: list[int], token_budget: int, overhead_tokens: int
) -> Iterator[list[int]]:
    """These prompts, shortest first, in groups whose rows x longest prompt stays within `token_budget` and
    where no prompt pads its group by more than `overhead_tokens` (rows x how much longer it is)."""
    current: list[int] = []
    for index in sorted(indices, key=lambda i: lengths[i]):
        length, width = lengths[index], lengths[current[-1]] if current else 0
        if current and (
            (len(current) + 1) * length > token_budget or len(current) * (length - width) > overhead_tokens
        ):
            yield current
            current = []
        current.append(index)
    if current:
        yield current


def plan_prefill(
    model: Any,
    prompts: list[list[int]],
    prefixes: PrefixCache | None,
    token_budget: int = PREFILL_TOKEN_BUDGET,
    overhead_tokens: int | None = None,
) -> Iterator[PrefillGroup]:
    """Group prompts waiting together into few forwards (lazily: run each group before taking the next).

    Prompts with a prefix-cache hit on the same cached tokens (a burst behind one system prompt) run
    together on that prefix: only their own tokens are computed. The others, shortest first, fill groups.
    Either way a group closes when rows x its longest prompt would pass `token_budget`, or when the
    padding a prompt adds (rows x how much longer it is) costs more than another forward
    (`overhead_tokens`; by default what the model's device suggests). With a prefix cache, a prompt
    sharing more than `overhead_tokens` leading tokens with another one waiting waits for that one's group
    to store them, then reuses them: a burst behind one system prompt computes it once.
    """
    if overhead_tokens is None:
        on_cpu = model is None or next(model.parameters()).device.type == "cpu"
        overhead_tokens = CPU_PASS_OVERHEAD_TOKENS if on_cpu else token_budget
    lengths = [len(prompt_ids) for prompt_ids in prompts]
    waiting = list(range(len(prompts)))
    while waiting:
        fresh: list[int] = []
        later: list[int] = []
        heads: set[tuple[int, ...]] = set()
        hits: dict[tuple[int, ...], tuple[list[int], list[tuple[Any, Any]]]] = {}
        for index in waiting:
            prompt_ids = prompts[index]
            reused, tensors = (0, None) if prefixes is None else prefixes.lookup(prompt_ids)
            head = tuple(prompt_ids[: overhead_tokens + 1])
            if tensors is not None:
                hits.setdefault(tuple(prompt_ids[:reused]), ([], tensors))[0].append(index)
            elif prefixes is not None and head in heads:
                later.append(index)
            else:
                heads.add(head)
                fresh.append(index)
        for shared, (members, tensors) in hits.items():
            for chunk in _chunks(members, lengths, token_budget, overhead_tokens):
                yield PrefillGroup(chunk, [prompts[i] for i in chunk], len(shared), tensors)
        for chunk in _chunks(fresh, lengths, token_budget, overhead_tokens):
            yield PrefillGroup(chunk, [prompts[i] for i in chunk])
        waiting = later


def prefill_group(
    model: Any, group: PrefillGroup, prefixes: PrefixCache | None
) -> tuple[Any, list[list[tuple[Any, Any]]]]:
    """Run one group: ([rows, vocab] logits of each prompt's last position, each prompt's own per-layer
    keys/values [1, heads, its length, dim], its padding columns dropped). Each prompt is stored in the
    prefix cache on its own tensors (copies when it shared the forward, so an entry holds no other row)."""
    import torch

    device = next(model.parameters()).device
    reused, rows = group.reused, len(group.prompts)
    width = max(len(prompt_ids) for prompt_ids in group.prompts)
    if group.prefix is None:
        cache = hf_adapter.new_cache(model)
    else:
        cache = hf_adapter.cache_from_tensors(
            [
                (keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
                for keys, values in group.prefix
            ]
        )
    # Padding (masked; pad id 0) goes after the shared prefix, before each prompt's own tokens, so every
    # row's last token is the last column; positions count a row's own tokens only.
    pads = [width - len(p) for p in group.prompts]
    ids = [[0] * pad + p[reused:] for pad, p in zip(pads, group.prompts, strict=True)]
    mask = torch.tensor(
        [
            [1] * reused + [0] * pad + [1] * (len(p) - reused)
            for pad, p in zip(pads, group.prompts, strict=True)
        ],
        dtype=torch.long,
        device=device,
    )
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, reused:]
    logits = last_logits(model, torch.tensor(ids, dtype=torch.long, device=device), mask, positions, cache)
    layers = hf_adapter.layer_tensors(cache)
    shared = rows > 1
    own_rows = []
    for index, pad in enumerate(pads):
        own: list[tuple[Any, Any]] = []
        for keys, values in layers:
            if pad and reused:  # the prefix and the row's own positions, without the padding between
                keys, values = (
                    torch.cat(
                        [side[index : index + 1, :, :reused], side[index : index + 1, :, reused + pad :]], 2
                    )
                    for side in (keys, values)
                )
            else:
                keys, values = keys[index : index + 1, :, pad:], values[index : index + 1, :, pad:]
                if prefixes is not None and shared:
                    keys, values = keys.clone(), values.clone()
            own.append((keys, values))
        if prefixes is not None:
            prefixes.store(group.prompts[index], own)
        own_rows.append(own)
    return logits, own_rows


def prefill(
    model: Any, prompt_ids: list[int], prefixes: PrefixCache | None
) -> tuple[Any, list[tuple[Any, Any]], int]:
    """Run one prompt alone: (its last position's [vocab] logits, per-layer keys/values
    [1, heads, len, dim], prompt tokens taken from the prefix cache)."""
    (group,) = list(plan_prefill(model, [prompt_ids], prefixes))
    logits, rows = prefill_group(model, group, prefixes)
    return logits[0], rows[0], group.reused


class RunningBatch:
    """The sequences decoding together: one cache whose rows are right-aligned (each row's newest position
    is the last column; shorter rows are padded on the left and masked).

    A finished row is not copied out of the cache at once: dropping it means copying every other row's
    keys and values, and under load a new request joins (one copy of the whole batch anyway) a few steps
    later, so that copy drops the finished rows too. Until then they ride along masked; they are dropped
    on their own once they are a quarter of the rows.
    """

    def __init__(self, model: Any, decode_step: Any = None) -> None:
        self.model = model
        # A decoding step's own forward (decode_step.DecodeStep) where the model has one, else None: the
        # model's forward.
        self.decode_step = decode_step
        self.rows: list[Any] = []  # the caller's jobs, each with a `.row: Row`
        self.pending: list[int] = []  # each row's newest token, not yet in the cache
        self.slots: list[int] = []  # each row's row in the cache (finished rows may sit in the others)
        self.cache: Any = None
        self.mask: Any = None  # [cache rows, columns] 1 where a row has a position
        # Whether any row has a padding column: without one (one row, or rows of equal length) the forward
        # gets no mask, and transformers neither checks nor builds one; at one sequence that was 3-6% of a
        # step on a 2-core CPU (bench/README.md, text generation, session 10).
        self.padded = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def positions_held(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0

    @property
    def finished_held(self) -> int:
        """Cache rows of finished requests not dropped yet."""
        return 0 if self.mask is None else self.mask.shape[0] - len(self.rows)

    def join(self, job: Any, tensors: list[tuple[Any, Any]], first_token: int) -> None:
        self.join_many([(job, tensors, first_token)])

    def join_many(self, joining: list[tuple[Any, list[tuple[Any, Any]], int]]) -> None:
        """Add rows (each: the caller's job, its per-layer keys/values [1, heads, length, dim], its first
        token, not yet in the cache), copying the batch's tensors once for all of them (and dropping the
        finished rows on the way)."""
        import torch

        if not joining:
            return
        held = len(self.rows)
        old: list[tuple[Any, Any]] = []
        columns = 0
        if self.cache is not None:
            live, first = self._live_rows_and_first_column()
            columns = self.mask.shape[1] - first
            old = [
                (keys if live is None else keys[live])[:, :, first:]
                for keys in (side for pair in hf_adapter.layer_tensors(self.cache) for side in pair)
            ]
            old_mask = (self.mask if live is None else self.mask[live])[:, first:]
        lengths = [tensors[0][0].shape[2] for _, tensors, _ in joining]
        width = max(columns, *lengths)
        layers = []
        for layer, first_row in enumerate(joining[0][1]):
            pair = []
            for side, sample in enumerate(first_row):
                merged = hf_adapter.zeros_with_room(sample, held + len(joining), width)
                if held:
                    merged[:held, :, width - columns : width] = old[2 * layer + side]
                for offset, (_, tensors, _) in enumerate(joining):
                    new = tensors[layer][side]
                    merged[held + offset, :, width - new.shape[2] : width] = new[0]
                pair.append(merged)
            layers.append((pair[0], pair[1]))
        mask = torch.zeros((held + len(joining), width), dtype=torch.long, device=layers[0][0].device)
        if held:
            mask[:held, width - columns :] = old_mask
        for offset, length in enumerate(lengths):
            mask[held + offset, width - length :] = 1
        self.mask = mask
        self.padded = not bool(mask.all())
        if self.cache is None:
            self.cache = hf_adapter.growing_cache(layers, width)
        else:
            hf_adapter.adopt_buffers(self.cache, layers, width)
        self.rows.extend(job for job, _, _ in joining)
        self.pending.extend(token for _, _, token in joining)
        self.slots = list(range(len(self.rows)))

    def leave(self, gone: set[int]) -> None:
        """Take the rows at these indices out of the batch (their cache rows are dropped later, see above)."""
        if not gone:
            return
        keep = [index for index in range(len(self.rows)) if index not in gone]
        self.rows = [self.rows[index] for index in keep]
        self.pending = [self.pending[index] for index in keep]
        self.slots = [self.slots[index] for index in keep]
        if not keep:
            self.cache, self.mask, self.slots, self.padded = None, None, [], False
        elif 4 * self.finished_held >= self.mask.shape[0]:
            self._drop_finished()

    def _live_rows_and_first_column(self) -> tuple[Any, int]:
        """(the live rows' cache rows as an index tensor, or None when every cache row is live; the first
        column a live row uses)."""
        import torch

        live = None
        mask = self.mask
        if len(self.slots) != mask.shape[0]:
            live = torch.tensor(self.slots, device=mask.device)
            mask = mask.index_select(0, live)
        return live, int(torch.nonzero(mask.any(dim=0))[0, 0])

    def _drop_finished(self) -> None:
        live, first = self._live_rows_and_first_column()
        rows = self.mask if live is None else self.mask.index_select(0, live)
        self.mask = rows[:, first:]
        self.padded = not bool(self.mask.all())
        hf_adapter.set_layer_tensors(
            self.cache,
            [
                (
                    (keys if live is None else keys.index_select(0, live))[:, :, first:],
                    (values if live is None else values.index_select(0, live))[:, :, first:],
                )
                for keys, values in hf_adapter.layer_tensors(self.cache)
            ],
        )
        self.slots = list(range(len(self.rows)))

    def step(self) -> Any:
        """One decoding step for every row: feeds each row's pending token, returns [rows, vocab] logits."""
        import torch

        device = self.mask.device
        fed = self.pending
        finished = self.finished_held
        if finished:  # finished rows are fed a token too (masked, never read): one forward for the cache
            fed = [0] * self.mask.shape[0]
            for slot, token in zip(self.slots, self.pending, strict=True):
                fed[slot] = token
        ids = torch.tensor(fed, dtype=torch.long, device=device)[:, None]
        positions = self.mask.sum(dim=1, keepdim=True)  # a row's positions so far = the new token's index
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        # A new column is every row's: whether any row is padded does not change here.
        mask = self.mask if self.padded else None
        if self.decode_step is not None:
            logits = self.decode_step(ids, mask, positions, self.cache)
        else:
            logits = last_logits(self.model, ids, mask, positions, self.cache)
        if finished:
            logits = logits.index_select(0, torch.tensor(self.slots, device=device))
        return logits
