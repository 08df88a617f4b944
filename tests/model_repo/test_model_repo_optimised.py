"""Optimised repositories (int8, bfloat16): built from tiny checkpoints behind the accuracy gate, served by
the real tritonserver, and compared with the same optimised model in process (the same computation, so
equal up to float rounding across thread counts) and with float32 (within the gate)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SENTENCES

from model_repo.accuracy import ACCURACY_FILE, CALIBRATION_TEXTS
from model_repo.build import build_repository
from model_repo.errors import BuildError
from model_repo.optimize import built_int8_choice
from model_repo.options import BuildOptions, DType, ModelFormat, Quantization
from model_repo.output_dir import read_record
from model_repo.runtime.model import (
    CPUINFO_ENV,
    SMOOTHING_FILE,
    classification_outputs,
    cpu_has_native_bfloat16,
    pool_embeddings,
    quantize_int8,
    smoothing_scales,
    this_cpu_has_native_bfloat16,
    token_entities,
    top_k_tokens,
)
from model_repo.triton import TritonServer
from model_repo.triton_args import repository_server_args

ENCODER_TASKS = ["text-classification", "token-classification", "feature-extraction", "fill-mask"]
BF16 = "bf16_classifier"
# The real all-MiniLM-L6-v2: its activations have the outlier channels that int8 smoothing is for.
MINILM = "int8_minilm"
MASKED = [f"{s.split()[0]} [MASK] {' '.join(s.split()[1:])}".strip() for s in SENTENCES]


def _name(task: str) -> str:
    return "int8_" + task.replace("-", "_")


@dataclass
class Served:
    server: TritonServer
    repositories: dict[str, Path]
    checkpoints: dict[str, Path]
    refused: dict[str, BuildError]

    def repository(self, name: str) -> Path:
        """The built repository of one variant; its test fails with the build's own error if it was not."""
        if name in self.refused:
            pytest.fail(f"{name} was not built: {self.refused[name]}", pytrace=False)
        return self.repositories[name]


