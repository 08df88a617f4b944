"""How often the bundled tritonserver survives a Python model that cannot load, by where the model fails:
at its warm-up (`execute` refuses the warm-up sample) or in `initialize` (it raises). Each run starts a
server in explicit model-control mode and loads the model again and again until the server dies or
`--loads` loads have failed; the report counts loads and crashes.

    .venv/bin/python -m bench.packing.warmup_failure [--runs 4] [--loads 20]

Why it matters (docs/packing.md): with the shared runtime a packed encoder's forwarder used to learn of
a failed load at its warm-up, so every model that could not load risked the whole server. Run it again
after a tritonserver upgrade to see whether the forwarder's workaround is still needed.
"""

from __future__ import annotations

import argparse
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from model_repo.triton import TritonServer

MODEL = "refuses"
CONFIG = """name: "refuses"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { }
model_warmup [ { name: "single" batch_size: 1
  inputs { key: "X" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]
"""
MODELS = {
    "at-warm-up": """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        error = pb_utils.TritonError("refused on purpose")
        return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
""",
    "in-initialize": """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise pb_utils.TritonModelException("refused on purpose")

    def execute(self, requests):
        return []
""",
}


def run_once(where: str, loads: int, directory: Path) -> dict[str, Any]:
    """Load the model failing `where` until the server dies or `loads` loads have failed."""
    repository = directory / "models"
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "config.pbtxt").write_text(CONFIG)
    (repository / MODEL / "1" / "model.py").write_text(MODELS[where])
    args = ["--model-control-mode=explicit", f"--model-repository={repository}"]
    server = TritonServer(None, extra_args=args, log_path=directory / "server.log")
    failed = 0
    with server:
        for _ in range(loads):
            request = urllib.request.Request(
                f"http://{server.http_url}/v2/repository/models/{MODEL}/load", data=b"{}", method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=120):
                    raise RuntimeError(f"the model failing {where} loaded")
            except urllib.error.HTTPError:
                failed += 1
            except (urllib.error.URLError, OSError):  # the server went away in the middle of the load
                break
            assert server.process is not None
            if server.process.poll() is not None:
                break
        log = server.log()
    crashed = "Signal (11) received" in log
    return {"where": where, "failed_loads": failed + (1 if crashed else 0), "crashed": crashed}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--where", default="at-warm-up,in-initialize")
    args = parser.parse_args(argv)
    results = []
    for where in args.where.split(","):
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="warmup-failure-") as directory:
                runs.append(run_once(where, args.loads, Path(directory)))
        loads = sum(run["failed_loads"] for run in runs)
        crashes = sum(run["crashed"] for run in runs)
        print(f"failing {where}: {crashes} crashes in {loads} failed loads ({args.runs} runs)")
        results.append({"where": where, "loads": loads, "crashes": crashes, "runs": runs})
    return results


if __name__ == "__main__":
    main()
