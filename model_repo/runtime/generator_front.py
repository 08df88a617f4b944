"""The `generator` role of the Python-backend runtime: decoupled text generation, in front of the
continuous-batching engine of generation.py (copied beside it with the modules that engine imports)."""

from __future__ import annotations

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


class GeneratorFront:
    """Decoupled text generation: requests go to the continuous-batching engine of generation.py, which
    sends their responses itself."""

    def __init__(self, settings: Settings) -> None:
        self.model_config, self.params = settings.model_config, settings.params
        self.tokenizer, self.max_length = settings.tokenizer, settings.max_length
        self.model = load_model(settings)
        settings.log_accuracy()
        cpus = settings.cpu_threads if settings.device.type == "cpu" else None
        self.generation = start_generation(self, settings.args, cpus)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.generation.submit(request)

    def finalize(self) -> None:
        self.generation.stop()
        self.model = None
