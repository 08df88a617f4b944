"""Pure helpers of the Python-backend runtime (no Triton, no torch at import): the batch planner, the
CPU probe, int8 quantisation, padding and the tasks' post-processing arithmetic.

Copied beside model.py into every Python model; the builder's accuracy gate and the tests import the same
functions (through `model_repo.runtime.model`), so the served arithmetic is the measured one.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Result = TypeVar("Result")


def plan_length_groups(lengths: list[int], overhead_tokens: int, max_group: int) -> list[list[int]]:
    """Split sequences into forward passes so that padding waste and per-pass overhead are minimal.

    Sequences are sorted by length and cut into contiguous runs; a run costs `overhead_tokens` (the fixed
    price of one forward pass, in token-equivalents) plus its size times its longest length (what padding
    to that length computes). A dynamic program finds the cheapest cut, so a batch of equal lengths stays
    one pass and a batch mixing 8- and 120-token texts is split. Returns lists of original indices.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    sorted_lengths = [lengths[index] for index in order]
    count = len(order)
    # Any split into k >= 2 passes costs at least k * overhead plus every sequence's own length; when one
    # pass costs no more than two overheads plus that, one pass is optimal and the search is skipped (the
    # usual case on a GPU, where the overhead is a whole batch: the search is O(count * max_group)).
    if 0 < count <= max_group and count * sorted_lengths[-1] - sum(sorted_lengths) <= overhead_tokens:
        return [order]
    best = [0.0] + [math.inf] * count
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(max(0, end - max_group), end):
            cost = best[start] + overhead_tokens + (end - start) * sorted_lengths[end - 1]
            if cost < best[end]:
                best[end] = cost
                cut[end] = start
    groups: list[list[int]] = []
    end = count
    while end > 0:
        start = cut[end]
        groups.append(order[start:end])
        end = start
    groups.reverse()
    return groups


