"""The tritonserver flags a generated repository is served with: one contract for the operator's pods
(`modeldeploy.manifests`), `modeldeploy serve` and the benchmarks. Pure: it starts nothing, so the
manifest builders can import it (`model_repo.triton` runs the server)."""

from __future__ import annotations

from enum import StrEnum

# Each Python-backend stub exchanges a whole batch of requests and responses through one shared-memory
# region. Triton's 1 MiB default has to grow while a full batch is in flight, which stalls the stub
# (bench/dataplane: p99 0.85 s instead of 0.06 s at 64 clients); 16 MiB holds a full batch of text.
PYTHON_BACKEND_SHM_BYTES = 16 * 1024 * 1024
# Triton's response cache (spec.triton.responseCache, --response-cache): its size in memory.
RESPONSE_CACHE_BYTES = 256 * 1024 * 1024


def repository_server_args() -> list[str]:
    """tritonserver flags every generated repository is served with: in the operator's pods, by
    `modeldeploy serve` and by the benchmarks. Every config.pbtxt the builder writes is complete and
    checked against Triton's ModelConfig, so the server must serve it as written, not auto-complete it."""
    return [
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-default-byte-size={PYTHON_BACKEND_SHM_BYTES}",
    ]


def triton_server_args(*, response_cache: bool) -> list[str]:
    """tritonserver flags a generated repository is served with, in the operator's pods and by
    `modeldeploy serve` alike (ports and the repository's path are the caller's)."""
    args = ["--log-format=ISO8601", *repository_server_args()]
    if response_cache:
        args.append(f"--cache-config=local,size={RESPONSE_CACHE_BYTES}")
    return args


# Where Triton listens when only the pod (or host) itself may reach it: docs/security.md.
LOOPBACK = "127.0.0.1"


def loopback_server_args() -> list[str]:
    """tritonserver flags that keep its HTTP and gRPC APIs on the loopback interface. Metrics stay on
    every interface, where Prometheus scrapes them: tritonserver would otherwise bind them to the HTTP
    address too."""
    return [f"--http-address={LOOPBACK}", f"--grpc-address={LOOPBACK}", "--metrics-address=0.0.0.0"]


class CpuWaitPolicy(StrEnum):
    """How the runtime's OpenMP threads wait for each other between a forward pass's parallel regions."""

    PASSIVE = "passive"
    SPIN = "spin"


# What the operator and `modeldeploy serve` use where a spec leaves cpuWaitPolicy unset. The runtime's own
# default, in a repository served by anything else, stays passive (model.py). Measured on 2 cores
# (bench/README.md, data plane, "Session 6"), spin against passive with the runtime choosing each pass's
# thread count (helpers.ThreadTuner), MiniLM / tiny BERT: one text per request at one client +46% / -0%
# on a quiet machine (p50 1.05x / 1.04x the tutorial model), 64 clients +16% / +17%; beside one busy
# process -10% / -6% at one client and -2% / -16% at 64. Before the tuner, spin lost 46-54% beside a busy
# process at one client, and passive was the default.
DEFAULT_CPU_WAIT_POLICY = CpuWaitPolicy.SPIN

# libgomp's spin count before a waiting thread sleeps; it overrides OMP_WAIT_POLICY, which the runtime sets
# to PASSIVE in every stub. 10,000 spins are tens of microseconds: enough to bridge the gaps between a
# pass's parallel regions, short enough to give the core back soon. OpenMP's own default (300,000 spins)
# collapsed beside a busy process (bench/README.md, "Session 5"): 2.8 requests/s against 49 waiting
# passively.
SHORT_SPIN_COUNT = 10_000


def cpu_wait_environment(policy: CpuWaitPolicy) -> dict[str, str]:
    """Environment of a tritonserver (inherited by its stubs) for `policy`; empty for passive waiting,
    the runtime's own default."""
    if policy is CpuWaitPolicy.SPIN:
        return {"GOMP_SPINCOUNT": str(SHORT_SPIN_COUNT)}
    return {}