@pytest.fixture(scope="module")
def served(
    checkpoints: dict[str, Path], minilm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server for every optimised variant, each built on its own: a variant the builder refuses fails
    its own tests only, and the bfloat16 one is built only where the CPU has bf16 arithmetic (elsewhere its
    tests are skipped and the refusal is tested with a given cpuinfo)."""
    root = tmp_path_factory.mktemp("optimised")
    variants = {
        task: BuildOptions(
            source=f"file://{checkpoints[task]}",
            model_name=_name(task),
            max_batch_size=8,
            quantization=Quantization.INT8,
        )
        for task in ENCODER_TASKS
    }
    variants[MINILM] = BuildOptions(
        source=f"file://{minilm_path}", model_name=MINILM, max_batch_size=8, quantization=Quantization.INT8
    )
    if this_cpu_has_native_bfloat16():
        variants[BF16] = BuildOptions(
            source=f"file://{checkpoints['text-classification']}",
            model_name=BF16,
            max_batch_size=8,
            dtype=DType.BFLOAT16,
        )
    repositories, refused = {}, {}
    for key, options in variants.items():
        try:
            repositories[key] = build_repository(options, root / options.model_name).path
        except BuildError as err:
            refused[key] = err
    args = ["--strict-readiness=true", *repository_server_args()]
    args += [f"--model-repository={path}" for path in repositories.values()]
    with TritonServer(None, extra_args=args, ready_timeout_s=300) as server:
        yield Served(server, repositories, checkpoints, refused)


def _infer(served: Served, model: str, text: str) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    result = client.infer(model, [tensor])
    values = {output.name: result.as_numpy(output.name)[0] for output in result.get_response().outputs}
    for name in ("LABEL", "ENTITIES"):  # one string per text, shaped [1]
        if name in values:
            values[name] = values[name][0]
    return values


def _in_process(task: str, checkpoint: Path, optimise: Any, text: str) -> dict[str, Any]:
    """What the runtime computes for one text, with the model `optimise` makes of the float32 one."""
    import torch
    import transformers

    auto = {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
        "feature-extraction": transformers.AutoModel,
        "fill-mask": transformers.AutoModelForMaskedLM,
    }[task]
    model = optimise(auto.from_pretrained(str(checkpoint), dtype=torch.float32).eval())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    encoded = tokenizer(
        text, return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True
    )
    offsets = encoded.pop("offset_mapping")[0].tolist()
    special = encoded.pop("special_tokens_mask")[0].tolist()
    with torch.inference_mode():
        output = model(**encoded)
    if task == "text-classification":
        names, _, scores = classification_outputs(output.logits.float().numpy(), labels, False)
        return {"LABEL": names[0], "SCORES": scores[0]}
    if task == "feature-extraction":
        hidden = output.last_hidden_state.float().numpy()
        return {"EMBEDDING": pool_embeddings(hidden, encoded["attention_mask"].numpy(), "cls", False)[0]}
    if task == "token-classification":
        return {"ENTITIES": token_entities(output.logits[0].float().numpy(), offsets, special, text, labels)}
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    ids, probabilities = top_k_tokens(output.logits[0, position][None].float().numpy(), 5)
    return {"TOKENS": [tokenizer.decode([int(t)]) for t in ids[0]], "SCORES": probabilities[0]}


def _int8(repository: Path, smoothed: bool = True) -> Any:
    """The int8 model the build chose (its float32 layers, and its smoothing unless `smoothed` is False)."""
    choice = built_int8_choice(repository)
    return lambda model: quantize_int8(model, choice.keep_float, choice.smoothing if smoothed else None)


def _texts(task: str) -> list[str]:
    return MASKED if task == "fill-mask" else SENTENCES


@pytest.mark.triton
@pytest.mark.parametrize("task", ENCODER_TASKS)
def test_served_int8_is_the_in_process_int8_model_and_close_to_float32(served: Served, task: str) -> None:
    repository = served.repository(task)
    record = read_record(repository)
    assert record is not None and record["quantization"] == "int8"
    gate = record["accuracy"]["gate"]
    assert gate["passed"] and gate["value"] >= gate["floor"]
    assert json.loads((repository / ACCURACY_FILE).read_text()) == record["accuracy"]
    checkpoint = served.checkpoints[task]
    agreements = []
    for text in _texts(task):
        got = _infer(served, _name(task), text)
        int8 = _in_process(task, checkpoint, _int8(repository), text)
        fp32 = _in_process(task, checkpoint, lambda model: model, text)
        if task == "text-classification":
            assert got["LABEL"].decode() == int8["LABEL"]
            np.testing.assert_allclose(got["SCORES"], int8["SCORES"], atol=1e-5)
            agreements.append(int8["LABEL"] == fp32["LABEL"])
        elif task == "feature-extraction":
            np.testing.assert_allclose(got["EMBEDDING"], int8["EMBEDDING"], atol=1e-5)
            a, b = int8["EMBEDDING"], fp32["EMBEDDING"]
            agreements.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        elif task == "token-classification":
            served_entities = json.loads(got["ENTITIES"].decode())
            assert [(e["entity_group"], e["start"], e["end"]) for e in served_entities] == [
                (e["entity_group"], e["start"], e["end"]) for e in int8["ENTITIES"]
            ]
            same = {(e["entity_group"], e["start"], e["end"]) for e in fp32["ENTITIES"]}
            agreements.extend((e["entity_group"], e["start"], e["end"]) in same for e in int8["ENTITIES"])
        else:
            assert [t.decode() for t in got["TOKENS"]] == int8["TOKENS"]
            np.testing.assert_allclose(got["SCORES"], int8["SCORES"], atol=1e-5)
            agreements.append(int8["TOKENS"][0] == fp32["TOKENS"][0])
    # The gate's metric on other texts than the calibration set: still at the floor.
    assert float(np.mean(agreements)) >= gate["floor"], (task, agreements)


@pytest.mark.triton
@pytest.mark.bf16
def test_served_bfloat16_is_the_in_process_bfloat16_model(served: Served) -> None:
    import torch

    repository = served.repository(BF16)
    record = read_record(repository)
    assert record is not None and record["dtype"] == "bfloat16" and record["accuracy"]["gate"]["passed"]
    checkpoint = served.checkpoints["text-classification"]
    for text in SENTENCES:
        got = _infer(served, BF16, text)
        bf16 = _in_process("text-classification", checkpoint, lambda m: m.to(torch.bfloat16), text)
        assert got["LABEL"].decode() == bf16["LABEL"]
        np.testing.assert_allclose(got["SCORES"], bf16["SCORES"], atol=1e-6)


@pytest.mark.triton
def test_the_runtime_logs_the_accuracy_result_at_load(served: Served) -> None:
    log = served.server.log()
    assert served.repositories, "nothing was built"
    for key in served.repositories:
        assert f"{key if key in (BF16, MINILM) else _name(key)}: serving " in log
    assert "the build measured it against float32 on 48 texts" in log


def _minilm_embeddings(checkpoint: Path, optimise: Any, texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embeddings (mean pooling, normalised), one text at a time as served."""
    import torch
    import transformers

    model = optimise(transformers.AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32).eval())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    rows = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state.float().numpy()
        rows.append(pool_embeddings(hidden, encoded["attention_mask"].numpy(), "mean", True)[0])
    return np.stack(rows)