def usable_cpus(affinity: int, cpu_max: str | None) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (`cpu.max`).

    A Kubernetes CPU limit is a quota, not an affinity: a pod limited to 4 CPUs on a 64-core node sees
    64 cores, and 64 torch threads on a 4-CPU quota get throttled most of the time.
    """
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            with_quota = math.ceil(int(quota) / int(period))
            return max(1, min(affinity, with_quota))
    return max(1, affinity)


class StageProfile:
    """Where a role's time goes, by stage, and how long it waits between calls: one log line every
    `period` seconds while there is work (the encoder's: decode, tokenize, forward, outputs, respond,
    and the wait for Triton's next batch)."""

    def __init__(self, name: str, stages: tuple[str, ...], period: float = 30.0) -> None:
        self.name, self.stages, self.period = name, stages, period
        self.seconds: dict[str, float] = {}
        self.calls = self.items = self.tokens = 0
        self.since = time.perf_counter()
        self.last_end: float | None = None
        self.reset(self.since)

    def reset(self, now: float) -> None:
        self.seconds = dict.fromkeys((*self.stages, "waiting"), 0.0)
        self.calls = self.items = self.tokens = 0
        self.since = now

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def started(self, now: float) -> None:
        """A call begins: the time since the last one ended was spent waiting for work."""
        if self.last_end is not None:
            self.seconds["waiting"] += now - self.last_end

    def finished(self, now: float, items: int, tokens: int) -> str | None:
        """A call ends; the profile line (and a new period) once `period` has passed, else None."""
        self.last_end = now
        self.calls += 1
        self.items += items
        self.tokens += tokens
        elapsed = now - self.since
        if elapsed < self.period:
            return None
        shares = ", ".join(f"{stage} {100 * value / elapsed:.1f}%" for stage, value in self.seconds.items())
        line = (
            f"{self.name} profile over {elapsed:.0f} s: {shares}; {self.calls} batches of "
            f"{self.items / self.calls:.1f} texts, {self.tokens / self.calls:.0f} tokens on average"
        )
        self.reset(now)
        return line


class ThreadTuner:
    """torch's thread count for each CPU forward pass, chosen from the passes' own measured times.

    Why measured and not fixed: what an OpenMP team of every CPU gains depends on what else runs on those
    CPUs, which changes while the server runs. On 2 cores (bench/README.md, data plane, "Session 6";
    MiniLM, one text per pass, in-process), a pass took 11.2 ms with two briefly spinning threads against
    16.6 ms with one on a quiet machine; beside one busy process the two spinning threads took 35.5 ms (a
    region waits for a thread the scheduler has parked) and one thread 15.6 ms. Two threads waiting
    passively took 17.4-17.8 ms in both cases: on this VM a sleeping thread's wake-up costs what the
    second core gains. Served, with this choice, spinning no longer collapses beside a busy process
    (one-text requests 0.90-0.94x passive's, against 0.46-0.54x with both threads always).

    Passes are grouped by width (tokens, in powers of two), since a narrow pass and a wide one gain
    differently from more threads. Each group keeps a moving average of seconds per token for every thread
    count it has run and uses the best. Now and then a pass of a group tries a neighbouring count instead,
    so the choice follows the machine: after `explore_every` passes, and after twice as many each time the
    neighbours lose clearly, up to `MAX_EXPLORE_EVERY` (a neighbour can be twice as slow: its tries cost
    at most 1/64 of the passes then). A neighbour that wins a try is tried again `explore_every` passes
    later and becomes the choice only if it wins again. The candidates are every CPU, all but one, and
    halvings down to one.
    """

    SMOOTHING = 0.3
    # A neighbour replaces the current choice only when clearly faster: single passes are noisy.
    # More threads must earn their CPUs: a larger count replaces the choice only when clearly faster
    # (single passes are noisy), a smaller one when it is no slower. A pass's own time misses what its
    # extra threads take from the server's threads beside it (the stream sender, Triton, gRPC): with
    # passive waits, two engine threads on narrow passes timed no slower than one, and the served
    # generator lost a fifth of its tokens/s at 4 and 16 clients (bench/README.md, "Session 6").
    MORE_THREADS_MARGIN = 0.85
    # A neighbour this much slower than the choice "loses clearly": the next try waits twice as long.
    CLEAR_LOSS = 1.25
    MAX_EXPLORE_EVERY = 64

    def __init__(self, cpus: int, explore_every: int = 16) -> None:
        cpus = max(1, cpus)
        ladder = {cpus, max(1, cpus - 1)}
        count = cpus
        while count > 1:
            count //= 2
            ladder.add(max(1, count))
        self.candidates = sorted(ladder)
        self.explore_every = explore_every
        self._chosen: dict[int, int] = {}  # width group -> thread count in use
        self._passes: dict[int, int] = {}  # width group -> passes until its next try of a neighbour
        self._interval: dict[int, int] = {}  # width group -> passes between its tries
        self._cost: dict[tuple[int, int], float] = {}  # (width group, threads) -> seconds per token
        self._explored: dict[int, int] = {}  # width group -> which neighbour was tried last
        self._pending: dict[int, int] = {}  # width group -> a neighbour that won its last try once
        self._applied = threading.local()  # OpenMP's thread count is the calling thread's own setting

    @staticmethod
    def width_group(tokens: int) -> int:
        return max(1, tokens).bit_length()

    def threads_for(self, tokens: int) -> int:
        group = self.width_group(tokens)
        chosen = self._chosen.setdefault(group, self.candidates[-1])
        interval = self._interval.setdefault(group, self.explore_every)
        until = self._passes.get(group, interval) - 1
        self._passes[group] = until if until > 0 else interval
        if len(self.candidates) == 1 or until > 0:
            return chosen
        if group in self._pending:  # a win is confirmed by a second try before the choice moves
            return self._pending[group]
        index = self.candidates.index(chosen)
        neighbours = [self.candidates[i] for i in (index - 1, index + 1) if 0 <= i < len(self.candidates)]
        turn = self._explored.get(group, 0) + 1
        self._explored[group] = turn
        return neighbours[turn % len(neighbours)]

    def record(self, tokens: int, threads: int, seconds: float) -> None:
        """The time a pass of `tokens` tokens took with `threads` threads."""
        group = self.width_group(tokens)
        per_token = seconds / max(1, tokens)
        key = (group, threads)
        chosen = self._chosen.get(group)
        previous = self._cost.get(key)
        if threads != chosen or previous is None:
            # A neighbour's last try may be long past (another load then): its fresh time replaces it.
            self._cost[key] = per_token
        else:
            self._cost[key] = previous + self.SMOOTHING * (per_token - previous)
        if chosen is None or threads == chosen:
            return
        chosen_cost = self._cost.get((group, chosen))
        if chosen_cost is None:  # the choice runs before any try, so this is not expected
            return
        cost = self._cost[key]
        won = (threads > chosen and cost < self.MORE_THREADS_MARGIN * chosen_cost) or (
            threads < chosen and cost <= chosen_cost
        )
        confirmed = self._pending.pop(group, None) == threads
        if won and confirmed:
            self._chosen[group] = threads
            self._interval[group] = self._passes[group] = self.explore_every
        elif won:  # try it again soon: one lucky pass must not move the choice
            self._pending[group] = threads
            self._interval[group] = self._passes[group] = self.explore_every
        elif per_token > self.CLEAR_LOSS * chosen_cost:
            interval = min(2 * self._interval[group], self.MAX_EXPLORE_EVERY)
            self._interval[group] = self._passes[group] = interval

    def run(self, tokens: int, forward: Callable[[], Result]) -> Result:
        """`forward()` (one pass over `tokens` tokens) with the thread count chosen for it, timed."""
        threads = self.threads_for(tokens)
        if getattr(self._applied, "threads", None) != threads:
            import torch

            torch.set_num_threads(threads)
            self._applied.threads = threads
        started = time.perf_counter()
        result = forward()
        self.record(tokens, threads, time.perf_counter() - started)
        return result

    def choices(self) -> dict[int, int]:
        """Thread count in use per width group (the group's widest pass has 2**group - 1 tokens)."""
        return dict(sorted(self._chosen.items()))


def fit_pass_overhead(samples: list[tuple[int, float]], ceiling: int) -> int:
    """Fixed cost of one forward pass in token-equivalents, from (tokens, seconds) timings.

    The cost of one more token is the slope between the two largest passes (where a device runs at
    its full rate); the fixed cost is what the smallest pass takes beyond its tokens at that rate. A
    least-squares line would let the large passes' noise swamp the intercept. On a CPU the answer is a
    few dozen tokens for a real model (split a batch whenever padding would waste more than that); on
    a GPU below saturation a pass costs about the same whatever its size, and the answer is `ceiling`
    (keep the batch in one pass).
    """
    points = sorted(samples)
    if len(points) < 2 or points[-1][0] == points[-2][0]:
        return ceiling
    (tokens_before, seconds_before), (tokens_last, seconds_last) = points[-2], points[-1]
    per_token = (seconds_last - seconds_before) / (tokens_last - tokens_before)
    if per_token <= 0:
        return ceiling
    smallest_tokens, smallest_seconds = points[0]
    fixed = smallest_seconds - per_token * smallest_tokens
    return round(min(ceiling, max(1.0, fixed / per_token)))


def cpu_has_native_bfloat16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo lists bfloat16 arithmetic (x86 avx512_bf16 or amx_bf16, Arm bf16).

    Without it PyTorch emulates bfloat16 on the CPU, slower than float32: serving it would cost more.
    """
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


# Names a file read instead of /proc/cpuinfo: a test, or a whole suite run, stands in for another CPU
# with it (docs/testing.md: `MODELDEPLOY_CPUINFO=tests/cpuinfo/no-bf16 make test`).
CPUINFO_ENV = "MODELDEPLOY_CPUINFO"


def this_cpu_has_native_bfloat16() -> bool:
    """`cpu_has_native_bfloat16` of this machine's cpuinfo (or of the file MODELDEPLOY_CPUINFO names).
    True where there is no cpuinfo to read (not Linux): nothing to refuse on."""
    path = os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo"
    cpuinfo = read_text(path)
    if cpuinfo is None and path != "/proc/cpuinfo":
        raise RuntimeError(f"{CPUINFO_ENV}={path} is not a readable file")
    return cpuinfo is None or cpu_has_native_bfloat16(cpuinfo)


# SmoothQuant's migration strength (Xiao et al., 2023): how much of an input channel's range moves from the
# activations into the weights. 0.5 splits it evenly; on all-MiniLM-L6-v2 it let the gate keep 3 of 37
# layers in float32 instead of 9 (bench/README.md, data plane, "Session 13").
SMOOTHING_STRENGTH = 0.5
# The file (in the version directory, beside the runtime) holding each smoothed layer's input scales; the
# config's `int8_smoothing` parameter names it.
SMOOTHING_FILE = "int8_smoothing.npz"


def smoothing_scales(activation_max: Any, weight: Any, strength: float = SMOOTHING_STRENGTH) -> Any:
    """Per input channel j of a Linear layer: s_j = max|x_j|^a / max|W_:,j|^(1-a). The layer then runs
    (x / s) @ (W * s)^T, the same product, with the activations' outlier channels scaled down so that one
    int8 scale per batch fits them all, and the weights' columns scaled up, each output channel still
    quantised with its own scale."""
    import torch

    weight_max = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    scales = activation_max.float().clamp(min=1e-5) ** strength / weight_max ** (1.0 - strength)
    return scales.clamp(min=1e-5).to(torch.float32)


def smoothed_linear(linear: Any, scales: Any) -> Any:
    """`linear` with its input scaled down by `scales` and its weight's columns up: equal in float32 up to
    rounding. Its `linear` stays an nn.Linear, so dynamic quantisation swaps it like any other."""
    import torch

    class SmoothedLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("inverse_scales", (1.0 / scales).to(linear.weight.dtype))
            self.linear = linear

        def forward(self, x: Any) -> Any:
            return self.linear(x * self.inverse_scales)

    linear.weight.data = linear.weight.data * scales.to(linear.weight.dtype)[None, :]
    return SmoothedLinear()


def quantize_int8(
    model: Any, keep_float: list[str] | tuple[str, ...] = (), smoothing: dict[str, Any] | None = None
) -> Any:
    """Dynamic int8 quantisation of the model's Linear layers (int8 weights per output channel, int8
    activations scaled per batch), except the layers named in `keep_float`; the layers named in
    `smoothing` (name -> input scales, see `smoothing_scales`) are smoothed first. `model` is left as it was.

    The builder's accuracy gate and the runtime both call this, so the served model is the measured one.
    """
    import copy
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    kept = set(keep_float)
    smoothed = {name: scales for name, scales in (smoothing or {}).items() if name not in kept}
    if smoothed:
        model = copy.deepcopy(model)
        modules = dict(model.named_modules())
        for name, scales in smoothed.items():
            parent, _, attribute = name.rpartition(".")
            linear = modules.get(name)
            if not isinstance(linear, torch.nn.Linear):
                raise ValueError(f"int8 smoothing names {name}, which is not a Linear layer of this model")
            holder = modules[parent] if parent else model
            setattr(holder, attribute, smoothed_linear(linear, torch.as_tensor(scales)))
    layers = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name not in kept
    }
    with warnings.catch_warnings():
        # torch 2.15 announces torch.ao.quantization's move to torchao; the API still works unchanged.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, layers, dtype=torch.qint8, inplace=bool(smoothed))  # type: ignore[no-untyped-call]


def read_smoothing(path: str) -> dict[str, Any]:
    """The smoothed layers' input scales, as the build saved them (`save_smoothing`)."""
    import torch

    with np.load(path, allow_pickle=False) as saved:
        return {name: torch.from_numpy(saved[name].astype(np.float32)) for name in saved.files}


