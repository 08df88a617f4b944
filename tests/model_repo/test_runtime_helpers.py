"""The runtime's pure helpers (no Triton, no torch): the batch planner and its cost calibration."""

from __future__ import annotations

import itertools

import pytest

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
