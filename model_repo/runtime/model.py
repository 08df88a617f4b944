"""Generic Triton Python-backend runtime for Hugging Face Transformers checkpoints: Triton's entry point.

The builder copies this file into every Python model of a generated repository as `model.py`, with the
modules every role shares (helpers.py, serving.py) and the module of the model's role; the model's
`config.pbtxt` parameter `role` picks, once at load, the class that serves it:

- `EncoderRole` (`encoder`, encoder.py): tokenizer + forward pass + post-processing for text-classification
  (with an optional TEXT_PAIR), text-ranking (QUERY + TEXT -> SCORE), token-classification,
  feature-extraction and fill-mask (the `python` format; text pairs and cross-encoder scores are in
  ranking.py, copied beside it for the two pair tasks);
- `GeneratorFront` (`generator`, generator_front.py): decoupled text generation with continuous batching
  (the engine is in generation.py, copied beside it with the modules it imports);
- `OnnxTokenizerRole` / `OnnxPostprocessRole` (`tokenizer` / `postprocess`, onnx_tokenizer.py /
  onnx_postprocess.py): the two Python halves around an ONNX model (the `onnx` format);
- `ForwarderRole` / `SharedHost` (`forward` / `host`, forwarder.py / host.py): a packed encoder served
  through one shared host model (`model_repo.model_set` with a shared runtime). These two are built from
  Triton's arguments alone: the forwarder must not import torch, the host has no checkpoint of its own.

It must stay self-contained: it runs on a stock Triton image where only torch, transformers, numpy and
tokenizers are installed, so it imports nothing from `model_repo`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from typing import Any

# OpenMP threads that wait for work spin by default. In a Triton stub they share the cores with the
# server's and the clients' threads, and a spinning thread holds a core the thread it waits for needs:
# measured on a 2-core CPU under load, two spinning threads made a pass 3-5x slower than waiting
# passively, and bfloat16 (oneDNN: many short parallel regions) lost its whole advantage over float32.
# It must be set before torch loads OpenMP; the stub imports this file before torch. A user's value wins.
# Only in a stub: a process that imports the package (the builder, a benchmark's in-process reference)
# keeps OpenMP's own default. Triton's stub imports this file as `<version>.model` (the model directory on
# sys.path), so `__package__` is the version directory's name there, never the project's package.
IN_PROJECT_PACKAGE = __package__ == "model_repo.runtime"
if not IN_PROJECT_PACKAGE:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The modules copied beside this file into every Python model, and each role's (module, class): the
# builder copies the module of a model's role, this file imports it at load.
SHARED_MODULES = ("helpers", "serving")
ROLE_CLASSES: dict[str, tuple[str, str]] = {
    "encoder": ("encoder", "EncoderRole"),
    "tokenizer": ("onnx_tokenizer", "OnnxTokenizerRole"),
    "postprocess": ("onnx_postprocess", "OnnxPostprocessRole"),
    "generator": ("generator_front", "GeneratorFront"),
    "forward": ("forwarder", "ForwarderRole"),
    "host": ("host", "SharedHost"),
}

if IN_PROJECT_PACKAGE:  # the builder and tests use the pure helpers here
    from .helpers import CPUINFO_ENV as CPUINFO_ENV
    from .helpers import SMOOTHING_FILE as SMOOTHING_FILE
    from .helpers import SMOOTHING_STRENGTH as SMOOTHING_STRENGTH
    from .helpers import classification_outputs as classification_outputs
    from .helpers import cpu_has_native_bfloat16 as cpu_has_native_bfloat16
    from .helpers import fit_pass_overhead as fit_pass_overhead
    from .helpers import plan_length_groups as plan_length_groups
    from .helpers import pool_embeddings as pool_embeddings
    from .helpers import quantize_int8 as quantize_int8
    from .helpers import read_smoothing as read_smoothing
    from .helpers import smoothing_scales as smoothing_scales
    from .helpers import softmax as softmax
    from .helpers import this_cpu_has_native_bfloat16 as this_cpu_has_native_bfloat16
    from .helpers import token_entities as token_entities
    from .helpers import top_k_tokens as top_k_tokens
    from .helpers import usable_cpus as usable_cpus


def runtime_package(directory: str | None = None) -> str:
    """The package the runtime's modules import each other through: `model_repo.runtime` where the builder
    and tests import this file, else (Triton imports model.py alone, as a file) a package made of this
    file's directory (or of `directory`, a packed model's, for the shared host), named after the directory
    so that two repositories loaded in one process stay apart."""
    if IN_PROJECT_PACKAGE and directory is None:
        return "model_repo.runtime"
    directory = os.path.abspath(directory or os.path.dirname(os.path.abspath(__file__)))
    name = "modeldeploy_runtime_" + hashlib.sha256(directory.encode()).hexdigest()[:16]
    if name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [directory]
        sys.modules[name] = importlib.util.module_from_spec(spec)
    return name


class TritonPythonModel:
    """Triton's entry point: the role's class is chosen once, at load; every call goes to it."""

    def initialize(self, args: dict[str, str]) -> None:
        package = runtime_package()
        role = json.loads(args["model_config"])["parameters"]["role"]["string_value"]
        module, name = ROLE_CLASSES[role]
        role_class = getattr(importlib.import_module(f"{package}.{module}"), name)
        if role == "forward":
            self.role = role_class(args)
        elif role == "host":
            self.role = role_class(args, runtime_package)
        else:
            self.role = role_class(importlib.import_module(f"{package}.serving").Settings(args))

    def execute(self, requests: list[Any]) -> Any:
        # A list of responses, or None (decoupled roles answer through response senders).
        return self.role.execute(requests)

    def finalize(self) -> None:
        self.role.finalize()
