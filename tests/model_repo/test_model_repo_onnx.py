"""The onnx format: the exported graph against its config, and the whole ensemble served by Triton.

The tritonserver bundled in nvidia-pytriton has no onnxruntime backend. The graph is therefore checked in
onnxruntime directly against the names/dtypes/ranks its config declares, and for serving the ensemble
the test swaps the onnxruntime-backend model for a stand-in Python model with the same config I/O that
runs the same model.onnx in onnxruntime (a test double for the missing backend only: the tokenizer,
post-processing and ensemble wiring are the real generated ones).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model_repo.build import build_repository
from model_repo.options import BuildOptions, ModelFormat, Task
from model_repo.triton import TritonServer

ENCODER_TASKS = ["text-classification", "token-classification", "feature-extraction", "fill-mask"]
_NUMPY = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32}
_ORT = {"TYPE_INT64": "tensor(int64)", "TYPE_FP32": "tensor(float)", "TYPE_INT32": "tensor(int32)"}

STAND_IN = """
import json, os
import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            values = self.session.run(self.outputs, feed)
            tensors = [pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
"""


def _parse(config_path: Path) -> object:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def onnx_repos(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    repos = {}
    for task in ENCODER_TASKS:
        name = task.replace("-", "_")
        options = BuildOptions(
            source=f"file://{checkpoints[task]}", format=ModelFormat.ONNX, model_name=name, max_batch_size=8
        )
        repos[task] = build_repository(options, root / name).path
    return repos


@pytest.mark.parametrize("task", ENCODER_TASKS)
def test_exported_graph_matches_its_config(onnx_repos: dict[str, Path], task: str) -> None:
    import onnxruntime
    from tritonclient.grpc import model_config_pb2

    name = task.replace("-", "_")
    model_dir = onnx_repos[task] / f"{name}_onnx"
    config = _parse(model_dir / "config.pbtxt")
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.backend == "onnxruntime" and config.max_batch_size == 8
    session = onnxruntime.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    type_name = model_config_pb2.DataType.Name

    def declared(tensors: object) -> list[tuple[str, str, int]]:
        return [(t.name, _ORT[type_name(t.data_type)], len(t.dims) + 1) for t in tensors]  # type: ignore[attr-defined]

    assert [(i.name, i.type, len(i.shape)) for i in session.get_inputs()] == declared(config.input)
    assert [(o.name, o.type, len(o.shape)) for o in session.get_outputs()] == declared(config.output)

    batch, length = 3, 11
    feed = {
        t.name: np.ones([batch, *[length if d == -1 else d for d in t.dims]], _NUMPY[type_name(t.data_type)])
        for t in config.input
    }
    outputs = session.run([t.name for t in config.output], feed)
    for tensor, value in zip(config.output, outputs, strict=True):
        assert value.dtype == _NUMPY[type_name(tensor.data_type)]
        expected_shape = [batch, *[length if d == -1 else d for d in tensor.dims]]
        assert list(value.shape) == expected_shape
    verification = json.loads((model_dir / "verification.json").read_text())
    assert verification["max_abs_diff"] <= verification["tolerance"]


def test_every_onnx_config_parses_and_ensemble_wiring_is_consistent(onnx_repos: dict[str, Path]) -> None:
    from tritonclient.grpc import model_config_pb2

    for task, repo in onnx_repos.items():
        name = task.replace("-", "_")
        configs = {d.name: _parse(d / "config.pbtxt") for d in repo.iterdir() if d.is_dir()}
        assert set(configs) == {name, f"{name}_tokenizer", f"{name}_onnx", f"{name}_postprocess"}
        ensemble = configs[name]
        assert isinstance(ensemble, model_config_pb2.ModelConfig) and ensemble.platform == "ensemble"
        for step in ensemble.ensemble_scheduling.step:
            composing = configs[step.model_name]
            assert isinstance(composing, model_config_pb2.ModelConfig)
            assert set(step.input_map) <= {t.name for t in composing.input}
            assert set(step.output_map) <= {t.name for t in composing.output}


@pytest.fixture(scope="module")
def ensemble_server(onnx_repos: dict[str, Path]) -> Iterator[TritonServer]:
    for task, repo in onnx_repos.items():
        model_dir = repo / f"{task.replace('-', '_')}_onnx"
        config = (model_dir / "config.pbtxt").read_text()
        config = config.replace('backend: "onnxruntime"', 'backend: "python"')
        config = re.sub(r'default_model_filename: "model.onnx"\n', "", config)
        (model_dir / "config.pbtxt").write_text(config)
        (model_dir / "1" / "model.py").write_text(STAND_IN)
    args = ["--disable-auto-complete-config"] + [f"--model-repository={repo}" for repo in onnx_repos.values()]
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        yield server


def _infer(server: TritonServer, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    result = client.infer(model, [text])
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


@pytest.mark.triton
def test_onnx_ensemble_serves_the_same_contract(
    ensemble_server: TritonServer, checkpoints: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    texts = ["hello world", "paris is the capital of france and john smith works at acme in london"]
    cls_path = checkpoints["text-classification"]
    tokenizer = AutoTokenizer.from_pretrained(str(cls_path))
    classifier = AutoModelForSequenceClassification.from_pretrained(str(cls_path)).eval()
    outputs = _infer(ensemble_server, "text_classification", texts)
    for row, text in enumerate(texts):
        with torch.inference_mode():
            expected = torch.softmax(classifier(**tokenizer(text, return_tensors="pt")).logits[0], -1).numpy()
        np.testing.assert_allclose(outputs["SCORES"][row], expected, atol=1e-4)

    encoder_path = checkpoints["feature-extraction"]
    encoder = AutoModel.from_pretrained(str(encoder_path)).eval()
    outputs = _infer(ensemble_server, "feature_extraction", texts)
    for row, text in enumerate(texts):
        with torch.inference_mode():
            expected = encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, 0].numpy()
        np.testing.assert_allclose(outputs["EMBEDDING"][row], expected, atol=1e-4)

    ner = pipeline(
        "token-classification",
        model=str(checkpoints[Task.TOKEN_CLASSIFICATION.value]),
        aggregation_strategy="simple",
        device="cpu",
    )
    outputs = _infer(ensemble_server, "token_classification", texts)
    for row, text in enumerate(texts):
        got = [(e["entity_group"], e["start"], e["end"]) for e in json.loads(outputs["ENTITIES"][row][0])]
        assert got == [(e["entity_group"], e["start"], e["end"]) for e in ner(text)]

    fill = pipeline("fill-mask", model=str(checkpoints["fill-mask"]), top_k=5, device="cpu")
    masked = ["paris is the [MASK] of france"]
    outputs = _infer(ensemble_server, "fill_mask", masked)
    assert [t.decode() for t in outputs["TOKENS"][0]] == [e["token_str"] for e in fill(masked[0])]
