"""Measure only while the shared machine is quiet: wait for other work to stop, and repeat a measurement
during which other processes used a noticeable share of the CPU."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.common.machine import ForeignCpu

T = TypeVar("T")


@dataclass(frozen=True)
class QuietPolicy:
    max_foreign_share: float  # of the whole machine's CPU capacity; 1.0 never repeats
    retries: int  # repeats of a disturbed measurement
    max_wait_s: float  # longest wait for quiet before each attempt
    probe_s: float = 3.0

    @property
    def enabled(self) -> bool:
        return self.max_foreign_share < 1.0


def add_quiet_options(parser: argparse.ArgumentParser, measurement: str, retries: int) -> None:
    """The command-line options of a QuietPolicy (read back by `quiet_policy`)."""
    parser.add_argument(
        "--max-foreign-cpu",
        type=float,
        default=None,
        help=f"wait for, and repeat a {measurement} unless, other processes use at most this share of the "
        "machine's CPU (default 0.05; --quick: 1, never)",
    )
    parser.add_argument("--retries", type=int, default=retries, help=f"repeats of a disturbed {measurement}")
    parser.add_argument("--quiet-wait", type=float, default=900.0, help="longest wait for a quiet machine, s")


def quiet_policy(args: argparse.Namespace, quick: bool) -> QuietPolicy:
    """The policy `add_quiet_options` asked for; a quick run never waits nor repeats by default."""
    default_share = 1.0 if quick else 0.05
    return QuietPolicy(
        max_foreign_share=args.max_foreign_cpu if args.max_foreign_cpu is not None else default_share,
        retries=args.retries,
        max_wait_s=args.quiet_wait,
    )


def wait_for_quiet(policy: QuietPolicy) -> float:
    """Seconds waited until other processes used at most the allowed share during one probe."""
    if not policy.enabled:
        return 0.0
    began = time.monotonic()
    meter = ForeignCpu()
    while time.monotonic() - began < policy.max_wait_s:
        meter.start()
        time.sleep(policy.probe_s)
        if meter.stop()[1] <= policy.max_foreign_share:
            break
    return round(time.monotonic() - began, 1)


def guarded(policy: QuietPolicy, measure: Callable[[], T], describe: str = "") -> tuple[T, dict[str, Any]]:
    """Run `measure` until one attempt was undisturbed (or retries run out; then the least disturbed).

    Returns the kept result and a record of the attempts: foreign CPU seconds and share, time waited.
    """
    attempts: list[dict[str, Any]] = []
    best: tuple[float, T] | None = None
    meter = ForeignCpu()
    for _ in range(policy.retries + 1):
        waited = wait_for_quiet(policy)
        meter.start()
        value = measure()
        foreign_s, share = meter.stop()
        attempts.append(
            {
                "foreign_cpu_s": round(foreign_s, 2),
                "foreign_share": round(share, 3),
                "waited_s": waited,
                "own_cores_by_role": meter.cores_by_role,
            }
        )
        if best is None or share < best[0]:
            best = (share, value)
        if share <= policy.max_foreign_share:
            break
        if describe:
            print(
                f"      {describe}: other processes used {share:.0%} of the CPU; measuring again", flush=True
            )
    assert best is not None
    return best[1], {"foreign_share": round(best[0], 3), "attempts": attempts}
