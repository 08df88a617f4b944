"""The runtime's pure helpers (no Triton, no torch): the batch planner and its cost calibration."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from model_repo.runtime.generation_metrics import EngineProfile
from model_repo.runtime.helpers import StageProfile, ThreadTuner
from model_repo.runtime.model import fit_pass_overhead, plan_length_groups, usable_cpus


def padded_cost(lengths: list[int], groups: list[list[int]], overhead: int) -> int:
    return sum(overhead + len(group) * max(lengths[i] for i in group) for group in groups)


@pytest.mark.parametrize("overhead", [0, 8, 96, 10_000])
def test_plan_covers_every_sequence_once_and_respects_the_group_limit(overhead: int) -> None:
    lengths = [9, 71, 12, 40, 41, 39, 70, 10, 11, 65, 30, 33]
    groups = plan_length_groups(lengths, overhead, max_group=5)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(1 <= len(group) <= 5 for group in groups)


def test_plan_is_the_cheapest_contiguous_cut() -> None:
    lengths = [8, 120, 9, 118, 10, 121]
    overhead = 20
    groups = plan_length_groups(lengths, overhead, max_group=6)
    # Every way to cut the length-sorted order into contiguous runs, priced like the planner prices.
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = min(
        padded_cost(lengths, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], overhead)
        for count in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), count)
    )
    assert padded_cost(lengths, groups, overhead) == best
    assert sorted(len(group) for group in groups) == [3, 3]  # short texts apart from long ones


def test_plan_keeps_one_pass_when_passes_are_expensive_or_lengths_equal() -> None:
    assert len(plan_length_groups([8, 120, 9, 118], 10_000, max_group=8)) == 1
    assert len(plan_length_groups([40] * 16, 0, max_group=16)) == 1


def test_fit_recovers_fixed_cost_in_tokens() -> None:
    # 2 ms per pass plus 0.1 ms per token: a pass costs as much as 20 tokens.
    samples = [(tokens, 0.002 + 0.0001 * tokens) for tokens in (16, 64, 256, 1024, 2048)]
    assert fit_pass_overhead(samples, ceiling=4096) == 20


def test_fit_takes_the_rate_from_the_largest_passes() -> None:
    # A CPU runs small passes below its full rate: what a pass costs beyond its tokens at the full rate
    # (0.15 ms per token here) is the overhead, not an intercept fitted through the small passes.
    samples = [(16, 0.0087), (64, 0.0152), (256, 0.039), (1024, 0.157), (4096, 0.618)]
    assert 35 <= fit_pass_overhead(samples, ceiling=4096) <= 50


def test_fit_says_one_pass_when_size_costs_nothing() -> None:
    # A GPU below saturation: the same time whatever the size, or even a little less for more tokens.
    assert fit_pass_overhead([(16, 0.003), (64, 0.003), (512, 0.003)], ceiling=2048) == 2048
    assert fit_pass_overhead([(16, 0.0031), (64, 0.0030), (512, 0.0029)], ceiling=2048) == 2048


def test_fit_is_bounded() -> None:
    assert fit_pass_overhead([(16, 0.0001), (512, 0.5)], ceiling=4096) == 1  # no fixed cost at all
    assert fit_pass_overhead([(16, 1.0), (512, 1.0000001)], ceiling=4096) == 4096
    assert fit_pass_overhead([(64, 0.01)], ceiling=4096) == 4096  # one point fits nothing
    assert fit_pass_overhead([(64, 0.01), (64, 0.02)], ceiling=4096) == 4096


def test_usable_cpus_honours_a_cgroup_quota() -> None:
    assert usable_cpus(64, "400000 100000\n") == 4  # a pod with limits.cpu: 4 on a 64-core node
    assert usable_cpus(64, "150000 100000\n") == 2  # 1.5 CPUs: two threads, not one
    assert usable_cpus(64, "50000 100000\n") == 1
    assert usable_cpus(2, "800000 100000\n") == 2  # the affinity is the smaller bound
    assert usable_cpus(8, "max 100000\n") == 8  # no limit
    assert usable_cpus(8, None) == 8  # cgroup v1 or no cgroup file


# -- generation.py: request validation, prompt fitting, stop strings, per-request sampling ----------------


def test_sampling_parameters_json_is_an_object_of_known_keys() -> None:
    from model_repo.runtime.generation import GenerationRequestError, parse_sampling_json

    assert parse_sampling_json('{"max_tokens": 4, "stop": ["x"]}') == {"max_tokens": 4, "stop": ["x"]}
    for text, message in [
        ("{", "must be a JSON object"),
        ("[1]", "must be a JSON object, got list"),
        ('{"n": 2}', "unknown field(s) n; accepted: max_tokens, temperature"),
    ]:
        with pytest.raises(GenerationRequestError, match=re.escape(message)):
            parse_sampling_json(text)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
        ({"max_tokens": 2.5}, "max_tokens must be an integer"),
        ({"max_tokens": True}, "max_tokens must be an integer"),
        ({"max_tokens": 100}, "max_tokens 100 exceeds this model's maximum of 63 tokens"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"top_p": 0}, "top_p must be in (0, 1]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"seed": 2**64}, "seed must be between 0 and 2**64-1"),
        ({"stop": ""}, "stop must not contain an empty string"),
        ({"stop": [1]}, "stop must be a string or a list of strings"),
        ({"stop_token_ids": 3}, "stop_token_ids must be a list"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens must be at least 1"),
        ({"stream": "yes"}, "stream must be true or false"),
    ],
)
def test_each_bad_generation_parameter_names_itself_and_the_rule(
    values: dict[str, object], message: str
) -> None:
    from model_repo.runtime.generation import GenerationRequestError, build_sampling

    with pytest.raises(GenerationRequestError, match=re.escape(message)):
        build_sampling("hello", values, max_tokens_limit=63)


def test_prompts_are_refused_or_truncated_only_on_request_and_max_tokens_clamps() -> None:
    from model_repo.runtime.generation import GenerationRequestError, Sampling, fit_prompt

    with pytest.raises(
        GenerationRequestError, match="text_input is 64 tokens but this model's context is 64"
    ):
        fit_prompt(list(range(64)), Sampling("p"), context=64, default_max_tokens=16)
    ids, room = fit_prompt(list(range(64)), Sampling("p", truncate_prompt_tokens=60), 64, 16)
    assert ids == list(range(4, 64)) and room == 4
    assert fit_prompt([1, 2], Sampling("p", max_tokens=10), 64, 16) == ([1, 2], 10)
    assert fit_prompt([1, 2], Sampling("p"), 64, 16) == ([1, 2], 16)


def test_find_stop_returns_the_earliest_stop() -> None:
    from model_repo.runtime.generation import find_stop

    assert find_stop("abc STOP def END", ("END", "STOP")) == (4, "STOP")
    assert find_stop("abc", ("x",)) is None


def test_choose_rows_greedy_is_argmax_and_a_seed_reproduces_a_row_whatever_its_neighbours() -> None:
    import torch

    from model_repo.runtime.decoding import Row, Sampling, choose_rows

    torch.manual_seed(0)
    scores = torch.randn(3, 50)

    def seeded(seed: int) -> Row:
        generator = torch.Generator()
        generator.manual_seed(seed)
        return Row(Sampling("p", temperature=0.8, top_p=0.9, top_k=20), [1], frozenset(), generator)

    def greedy() -> Row:
        return Row(Sampling("p", temperature=0.0), [1], frozenset())

    first = [c.token for c in choose_rows(scores.clone(), [greedy(), seeded(5), greedy()])]
    assert first[0] == scores[0].argmax() and first[2] == scores[2].argmax()
    swapped = [c.token for c in choose_rows(scores[[1, 0, 2]].clone(), [seeded(5), seeded(6), greedy()])]
    assert swapped[0] == first[1]
    # top_k 20 and top_p 0.9 never pick outside the kept tokens.
    for seed in range(20):
        token = choose_rows(scores[1:2].clone(), [seeded(seed)])[0].token
        assert token in torch.topk(scores[1], 20).indices.tolist()


def test_controls_follow_their_definitions() -> None:
    import torch

    from model_repo.runtime.decoding import Row, Sampling, choose

    scores = torch.tensor([2.0, 1.9, -1.0, 0.5])
    # Repetition penalty (transformers' rule: divide positive, multiply negative scores of seen tokens).
    row = Row(Sampling("p", temperature=0.0, repetition_penalty=2.0), [0], frozenset())
    assert choose(scores, row).token == 1  # 2.0/2 = 1.0 < 1.9
    # Frequency and presence penalties count the answer's tokens only.
    row = Row(Sampling("p", temperature=0.0, frequency_penalty=0.05, presence_penalty=0.01), [1], frozenset())
    row.add(0)
    row.add(0)
    assert choose(scores, row).token == 1  # 2.0 - 0.1 - 0.01 < 1.9
    # min_tokens masks the end tokens until that many are generated.
    row = Row(Sampling("p", temperature=0.0, min_tokens=1), [1], frozenset({0}))
    assert choose(scores, row).token == 1
    # Log-probabilities are the raw logits' log-softmax, whatever the penalties did.
    row = Row(
        Sampling("p", temperature=0.0, repetition_penalty=2.0, logprobs=True, top_logprobs=2),
        [0],
        frozenset(),
    )
    choice = choose(scores, row)
    expected = torch.log_softmax(scores, dim=-1)
    assert abs(choice.logprob - float(expected[1])) < 1e-6
    assert [token for token, _ in choice.top] == [0, 1]


def test_prefix_cache_reuses_the_longest_prefix_and_keeps_its_budget() -> None:
    import torch

    from model_repo.runtime.decoding import PrefixCache

    def tensors(length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.arange(length).float().view(1, 1, length, 1),) * 2]

    cache = PrefixCache(token_budget=40)
    cache.store(list(range(20)), tensors(20))
    reused, found = cache.lookup([*range(12), 99, 98])
    assert reused == 12 and found is not None and found[0][0].shape[2] == 12
    # A whole stored prompt leaves its last token to run.
    assert cache.lookup(list(range(20)))[0] == 19
    assert cache.lookup([5, 6, 7, 8, 9, 10, 11, 12, 13])[0] == 0
    assert (cache.hits, cache.reused_tokens) == (2, 31)
    cache.store(list(range(100, 130)), tensors(30))  # 50 tokens > 40: the oldest goes
    assert cache.lookup(list(range(20)))[0] == 0 and cache.tokens == 30


def test_the_common_length_of_two_prompts_is_their_shared_leading_run() -> None:
    import random

    import numpy as np

    from model_repo.runtime.decoding import common_length

    def by_hand(a: tuple[int, ...], b: tuple[int, ...]) -> int:
        count = 0
        while count < min(len(a), len(b)) and a[count] == b[count]:
            count += 1
        return count

    draw = random.Random(0)
    for _ in range(500):
        shared = tuple(draw.randrange(4) for _ in range(draw.randrange(0, 40)))
        a = shared + tuple(draw.randrange(4) for _ in range(draw.randrange(0, 20)))
        b = shared + tuple(draw.randrange(4) for _ in range(draw.randrange(0, 20)))
        arrays = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
        assert common_length(*arrays) == by_hand(a, b) == common_length(*reversed(arrays))


def test_default_sequences_follow_the_device_and_the_kv_budget() -> None:
    from model_repo.runtime.generation import default_max_concurrent_sequences

    assert default_max_concurrent_sequences("cpu", kv_bytes_per_token=1024, context=1024) == 16
    assert default_max_concurrent_sequences("gpu", kv_bytes_per_token=1024, context=1024) == 64
    per_sequence = 4096 * 2048
    assert default_max_concurrent_sequences("cpu", 4096, 2048, budget_bytes=3 * per_sequence) == 3
    assert default_max_concurrent_sequences("cpu", 4096, 2048, budget_bytes=1) == 1


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_runtime_makes_openmp_threads_wait_passively_unless_told(
    given: str | None, expected: str, tmp_path: Path
) -> None:
    """The stub imports model.py before torch loads OpenMP: the policy must be in the environment by then
    (spinning threads starved the server's on a shared CPU; bench/README.md, served bfloat16). Imported
    as Triton's Python-backend stub does: the model directory on sys.path, then `<version>.model` (so
    `__package__` is "1" there: a check of `__package__` alone missed the stub)."""
    import os
    import shutil
    import subprocess
    import sys

    from model_repo.python_backend import RUNTIME_FILE

    (tmp_path / "1").mkdir()
    shutil.copyfile(RUNTIME_FILE, tmp_path / "1" / "model.py")
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    program = (
        "import importlib, os, sys\n"
        f"sys.path.append({str(tmp_path)!r})\n"
        "importlib.import_module('1.model')\n"
        "assert 'torch' not in sys.modules, 'model.py imported torch before the policy was set'\n"
        "print(os.environ['OMP_WAIT_POLICY'])\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == expected


def _drive(tuner: ThreadTuner, tokens: int, seconds_per_token: dict[int, float], passes: int) -> list[int]:
    """Run `passes` simulated passes whose cost per token depends only on the thread count."""
    used = []
    for _ in range(passes):
        threads = tuner.threads_for(tokens)
        tuner.record(tokens, threads, tokens * seconds_per_token[threads])
        used.append(threads)
    return used


def test_the_thread_tuner_tries_every_cpu_all_but_one_and_halvings() -> None:
    assert [ThreadTuner(cpus).candidates for cpus in (1, 2, 4, 16)] == [
        [1],
        [1, 2],
        [1, 2, 3, 4],
        [1, 2, 4, 8, 15, 16],
    ]


def test_the_thread_tuner_keeps_every_cpu_while_that_is_fastest() -> None:
    tuner = ThreadTuner(2, explore_every=8)
    used = _drive(tuner, 40, {2: 10e-6, 1: 16e-6}, 256)
    # Starts with every CPU and tries the neighbour after 8 passes; it loses clearly each time, so the
    # next try waits twice as long, up to 64 passes.
    assert [index + 1 for index, threads in enumerate(used) if threads == 1] == [8, 24, 56, 120, 184, 248]
    assert tuner.choices() == {ThreadTuner.width_group(40): 2}


def test_the_thread_tuner_moves_to_fewer_threads_under_contention_and_back_when_it_ends() -> None:
    tuner = ThreadTuner(2, explore_every=8)
    group = ThreadTuner.width_group(40)
    _drive(tuner, 40, {2: 10e-6, 1: 16e-6}, 16)
    # A busy neighbour parks one of two spinning threads: two threads now cost twice one.
    busy = _drive(tuner, 40, {2: 34e-6, 1: 16e-6}, 256)
    assert tuner.choices() == {group: 1}
    assert busy[-192:].count(2) <= 4  # only the tries pay the slow count, less often as they keep losing
    # Back to a quiet machine: the next try (at most 64 passes away) finds two threads faster again, and
    # a second try 8 passes later confirms it.
    _drive(tuner, 40, {2: 10e-6, 1: 16e-6}, 64 + 8 + 1)
    assert tuner.choices() == {group: 2}


def test_one_lucky_pass_does_not_move_the_thread_tuners_choice() -> None:
    tuner = ThreadTuner(2, explore_every=8)
    group = ThreadTuner.width_group(40)
    _drive(tuner, 40, {2: 10e-6, 1: 16e-6}, 7)
    assert tuner.threads_for(40) == 1  # the try
    tuner.record(40, 1, 40 * 5e-6)  # a lucky pass
    _drive(tuner, 40, {2: 10e-6, 1: 16e-6}, 64)
    assert tuner.choices() == {group: 2}


def test_more_threads_must_be_clearly_faster_and_fewer_only_no_slower() -> None:
    group = ThreadTuner.width_group(40)
    tuner = ThreadTuner(2, explore_every=4)
    _drive(tuner, 40, {2: 10e-6, 1: 10e-6}, 64)
    assert tuner.choices() == {group: 1}  # a tie leaves the CPU to the rest of the server
    _drive(tuner, 40, {2: 9e-6, 1: 10e-6}, 256)
    assert tuner.choices() == {group: 1}  # 10% faster does not earn the second CPU
    _drive(tuner, 40, {2: 8e-6, 1: 10e-6}, 256)
    assert tuner.choices() == {group: 2}


def test_the_thread_tuner_chooses_per_width_group() -> None:
    tuner = ThreadTuner(4, explore_every=4)
    # Narrow passes run best on 3 threads (one CPU left to the server), wide ones on all 4.
    _drive(tuner, 3, {4: 30e-6, 3: 20e-6, 2: 25e-6, 1: 40e-6}, 64)
    _drive(tuner, 500, {4: 1e-6, 3: 1.3e-6, 2: 1.9e-6, 1: 3.7e-6}, 64)
    assert tuner.choices() == {ThreadTuner.width_group(3): 3, ThreadTuner.width_group(500): 4}


def test_the_thread_tuner_sets_torchs_threads_in_the_calling_thread() -> None:
    import threading

    import torch

    tuner = ThreadTuner(2, explore_every=2)
    seen: list[int] = []

    def in_a_thread() -> None:
        for _ in range(4):
            seen.append(tuner.run(40, torch.get_num_threads))

    outside = torch.get_num_threads()
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    # Passes 2 and 4 explore the neighbour (1 thread); the others use every CPU.
    assert seen[0] == 2 and seen[1] == 1
    assert torch.get_num_threads() == outside


def test_importing_the_runtime_as_a_package_leaves_openmp_alone() -> None:
    """The builder and the benchmarks' in-process references import the package: they keep OpenMP's own
    default (spinning), so a raw in-process limit is the model's best, not the stub's shared-core choice."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    program = "import os, model_repo.runtime.model\nprint(os.environ.get('OMP_WAIT_POLICY', 'unset'))\n"
    completed = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "unset"