def pad_batch(sequences: list[list[int]], pad_value: int, length: int | None = None) -> Array:
    width = length if length is not None else max(len(seq) for seq in sequences)
    out = np.full((len(sequences), width), pad_value, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def softmax(values: Array, axis: int = -1) -> Array:
    shifted = values - values.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    result: Array = exp / exp.sum(axis=axis, keepdims=True)
    return result


def classification_outputs(
    logits: Array, labels: list[str], multi_label: bool
) -> tuple[list[str], Array, Array]:
    """LABEL, SCORE, SCORES for a [batch, num_labels] logits array (transformers' pipeline rules)."""
    logits = logits.astype(np.float32)
    if multi_label or logits.shape[-1] == 1:
        scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    else:
        scores = softmax(logits).astype(np.float32)
    best = scores.argmax(axis=-1)
    return [labels[i] for i in best], scores.max(axis=-1).astype(np.float32), scores


def _split_tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def token_entities(
    logits: Array,
    offsets: list[tuple[int, int]],
    special: list[int],
    text: str,
    labels: list[str],
) -> list[dict[str, Any]]:
    """Entities of one sequence, grouped like transformers' `aggregation_strategy="simple"`.

    Consecutive tokens with the same entity type join unless a token starts a new entity (`B-`);
    the group's score is the mean of its tokens' scores; `O` groups are dropped; `word` is the span of
    the original text.
    """
    count = len(offsets)
    probabilities = softmax(logits[:count].astype(np.float32))
    tokens = []
    for index in range(count):
        if special[index]:
            continue
        label_id = int(probabilities[index].argmax())
        tokens.append(
            (labels[label_id], float(probabilities[index][label_id]), offsets[index][0], offsets[index][1])
        )
    groups: list[list[tuple[str, float, int, int]]] = []
    for token in tokens:
        if groups:
            bi, tag = _split_tag(token[0])
            _, last_tag = _split_tag(groups[-1][-1][0])
            if tag == last_tag and bi != "B":
                groups[-1].append(token)
                continue
        groups.append([token])
    entities = []
    for group in groups:
        tag = group[0][0].split("-", 1)[-1]
        if tag == "O":
            continue
        start, end = group[0][2], group[-1][3]
        entities.append(
            {
                "entity_group": tag,
                "score": float(np.mean([token[1] for token in group])),
                "word": text[start:end],
                "start": int(start),
                "end": int(end),
            }
        )
    return entities


def pool_hidden_states(hidden: Any, attention_mask: Any, pooling: str, normalize: bool) -> Any:
    """Sentence embeddings (float32 torch tensor) from [batch, length, hidden] states on any device, the
    way sentence-transformers pools. The encoder runs it where the model ran, so only [batch, hidden]
    leaves the device."""
    import torch

    hidden = hidden.float()
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    if pooling == "mean":
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    elif pooling == "max":
        pooled = hidden.masked_fill(mask == 0, -1e9).amax(dim=1)
    elif pooling == "lasttoken":
        last = attention_mask.to(hidden.device).sum(dim=1).long() - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    else:
        pooled = hidden[:, 0]
    if normalize:
        pooled = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return pooled


def pool_embeddings(hidden: Array, attention_mask: Array, pooling: str, normalize: bool) -> Array:
    """`pool_hidden_states` for numpy arrays (the ONNX post-processing and the build's accuracy gate)."""
    import torch

    states = torch.from_numpy(np.array(hidden, dtype=np.float32))
    mask = torch.from_numpy(np.array(attention_mask, dtype=np.int64))
    result: Array = pool_hidden_states(states, mask, pooling, normalize).numpy()
    return result


def top_k_tokens(mask_logits: Array, top_k: int) -> tuple[Array, Array]:
    """Token ids and probabilities of the `top_k` best fillers for [batch, vocab] mask logits."""
    probabilities = softmax(mask_logits.astype(np.float32))
    ids = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return ids, np.take_along_axis(probabilities, ids, axis=-1).astype(np.float32)


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return None
