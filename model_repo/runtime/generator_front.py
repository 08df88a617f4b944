"""The `generator` role of the Python-backend runtime: decoupled text generation, in front of the
continuous-batching engine of generation.py (copied beside it with the modules that engine imports)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton by tests that exercise the pure helpers
    pb_utils = None

from . import generation
from .generation_metrics import GenerationMetrics
from .serving import Settings, load_model


def start_generation(runtime: Any, args: dict[str, str], cpus: int | None) -> Any:
    """The continuous-batching engine of generation.py."""
    params = runtime.params
    name = runtime.model_config.get("name", "model")
    metrics = GenerationMetrics(name, args.get("model_version", "1")) if pb_utils else None
    return generation.GenerationEngine(
        runtime.model,
        runtime.tokenizer,
        context=runtime.max_length,
        max_sequences=int(params["max_concurrent_sequences"]),
        max_queued=int(params["max_queued_requests"]),
        max_tokens_limit=int(params["max_tokens_limit"]),
        default_max_tokens=int(params["default_max_tokens"]),
        metrics=metrics,
        log=pb_utils.Logger.log_warn if pb_utils else print,
        cpus=cpus,
    )


def run_on_passing_thread(work: Callable[[], None]) -> None:
    """Run `work` on a thread that ends with it, re-raising what it raised.

    OpenMP (torch's CPU threads) keeps a pool of workers for every thread that ran a parallel region, and
    libgomp counts them all: once the process has more than the CPUs, it cuts its threads' spin-waits to
    almost nothing, so every short parallel region of a decoding step waits through the kernel. Loading
    and checking the model on Triton's thread left its pool behind beside the engine thread's, and made
    the engine's two-thread decoding steps 2.3x slower (3.0 against 7.1 ms in-process on 2 cores). A
    thread that ends takes its pool with it, so the engine's thread is the only one left using OpenMP.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="generation-load")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


class GeneratorFront:
    """Decoupled text generation: requests go to the continuous-batching engine of generation.py, which
    sends their responses itself."""

    def __init__(self, settings: Settings) -> None:
        self.model_config, self.params = settings.model_config, settings.params
        self.tokenizer, self.max_length = settings.tokenizer, settings.max_length
        cpus = settings.cpu_threads if settings.device.type == "cpu" else None

        def load() -> None:
            self.model = load_model(settings)
            settings.log_accuracy()
            self.generation = start_generation(self, settings.args, cpus)

        run_on_passing_thread(load)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.generation.submit(request)

    def finalize(self) -> None:
        self.generation.stop()
        self.model = None