@pytest.mark.triton
def test_int8_smooths_the_inputs_with_outliers_and_serves_the_smoothed_model(
    served: Served, minilm_path: Path
) -> None:
    repository = served.repository(MINILM)
    optimisation = read_record(repository)["accuracy"]["optimisation"]  # type: ignore[index]
    smoothed, kept = optimisation["layers_smoothed"], optimisation["layers_float32"]
    assert smoothed, optimisation
    assert not set(smoothed) & set(kept)
    assert f"inputs smoothed (SmoothQuant, strength 0.5) on {len(smoothed)} layers" in optimisation["scheme"]
    config = (repository / MINILM / "config.pbtxt").read_text()
    assert f'key: "int8_smoothing" value {{ string_value: "{SMOOTHING_FILE}" }}' in config
    choice = built_int8_choice(repository)
    assert choice.keep_float == kept and choice.smoothing is not None
    scales = choice.smoothing
    assert sorted(scales) == smoothed
    import transformers

    layers = dict(transformers.AutoModel.from_pretrained(str(minilm_path)).named_modules())
    for name, values in scales.items():
        assert values.shape == (layers[name].in_features,) and bool((values > 0).all()), name

    served_rows = np.stack([_infer(served, MINILM, text)["EMBEDDING"] for text in SENTENCES])
    gated = _minilm_embeddings(minilm_path, _int8(repository), SENTENCES)
    np.testing.assert_allclose(served_rows, gated, atol=1e-5)
    # The same float32 layers without the smoothing is another model: the served one is smoothed.
    unsmoothed = _minilm_embeddings(minilm_path, _int8(repository, smoothed=False), SENTENCES)
    assert float(np.abs(served_rows - unsmoothed).max()) > 1e-3
    fp32 = _minilm_embeddings(minilm_path, lambda model: model, SENTENCES)
    assert float((served_rows * fp32).sum(axis=1).mean()) >= 0.99


def test_a_smoothed_linear_layer_is_the_same_product_in_float32() -> None:
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16)
    x[:, 3] *= 60.0  # an outlier channel
    expected = layer(x).detach()
    model = torch.nn.Sequential(layer)
    scales = smoothing_scales(x.abs().amax(dim=0), layer.weight)
    # s_j = max|x_j|^0.5 / max|W_:,j|^0.5: the outlier channel gets the largest scale.
    weight_max = layer.weight.detach().abs().amax(dim=0)
    torch.testing.assert_close(scales, (x.abs().amax(dim=0) / weight_max).sqrt())
    assert int(scales.argmax()) == 3
    quantized = quantize_int8(model, (), {"0": scales})
    assert torch.equal(model[0].weight, layer.weight) and isinstance(model[0], torch.nn.Linear)
    smoothed = quantized[0]
    assert type(smoothed).__name__ == "SmoothedLinear"
    # The int8 product of the smoothed layer is close; its float32 product (the same weights before
    # quantisation) is equal up to rounding.
    float_version = torch.nn.functional.linear(x * smoothed.inverse_scales, layer.weight * scales, layer.bias)
    torch.testing.assert_close(float_version.detach(), expected, rtol=1e-5, atol=1e-5)
    assert float((smoothed(x) - expected).abs().max()) < 0.05 * float(expected.abs().max())


def test_smoothing_refuses_a_name_that_is_not_a_linear_layer() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with pytest.raises(ValueError, match="int8 smoothing names 1, which is not a Linear layer"):
        quantize_int8(model, (), {"1": torch.ones(4)})
    with pytest.raises(ValueError, match=r"int8 smoothing names 2\.dense, which is not a Linear layer"):
        quantize_int8(model, (), {"2.dense": torch.ones(4)})