def test_the_stage_profile_reports_shares_of_the_period_and_the_wait_between_calls() -> None:
    profile = StageProfile("encoder", ("forward", "respond"), period=10.0)
    profile.reset(0.0)
    profile.started(0.0)
    profile.add("forward", 3.0)
    assert profile.finished(4.0, items=32, tokens=1300) is None  # the period has not passed
    profile.started(5.0)  # one second waiting for the next batch
    profile.add("forward", 4.0)
    profile.add("respond", 1.0)
    line = profile.finished(10.0, items=30, tokens=1200)
    assert line == (
        "encoder profile over 10 s: forward 70.0%, respond 10.0%, waiting 10.0%; 2 batches of 31.0 "
        "texts, 1250 tokens on average"
    )
    profile.started(12.0)
    assert profile.seconds == {"forward": 0.0, "respond": 0.0, "waiting": 2.0}  # a new period


def test_tritonserver_gets_the_callers_relative_paths_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server runs in its binary's directory (TritonServer.start), not the caller's.
    import os

    from model_repo.triton import TritonServer

    monkeypatch.chdir(tmp_path)
    command = TritonServer(Path("repo"), extra_args=["--cache-directory=cache", "--log-verbose=0"]).command()
    assert os.path.isabs(command[0])
    assert f"--model-repository={tmp_path / 'repo'}" in command
    assert f"--cache-directory={tmp_path / 'cache'}" in command and "--log-verbose=0" in command


def test_the_engine_profile_splits_a_prompts_first_token_into_its_wait_and_its_prefill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = EngineProfile()
    profile.prefilled([0.004], 0.030)  # alone: waited 4 ms, then a 30 ms forward
    profile.prefilled([0.010, 0.050], 0.020)  # two prompts in one 20 ms forward
    profile.steps, profile.rows = 10, 20
    monkeypatch.setattr("model_repo.runtime.generation_metrics.time.perf_counter", lambda: profile.since + 31)
    line = profile.line()
    assert line is not None
    assert line.endswith(
        "; 3 prompts prefilled in 2 forwards, a prompt's mean 21.3 ms queued and 23.3 ms in its prefill"
    )
    assert (profile.prompts, profile.groups, profile.queue_s) == (0, 0, 0.0)  # a new period