def test_an_impossible_floor_fails_the_build_naming_metric_value_and_floor(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "repo"
    options = BuildOptions(
        source=f"file://{checkpoints['feature-extraction']}",
        quantization=Quantization.INT8,
        accuracy_floor=1.0,
    )
    with pytest.raises(
        BuildError, match=r"accuracy gate failed: cosine_mean 0\.\d+ is below the floor 1\.0 \(int8"
    ):
        build_repository(options, out)
    assert not out.exists(), "a failed gate writes nothing"
    assert [p.name for p in tmp_path.iterdir()] == [], "nor leaves a staging directory behind"


def test_the_cli_prints_the_accuracy_and_leaves_a_termination_message(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from modeldeploy.cli import app

    message = tmp_path / "termination-log"
    monkeypatch.setenv("MODELDEPLOY_TERMINATION_MESSAGE", str(message))
    source = f"file://{checkpoints['feature-extraction']}"
    common = ["build", "--source", source, "--quantization", "int8"]
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert "accuracy vs float32: " in result.output and "cosine_mean" in result.output
    status = json.loads(message.read_text())["accuracy"]
    assert status["metric"] == "cosine_mean" and status["floor"] == 0.99 and status["texts"] == 48
    assert status["optimisation"].startswith("int8") and status["value"] >= 0.99

    failed = CliRunner().invoke(app, [*common, "--accuracy-floor", "1", "--out", str(tmp_path / "no")])
    assert failed.exit_code == 2
    assert message.read_text().startswith("accuracy gate failed: cosine_mean 0.")
    assert "below the floor 1.0" in message.read_text()


def test_the_digest_covers_the_optimisation(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    source = f"file://{checkpoints['text-classification']}"
    plain = build_repository(BuildOptions(source=source), tmp_path / "repo")
    int8 = build_repository(BuildOptions(source=source, quantization=Quantization.INT8), tmp_path / "repo")
    assert plain.digest != int8.digest and not int8.cache_hit, "an fp32 repository is never reused for int8"
    floor = build_repository(
        BuildOptions(source=source, quantization=Quantization.INT8, accuracy_floor=0.9), tmp_path / "repo"
    )
    assert floor.digest not in (plain.digest, int8.digest)


def test_the_int8_choice_of_a_build_is_read_back_and_a_float32_build_has_none(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    source = f"file://{checkpoints['text-classification']}"
    int8 = build_repository(BuildOptions(source=source, quantization=Quantization.INT8), tmp_path / "int8")
    choice = built_int8_choice(int8.path)
    optimisation = read_record(int8.path)["accuracy"]["optimisation"]  # type: ignore[index]
    assert choice.keep_float == optimisation["layers_float32"]
    # The tiny classifier passes the gate without smoothing: no scales file, and the choice says so.
    assert choice.smoothing is None and not optimisation["layers_smoothed"]
    plain = build_repository(BuildOptions(source=source), tmp_path / "plain")
    with pytest.raises(BuildError, match="holds no int8 build"):
        built_int8_choice(plain.path)


def test_a_user_calibration_file_is_used_and_counted_in_the_digest(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES) + "\n\n")
    source = f"file://{checkpoints['feature-extraction']}"
    options = BuildOptions(source=source, quantization=Quantization.INT8, calibration_file=str(texts))
    first = build_repository(options, tmp_path / "repo")
    accuracy = read_record(first.path)["accuracy"]  # type: ignore[index]
    assert accuracy["calibration"] == "user-supplied" and accuracy["texts"] == len(SENTENCES)
    texts.write_text("\n".join(SENTENCES[:3]) + "\n")
    second = build_repository(options, tmp_path / "repo")
    assert second.digest != first.digest and not second.cache_hit
    texts.write_text("\n  \n")
    with pytest.raises(BuildError, match="holds no text"):
        build_repository(options, tmp_path / "other")
    missing = BuildOptions(
        source=source, quantization=Quantization.INT8, calibration_file=str(tmp_path / "none")
    )
    with pytest.raises(BuildError, match="is not a readable file"):
        build_repository(missing, tmp_path / "other")


def test_int8_is_refused_where_it_is_not_measured(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    encoder = f"file://{checkpoints['feature-extraction']}"
    with pytest.raises(BuildError, match="--quantization int8 runs on CPUs only"):
        build_repository(
            BuildOptions(source=encoder, quantization=Quantization.INT8, device="gpu"), tmp_path / "a"
        )
    with pytest.raises(BuildError, match="drop --dtype bfloat16"):
        build_repository(
            BuildOptions(source=encoder, quantization=Quantization.INT8, dtype=DType.BFLOAT16), tmp_path / "b"
        )
    generation = f"file://{checkpoints['text-generation']}"
    with pytest.raises(BuildError, match="not offered for text-generation"):
        build_repository(BuildOptions(source=generation, quantization=Quantization.INT8), tmp_path / "c")


@pytest.mark.bf16
def test_bfloat16_generation_is_gated_on_greedy_token_agreement(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    options = BuildOptions(source=f"file://{checkpoints['text-generation']}", dtype=DType.BFLOAT16)
    try:
        built = build_repository(options, tmp_path / "repo")
    except BuildError as exc:  # random weights may well disagree; then the gate must say so exactly
        assert "accuracy gate failed: greedy_token_agreement" in str(exc)
        return
    accuracy = read_record(built.path)["accuracy"]  # type: ignore[index]
    assert accuracy["gate"]["metric"] == "greedy_token_agreement"


@pytest.mark.parametrize("task", ["text-classification", "feature-extraction"])
def test_onnx_int8_graph_is_quantised_and_gated(
    checkpoints: dict[str, Path], tmp_path: Path, task: str
) -> None:
    import onnx
    import onnxruntime
    import torch
    import transformers

    options = BuildOptions(
        source=f"file://{checkpoints[task]}",
        format=ModelFormat.ONNX,
        quantization=Quantization.INT8,
        model_name="m",
    )
    built = build_repository(options, tmp_path / "repo")
    graph = built.path / "m_onnx" / "1" / "model.onnx"
    assert sorted(p.name for p in graph.parent.iterdir()) == ["model.onnx"], "no float32 or trial graph left"
    ops = {node.op_type for node in onnx.load(str(graph)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops
    accuracy = json.loads((built.path / ACCURACY_FILE).read_text())
    assert accuracy["optimisation"]["scheme"].startswith("onnxruntime") and accuracy["gate"]["passed"]
    # The served graph against PyTorch float32 on the calibration texts.
    auto = (
        transformers.AutoModel
        if task == "feature-extraction"
        else transformers.AutoModelForSequenceClassification
    )
    model = auto.from_pretrained(str(checkpoints[task]), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoints[task]))
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    batch = tokenizer(
        list(CALIBRATION_TEXTS[:8]), padding=True, truncation=True, max_length=64, return_tensors="np"
    )
    (got,) = session.run(None, {n: batch[n].astype(np.int64) for n in names})
    with torch.inference_mode():
        output = model(**{n: torch.from_numpy(batch[n].astype(np.int64)) for n in names})
    if task == "feature-extraction":
        mask = batch["attention_mask"]
        a = pool_embeddings(got, mask, "cls", False)
        b = pool_embeddings(output.last_hidden_state.numpy(), mask, "cls", False)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.mean() >= accuracy["gate"]["floor"] - 0.01
    else:
        assert (got.argmax(1) == output.logits.numpy().argmax(1)).mean() >= 0.75


def test_cpu_flags_decide_bfloat16() -> None:
    assert cpu_has_native_bfloat16("processor : 0\nflags : fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bfloat16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert cpu_has_native_bfloat16("Features\t: fp asimd bf16 i8mm\n")
    assert not cpu_has_native_bfloat16("flags : fpu sse avx2 avx512f avx512_vnni\n")
    assert not cpu_has_native_bfloat16("")


CPU_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
CPU_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512_vnni avx512_bf16\n"


def test_bfloat16_is_refused_on_a_given_cpu_without_it(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On every machine: the builder reads the CPU's flags from the file MODELDEPLOY_CPUINFO names, so a
    given cpuinfo text stands in for a CPU without bf16 arithmetic (and for one with it)."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setenv(CPUINFO_ENV, str(cpuinfo))
    options = BuildOptions(source=f"file://{checkpoints['text-classification']}", dtype=DType.BFLOAT16)
    cpuinfo.write_text(CPU_WITHOUT_BF16)
    assert not this_cpu_has_native_bfloat16()
    with pytest.raises(BuildError, match=r"--dtype bfloat16: this CPU has no bfloat16 instructions"):
        build_repository(options, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    cpuinfo.write_text(CPU_WITH_BF16)
    assert this_cpu_has_native_bfloat16()
    cpuinfo.unlink()
    with pytest.raises(RuntimeError, match=f"{CPUINFO_ENV}=.* is not a readable file"):
        this_cpu_has_native_bfloat16()


def test_smoothing_sees_the_largest_inputs_of_real_tokens_only(checkpoints: dict[str, Path]) -> None:
    """The input maxima come from the texts' own tokens: each text run alone (no padding) gives the same."""
    import torch
    import transformers

    from model_repo.accuracy import torch_forward
    from model_repo.optimize import _input_maxima

    checkpoint = checkpoints["text-classification"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    texts = [*SENTENCES, "a much longer text than the others, so that every other one is padded in its batch"]
    batched = _input_maxima(torch_forward(model, "logits", names), model, tokenizer, texts, 64)
    alone: dict[str, Any] = {}
    for text in texts:
        for name, peak in _input_maxima(
            torch_forward(model, "logits", names), model, tokenizer, [text], 64
        ).items():
            alone[name] = torch.maximum(alone[name], peak) if name in alone else peak
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(batched) == sorted(alone) == sorted(linear)
    for name in linear:
        torch.testing.assert_close(batched[name], alone[name], rtol=1e-4, atol=1e-5)
